"""A plain sweep writes the HParams dashboard a study has: the experiment config in the sweep's
directory, one session per variant (named after it, with its status), and final metrics that read
back equal to the run's result.json."""

import glob
import os

import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from callbacks.hparams import final_metrics
from experiments import launch
from experiments.launch import grid as grid_lib
from experiments.launch import points
from experiments.launch import sweep as sweep_lib
from experiments.launch.gin_config import effective_value
from tests.helpers import read_json, session_groups


def _hparams_events(log_dir):
    """([plugin data of the hparams summaries], {tag: value} of the hparams/ scalars) directly in
    ``log_dir``."""
    data, scalars = [], {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data.append(plugin_data_pb2.HParamsPluginData.FromString(
                        value.metadata.plugin_data.content))
                elif value.tag.startswith("hparams/"):
                    scalars[value.tag[len("hparams/"):]] = float(tf.make_ndarray(value.tensor))
    return data, scalars


def _configured(gin_file, variants):
    """{run: columns} as the launcher reads them: each variant's configuration parsed in turn."""
    runs = grid_lib.from_variants(variants)
    parameters = sweep_lib.bound_parameters(runs)
    return sweep_lib.fold_learning_rates(points.check_all(
        [gin_file], [], runs, "sweep variant",
        inspect=lambda run: sweep_lib.configured_hparams(parameters, effective_value)))


def test_each_variant_is_shown_with_what_it_trains_with():
    """The columns were the base's values with the variant's binding texts on top: a variant
    that switched to Adam showed the base SGD's 0.05, one that set B by a macro the base B, and
    a parameter bound by one variant read "none" in the others (a value no run had)."""
    columns = _configured("gin/experiments/digits_mlp.gin", {
        "adam": ["train.optimizer = @keras.optimizers.Adam"],
        "tanh_b128": ["train.batch_size = 128", "mlp.activation = 'tanh'",
                      "keras.optimizers.SGD.learning_rate = 0.2"]})
    assert columns["adam"]["learning_rate"] == pytest.approx(0.001)  # Adam's own default
    assert columns["adam"]["optimizer"] == "@keras.optimizers.Adam"
    assert columns["adam"]["mlp.activation"] == "relu"  # the base's, not "none"
    assert columns["adam"]["batch_size"] == columns["adam"]["micro_batch_size"] == 32
    assert columns["tanh_b128"]["learning_rate"] == pytest.approx(0.2)
    assert columns["tanh_b128"]["optimizer"] == "@keras.optimizers.SGD"
    assert columns["tanh_b128"]["mlp.activation"] == "tanh"
    assert columns["tanh_b128"]["batch_size"] == columns["tanh_b128"]["micro_batch_size"] == 128
    assert "SGD.learning_rate" not in columns["adam"]  # folded into learning_rate

    by_macro = _configured("gin/experiments/lr_scaling.gin", {
        "b64": ["BATCH = 64", "scaled_learning_rate.rule = 'linear'"],
        "b16": ["BATCH = 16", "scaled_learning_rate.rule = 'none'"]})
    assert by_macro["b64"]["batch_size"] == 64 and by_macro["b16"]["batch_size"] == 16
    assert by_macro["b64"]["scaled_learning_rate.rule"] == "linear"


def test_each_column_holds_one_kind_of_value():
    """A failed run's schedule (text) among numbers is left out of its session; text among the
    finished runs' numbers makes the column text, so the dashboard can still filter it."""
    sessions = [{"status": "finished", "values": {"learning_rate": 0.04, "dropout": None}},
                {"status": "finished", "values": {"learning_rate": 0.01, "dropout": 0.1}},
                {"status": "failed", "values": {"learning_rate": "@WarmupSchedule()",
                                                "dropout": 0.2}}]
    sweep_lib._one_kind_per_column(sessions)
    assert [s["values"].get("learning_rate") for s in sessions] == [0.04, 0.01, None]
    assert "learning_rate" not in sessions[2]["values"]
    assert [s["values"]["dropout"] for s in sessions] == ["none", "0.1", "0.2"]


SWEEP = ["train.verbose = 0", "train.epochs = 1", "measurements.enabled = []",
         "keras.optimizers.SGD.momentum = 0.0",
         "sweep.variants = {'b64': ['train.batch_size = 64'], "
         "'b128_lr0.1': ['train.batch_size = 128', 'keras.optimizers.SGD.learning_rate = 0.1'],"
         " 'bad': ['keras.optimizers.SGD.learning_rate = 1e12'],"
         " 'adam': ['train.optimizer = @keras.optimizers.Adam']}"]


@pytest.mark.slow
def test_a_sweep_writes_hparams_that_read_back_equal_result_json(tmp_path):

    def run_sweep():
        return launch.launch(["gin/experiments/digits_mlp.gin"], SWEEP,
                             output_dir=str(tmp_path), print_fn=lambda *_: None, run_name="s")

    results = run_sweep()
    assert [(r["run"], r["status"]) for r in results] == [
        ("b64", "finished"), ("b128_lr0.1", "finished"), ("bad", "failed"),
        ("adam", "finished")]
    group = str(tmp_path / "digits_mlp" / "s")

    config, _ = _hparams_events(os.path.join(group, "tensorboard"))
    experiment = [d.experiment for d in config if d.HasField("experiment")]
    assert len(experiment) == 1
    columns = {info.name for info in experiment[0].hparam_infos}
    assert {"batch_size", "learning_rate", "epochs", "seed"} <= columns
    metric_tags = {info.name.tag for info in experiment[0].metric_infos}
    assert {"hparams/val_accuracy", "hparams/val_loss", "hparams/examples_per_sec"} <= metric_tags

    def check_sessions():
        for name, lr, status in (("b64", 0.05, api_pb2.STATUS_SUCCESS),
                                 ("b128_lr0.1", 0.1, api_pb2.STATUS_SUCCESS),
                                 ("bad", 1e12, api_pb2.STATUS_FAILURE),
                                 ("adam", 0.001, api_pb2.STATUS_SUCCESS)):
            data, scalars = _hparams_events(os.path.join(group, name, "tensorboard", "hparams"))
            starts = [d.session_start_info for d in data if d.HasField("session_start_info")]
            ends = [d.session_end_info for d in data if d.HasField("session_end_info")]
            assert len(starts) == 1 and len(ends) == 1, name  # a relaunch leaves one session
            assert starts[0].group_name == name and ends[0].status == status
            hparams = {k: getattr(v, v.WhichOneof("kind"))
                       for k, v in starts[0].hparams.items()}
            assert hparams["learning_rate"] == pytest.approx(lr)
            if status != api_pb2.STATUS_SUCCESS:
                assert scalars == {}
                continue
            result = read_json(os.path.join(group, name, "result.json"))
            assert hparams["batch_size"] == result["batch_size"]
            assert hparams["epochs"] == result["epochs"] == 1
            expected = final_metrics(result["final_epoch"])
            assert {"val_accuracy", "val_loss", "loss"} <= set(expected)
            assert set(scalars) == set(expected) | {"examples_per_sec"}
            for metric, value in expected.items():
                assert scalars[metric] == pytest.approx(value, rel=1e-6), (name, metric)
            assert scalars["examples_per_sec"] == pytest.approx(result["examples_per_sec"],
                                                                rel=1e-6)

    check_sessions()
    run_sweep()  # a relaunch trains nothing and rewrites the sessions, not adds to them
    check_sessions()

    # the dashboard's own backend lists one session group per variant
    groups = session_groups(group, [api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS,
                                    api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING])
    assert sorted(g.name for g in groups) == ["adam", "b128_lr0.1", "b64", "bad"]
    # one session each: the failed variant's attempt set aside by the relaunch is not a second
    # session of its row (its metrics would be averaged with the rerun's)
    assert {g.name: len(g.sessions) for g in groups} == {
        "adam": 1, "b128_lr0.1": 1, "b64": 1, "bad": 1}
    assert os.path.isdir(os.path.join(group, "bad.attempt-1"))
    # every column's values are values some run had: no "none" beside the numbers
    config, _ = _hparams_events(os.path.join(group, "tensorboard"))
    (experiment,) = [d.experiment for d in config if d.HasField("experiment")]
    for info in experiment.hparam_infos:
        assert info.type != api_pb2.DATA_TYPE_UNSET, info.name
        assert "none" not in [v.string_value for v in info.domain_discrete.values], info.name
    b64 = next(g for g in groups if g.name == "b64")
    accuracy = {m.name.tag: m.value for m in b64.metric_values}["hparams/val_accuracy"]
    result = read_json(os.path.join(group, "b64", "result.json"))
    assert accuracy == pytest.approx(result["final_epoch"]["val_accuracy"], rel=1e-6)


@pytest.mark.slow
def test_a_scheduled_rate_is_a_number_in_the_hparams_column(tmp_path):
    """A rate given as a schedule (lr_scaling.gin's warm-up to the rule's rate) showed as the
    text "@batchlab.WarmupSchedule()" for every variant; the column now holds each run's peak,
    result.json's peak_learning_rate: 0.01 unscaled, 0.01 x 64 / 16 = 0.04 by the linear rule."""
    launch.launch(["gin/experiments/lr_scaling.gin"], [
        "train.verbose = 0", "train.epochs = 1", "measurements.enabled = []",
        "sweep.variants = {'b16': ['BATCH = 16', 'scaled_learning_rate.rule = \"none\"'], "
        "'b64_linear': ['BATCH = 64', 'scaled_learning_rate.rule = \"linear\"']}"],
        output_dir=str(tmp_path), print_fn=lambda *_: None, run_name="s")
    group = str(tmp_path / "lr_scaling" / "s")
    for name, peak in (("b16", 0.01), ("b64_linear", 0.04)):
        assert read_json(os.path.join(group, name, "result.json"))["peak_learning_rate"] == \
            pytest.approx(peak, rel=1e-6)
        data, _ = _hparams_events(os.path.join(group, name, "tensorboard", "hparams"))
        (start,) = [d.session_start_info for d in data if d.HasField("session_start_info")]
        assert start.hparams["learning_rate"].number_value == pytest.approx(peak, rel=1e-6)


def test_a_column_of_an_ambiguous_short_name_is_read_by_the_selector_written():
    """``MeanSquaredError`` names a loss and a metric: querying the column's short name raised
    gin's "Ambiguous selector" and aborted the whole sweep before any variant ran."""
    columns = _configured("gin/experiments/regression_mlp.gin", {
        "sum": ["keras.losses.MeanSquaredError.reduction = 'sum'"], "plain": []})
    assert columns["sum"]["MeanSquaredError.reduction"] == "sum"
    assert columns["plain"]["MeanSquaredError.reduction"] == "sum_over_batch_size"
