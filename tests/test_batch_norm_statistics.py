"""BatchNormalization's moving averages: how many times a run updates them, checked against the
layer itself, and the warning when their initial values still dominate at the run's end
(``experiments/run/batch_norm_statistics.py``).

The reference: a BatchNormalization layer that sees constant inputs has batch variance 0, so its
moving variance after N updates at momentum m is exactly m^N (initial value 1): the weight of
the initial values that result.json states."""

import glob
import json
import logging

import gin
import keras
import numpy as np
import pytest

from experiments import launch
from experiments.inputs import layout as layout_lib
from experiments.inputs.arrays import arrays
from experiments.inputs.dataset import DataSpec
from experiments.models import builders
from experiments.run import batch_norm_statistics as bns

BUILT = []


@gin.configurable
def constant_input_batch_norm(spec, momentum=0.9):
    """BatchNormalization first, on the raw inputs (constant in the test's data), then the
    output layer; the built model is kept for the test to read its moving variance."""
    model = keras.Sequential([keras.Input(spec.input_shape),
                              keras.layers.BatchNormalization(momentum=momentum),
                              keras.layers.Dense(spec.num_outputs, activation="softmax")])
    BUILT.append(model)
    return model


def _launch(tmp_path, bindings):
    rng = np.random.default_rng(0)
    x = np.full((100, 4), 3.0, np.float32)  # 80 training rows after the 0.2 validation split
    np.savez(tmp_path / "constant.npz", x=x, y=rng.integers(0, 3, 100))
    BUILT.clear()
    launch.launch(["gin/base.gin"], [
        "train.data_fn = @npz_file", f"npz_file.path = '{tmp_path / 'constant.npz'}'",
        "train.model_fn = @constant_input_batch_norm", "train.verbose = 0",
        "measurements.enabled = []", "train.epochs = 3"] + bindings,
        output_dir=str(tmp_path / "runs"), print_fn=lambda *_: None)
    (path,) = glob.glob(str(tmp_path / "runs" / "**" / "result.json"), recursive=True)
    with open(path, encoding="utf-8") as handle:
        result = json.load(handle)
    (model,) = BUILT
    layer = next(l for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
    return result["batch_norm_statistics"], float(np.mean(layer.moving_variance.numpy()))


@pytest.mark.parametrize("bindings, updates", [
    # 80 rows at B = 32: 32, 32 and a ragged 16 per epoch, one pass each
    (["train.batch_size = 32", "constant_input_batch_norm.momentum = 0.7"], 9),
    # micro-batches of 8: 4 + 4 + 2 passes per epoch (Ghost BN updates once per micro-batch)
    (["train.batch_size = 32", "train.micro_batch_size = 8"], 30),
    # B grows 16 -> 32 after the first epoch: 5 passes, then 3 per epoch, micro-batches of 16
    (["train.batch_size = 16", "train.micro_batch_size = 16",
      "train.batch_size_schedule = @batch_size_schedule()", "batch_size_schedule.boundaries = [1]",
      "batch_size_schedule.factor = 2"], 5 + 5 + 5),
    # EarlyStopping ends the run after epoch 2 of 3: 6 updates, not the planned 9
    (["train.batch_size = 32", "constant_input_batch_norm.momentum = 0.7",
      "train.extra_callbacks = [@keras.callbacks.EarlyStopping()]",
      "keras.callbacks.EarlyStopping.monitor = 'loss'",
      "keras.callbacks.EarlyStopping.min_delta = 100.0",
      "keras.callbacks.EarlyStopping.patience = 1"], 6),
])
def test_the_stated_weight_of_the_initial_values_is_the_layers_own(tmp_path, bindings, updates):
    stated, moving_variance = _launch(tmp_path, bindings)
    assert stated["moving_average_updates"] == updates
    np.testing.assert_allclose(stated["initial_weight"], moving_variance, rtol=1e-4)
    np.testing.assert_allclose(stated["initial_weight"], stated["momentum"] ** updates)
    assert stated["stale"] == (stated["initial_weight"] > bns.STALE_WEIGHT)  # 4%, 4%, 21%


def test_a_run_stopped_early_counts_the_examples_it_trained(tmp_path):
    """result.json's examples_per_sec counts the rows of the updates made: EarlyStopping after
    2 of 3 epochs trained 2 x 80 rows, not the 3 x 80 the planned epochs hold."""
    _launch(tmp_path, ["train.batch_size = 32",
                       "train.extra_callbacks = [@keras.callbacks.EarlyStopping()]",
                       "keras.callbacks.EarlyStopping.monitor = 'loss'",
                       "keras.callbacks.EarlyStopping.min_delta = 100.0",
                       "keras.callbacks.EarlyStopping.patience = 1"])
    (path,) = glob.glob(str(tmp_path / "runs" / "**" / "result.json"), recursive=True)
    with open(path, encoding="utf-8") as handle:
        result = json.load(handle)
    assert result["updates"] == 6 and result["num_train_examples"] == 80
    assert result["examples_per_sec"] * result["train_time_s"] == pytest.approx(160.0)


def test_updates_per_replica():
    layout = layout_lib.build(_digits_like(), 512, 16)
    assert bns.moving_average_updates(layout, 20) == 20 * (2 * 32 + 26)  # 1438 rows
    assert bns.moving_average_updates(layout, 20, replicas=2) == 20 * 45
    plain = layout_lib.build(_digits_like(), 512)
    assert bns.moving_average_updates(plain, 20, replicas=2) == 60  # one pass per update
    # A share that is not a whole number of micro-batches: B = 24 over 2 replicas is 12 rows
    # each, 2 micro-batches of 8 (not 24 / 8 / 2 = 1.5); the ragged 8 rows, 4 each, 1. With
    # MirroredStrategy on 2 logical CPUs the layer's moving variance on constant inputs read
    # 0.9^21 after these 3 epochs (measured by a review's script).
    rng = np.random.default_rng(0)
    eighty = arrays(x=rng.normal(size=(100, 4)).astype("float32"), y=rng.integers(0, 3, 100),
                    validation_split=0.2)
    assert bns.moving_average_updates(layout_lib.build(eighty, 24, 8), 3, replicas=2) == 21


def test_a_run_stopped_early_counts_the_updates_it_made():
    """Mid-epoch and over a batch-size schedule: the passes of the first updates only."""
    layout = layout_lib.build(_digits_like(), 512, 16)  # 512, 512, 414 rows: 32 + 32 + 26
    assert bns.moving_average_updates(layout, 20, updates=2) == 64
    assert bns.moving_average_updates(layout, 20, updates=5) == 90 + 64
    assert bns.moving_average_updates(layout, 20, updates=60) == \
        bns.moving_average_updates(layout, 20)


def _digits_like():
    """1438 training rows, as the shipped digits."""
    rng = np.random.default_rng(0)
    return arrays(x=rng.normal(size=(1798, 4)).astype("float32"),
                  y=rng.integers(0, 3, 1798), validation_split=0.2)


def test_stale_averages_are_warned_about_once_with_a_momentum_that_fixes_them(caplog):
    stale = {"momentum": 0.99, "moving_average_updates": 60, "initial_weight": 0.99 ** 60,
             "stale": True}
    with caplog.at_level(logging.WARNING):
        assert bns.warn_if_stale(stale)
    (record,) = [r for r in caplog.records if "moving averages" in r.getMessage()]
    message = record.getMessage()
    assert "only 60 times" in message and "55%" in message
    assert "momentum 0.9 leaves 0.18%" in message and "mlp.batch_norm_momentum" in message
    caplog.clear()
    fresh = {"momentum": 0.99, "moving_average_updates": 1800, "initial_weight": 0.99 ** 1800,
             "stale": False}
    with caplog.at_level(logging.WARNING):
        assert not bns.warn_if_stale(fresh)
    assert not caplog.records
    assert not bns.warn_if_stale(None)


def test_models_without_batch_normalization_state_nothing():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    assert bns.describe(model, layout_lib.build(_digits_like(), 32), 3) is None


def test_the_mlp_takes_its_momentum_and_refuses_a_bad_one():
    spec = DataSpec((4,), 3)
    model = builders.mlp(spec, hidden_units=(8,), batch_normalization=True,
                         batch_norm_momentum=0.9)
    (layer,) = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert layer.momentum == pytest.approx(0.9)
    with pytest.raises(ValueError, match="mlp.batch_norm_momentum"):
        builders.mlp(spec, hidden_units=(8,), batch_normalization=True, batch_norm_momentum=1.0)


def test_a_sweep_table_names_its_runs_with_stale_averages(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "constant.npz", x=np.full((100, 4), 3.0, np.float32),
             y=rng.integers(0, 3, 100))
    launch.launch(["gin/base.gin"], [
        "train.data_fn = @npz_file", f"npz_file.path = '{tmp_path / 'constant.npz'}'",
        "train.model_fn = @constant_input_batch_norm", "train.verbose = 0",
        "measurements.enabled = []", "train.epochs = 2", "train.batch_size = 32",
        "sweep.variants = {'slow': ['constant_input_batch_norm.momentum = 0.99'], "
        "'fast': ['constant_input_batch_norm.momentum = 0.5']}"],
        output_dir=str(tmp_path / "runs"), print_fn=lambda *_: None)
    (table,) = glob.glob(str(tmp_path / "runs" / "**" / "table.txt"), recursive=True)
    with open(table, encoding="utf-8") as handle:
        text = handle.read()
    # 80 rows at B = 32: 3 passes per epoch, 6 in all; 0.99^6 = 94% left, 0.5^6 = 1.6%
    assert "moving averages were stale at the end of: slow (94% after 6 updates)." in text
    assert "fast (" not in text


def test_a_range_test_states_no_batch_norm_statistics(tmp_path, caplog):
    """A range test reads training-mode losses and stops where its ramp or the loss says: the
    averages' count and warning are a training run's."""
    with caplog.at_level(logging.WARNING):
        launch.launch(["gin/experiments/digits_mlp.gin", "gin/tools/lr_range_test.gin"], [
            "mlp.batch_normalization = True", "train.batch_size = 128",
            "lr_range_test.num_updates = 20", "train.verbose = 0",
            "measurements.enabled = []"], output_dir=str(tmp_path), print_fn=lambda *_: None)
    (path,) = glob.glob(str(tmp_path / "**" / "result.json"), recursive=True)
    with open(path, encoding="utf-8") as handle:
        assert "batch_norm_statistics" not in json.load(handle)
    assert not [r for r in caplog.records if "moving averages" in r.getMessage()]
