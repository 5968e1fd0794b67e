"""HParams for runs: the session summary, the final metric scalars and the study config reach the
event files in the form the TensorBoard HParams dashboard reads."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from callbacks.hparams import HParamsLogger, write_experiment_config, write_final_metrics
from tests.helpers import session_groups

HPARAMS = {"batch_size": 16, "learning_rate": 0.05, "optimizer": "sgd", "nesterov": False,
           "weight_decay": None, "dropout": np.float32(0.25)}


def _events(log_dir):
    """Every (step, summary value) in the event files directly in ``log_dir``."""
    out = []
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            out.extend((event.step, value) for value in event.summary.value)
    return out


def _plugin_data(log_dir):
    return [plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
            for _, value in _events(log_dir)
            if value.metadata.plugin_data.plugin_name == "hparams"]


def _scalars(log_dir):
    return {value.tag: (step, float(tf.make_ndarray(value.tensor)))
            for step, value in _events(log_dir)
            if value.metadata.plugin_data.plugin_name == "scalars"}


def _fit(callback, epochs=2, batch_size=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="binary_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x[:48], y[:48], batch_size=batch_size, epochs=epochs, verbose=0,
                        validation_data=(x[48:], y[48:]), callbacks=[callback])
    return model, history.history


def test_session_hparams_and_final_metrics_are_written(tmp_path):
    log_dir = str(tmp_path / "run_0")
    logger = HParamsLogger(log_dir, HPARAMS)
    model, history = _fit(logger)

    sessions = [data.session_start_info for data in _plugin_data(log_dir)
                if data.HasField("session_start_info")]
    assert len(sessions) == 1
    values = sessions[0].hparams
    assert values["batch_size"].number_value == 16
    assert values["learning_rate"].number_value == pytest.approx(0.05)
    assert values["optimizer"].string_value == "sgd"
    assert values["nesterov"].HasField("bool_value") and not values["nesterov"].bool_value
    assert values["weight_decay"].string_value == "none"
    assert values["dropout"].number_value == pytest.approx(0.25)

    scalars = _scalars(log_dir)
    steps = int(model.optimizer.iterations.numpy())
    assert steps == 2 * 3
    for name in ("loss", "val_loss", "accuracy", "val_accuracy"):
        assert scalars[f"hparams/{name}"] == (steps, pytest.approx(history[name][-1]))
    # No gap callback, no gap column: validation minus fit's running average is not a gap.
    assert not [tag for tag in scalars if "gap" in tag]
    assert logger.written["hparams/val_loss"] == pytest.approx(history["val_loss"][-1])


def test_the_gap_columns_are_the_gap_callbacks_own(tmp_path):
    """With ``GeneralizationGap`` after the logger, ``gap_<m>`` is that callback's value (both
    sides in inference mode), not validation minus fit's running average."""
    from callbacks.generalization_gap import GeneralizationGap

    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy",
                  metrics=["accuracy"])
    log_dir = str(tmp_path / "run_0")
    logger = HParamsLogger(log_dir, HPARAMS)
    gap = GeneralizationGap((x[:48], y[:48]), (x[48:], y[48:]), batch_size=16)
    history = model.fit(x[:48], y[:48], batch_size=16, epochs=2, verbose=0,
                        validation_data=(x[48:], y[48:]), callbacks=[logger, gap]).history
    train_loss = model.evaluate(x[:48], y[:48], batch_size=16, verbose=0, return_dict=True)
    scalars = _scalars(log_dir)
    assert scalars["hparams/gap_loss"][1] == pytest.approx(
        history["val_loss"][-1] - train_loss["loss"], abs=1e-5)
    assert scalars["hparams/gap_loss"][1] != pytest.approx(
        history["val_loss"][-1] - history["loss"][-1], abs=1e-4)


def test_selected_tags_and_metrics_set_before_train_end(tmp_path):
    log_dir = str(tmp_path / "run_1")

    class TestAccuracy(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            logger.set_final_metrics({"hparams/test_accuracy": 0.75})

    logger = HParamsLogger(log_dir, {"batch_size": 8},
                           metric_tags=["val_loss", "hparams/test_accuracy", "val_auc"])
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(32, 2)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.warns(UserWarning, match=r"no final value for \['val_auc'\]"):
        model.fit(x, y, batch_size=8, epochs=1, validation_split=0.25, verbose=0,
                  callbacks=[TestAccuracy(), logger])
    assert set(_scalars(log_dir)) == {"hparams/val_loss", "hparams/test_accuracy"}
    assert _scalars(log_dir)["hparams/test_accuracy"] == (3, 0.75)


def test_write_final_metrics_after_training(tmp_path):
    log_dir = str(tmp_path / "run_2")
    written = write_final_metrics(log_dir, {"test_loss": 0.5, "hparams/test_accuracy": 0.9},
                                  step=120)
    assert written == {"hparams/test_loss": 0.5, "hparams/test_accuracy": pytest.approx(0.9)}
    scalars = _scalars(log_dir)
    assert scalars["hparams/test_loss"] == (120, 0.5)
    assert scalars["hparams/test_accuracy"] == (120, pytest.approx(0.9))


def test_experiment_config_names_the_columns(tmp_path):
    study = str(tmp_path)
    write_experiment_config(
        study, {"batch_size": [16, 64, 256], "learning_rate": [0.1, 0.05], "optimizer": "sgd",
                "nesterov": [True, False], "weight_decay": [None, 1e-4]},
        ["hparams/val_loss", "val_accuracy", "gap_loss"])

    experiments = [data.experiment for data in _plugin_data(study) if data.HasField("experiment")]
    assert len(experiments) == 1
    infos = {info.name: info for info in experiments[0].hparam_infos}
    assert set(infos) == {"batch_size", "learning_rate", "optimizer", "nesterov", "weight_decay"}
    assert [v.number_value for v in infos["batch_size"].domain_discrete.values] == [16, 64, 256]
    assert infos["optimizer"].type == api_pb2.DATA_TYPE_STRING
    assert infos["nesterov"].type == api_pb2.DATA_TYPE_BOOL
    assert not infos["weight_decay"].HasField("domain_discrete")  # mixed "none" and numbers
    metrics = {info.name.tag: info for info in experiments[0].metric_infos}
    assert set(metrics) == {"hparams/val_loss", "hparams/val_accuracy", "hparams/gap_loss"}
    assert metrics["hparams/val_accuracy"].display_name == "val_accuracy"
    assert metrics["hparams/val_loss"].dataset_type == api_pb2.DATASET_VALIDATION


def test_bad_hparams_are_refused():
    with pytest.raises(ValueError,
                       match=r"hparams\['layers'\]=\(64, 32\) is a tuple.*str\(value\)"):
        HParamsLogger("unused", {"layers": (64, 32)})
    with pytest.raises(ValueError, match="non-empty dict"):
        HParamsLogger("unused", {})
    with pytest.raises(ValueError, match="at least one metric tag"):
        write_experiment_config("unused", {"batch_size": [1]}, [])


def test_dashboard_backend_lists_one_row_per_run(tmp_path):
    """The HParams plugin's own backend (what the dashboard queries) reads the study back: one
    session group per run, with its hyperparameters and final metrics at the final update."""
    study = str(tmp_path)
    write_experiment_config(study, {"batch_size": [8, 16]}, ["loss", "val_loss"])
    for batch_size in (8, 16):
        _fit(HParamsLogger(os.path.join(study, f"bs{batch_size}"), {"batch_size": batch_size}),
             epochs=1, batch_size=batch_size)
    groups = session_groups(study, [api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS])

    rows = {group.hparams["batch_size"].number_value:
            {m.name.tag: m.training_step for m in group.metric_values}
            for group in groups}
    tags = ["hparams/loss", "hparams/val_loss"]
    assert rows == {8.0: dict.fromkeys(tags, 48 // 8), 16.0: dict.fromkeys(tags, 48 // 16)}


def test_a_studys_own_columns_read_b_simple_at_the_target_and_say_their_target(tmp_path):
    """The report's columns per run: B_simple read on the run's smoothed curve where it reached
    the target (not its end-of-training value, which grows as the loss falls), the end value
    beside it, and a steps column whose display name states the target; none of them is typed
    as a training or validation metric."""
    from experiments.launch import study_reporting

    study = tmp_path / "study"
    (study / "r1" / "tensorboard").mkdir(parents=True)
    record = {"status": "finished", "examples_per_sec": 500.0, "b_simple": 1865.0,
              "b_simple_curve": [[40, 20.0], [80, 60.0], [90, 1865.0]], "updates": 90,
              "curve": {"val_accuracy": [[40, 0.2], [80, 0.6], [90, 0.7]]}}
    summary = {"target": 0.5, "metric": "val_accuracy", "mode": "max"}
    study_reporting.write_run_metrics(str(study), {"runs": [{"path": "r1"}]}, [record], summary)
    scalars = _scalars(str(study / "r1" / "tensorboard"))
    steps = scalars["hparams/steps_to_target"][1]
    assert steps == pytest.approx(70.0)  # 0.2 -> 0.6 over updates 40 -> 80 crosses 0.5 at 70
    # The curve's last logged value at or before the crossing (``steps_to_result.value_at``).
    assert scalars["hparams/b_simple_at_target"][1] == pytest.approx(20.0)
    assert scalars["hparams/b_simple_final"][1] == pytest.approx(1865.0)
    assert scalars["hparams/reached_target"][1] == 1.0

    study_reporting.write_hparams_config(
        str(study / "tensorboard"), {"runs": [{"hparams": {"batch_size": 16}}]},
        "val_accuracy", summary)
    (config,) = [data.experiment for data in _plugin_data(str(study / "tensorboard"))
                 if data.HasField("experiment")]
    metrics = {m.name.tag: m for m in config.metric_infos}
    assert "rule" not in {h.name for h in config.hparam_infos}  # no rules: no "none" column
    assert metrics["hparams/steps_to_target"].display_name == "updates to val_accuracy >= 0.5"
    for name in study_reporting.STUDY_METRICS:
        assert metrics[f"hparams/{name}"].dataset_type == api_pb2.DATASET_UNKNOWN
    assert metrics["hparams/loss"].dataset_type == api_pb2.DATASET_TRAINING


def test_a_failed_attempt_set_aside_is_not_a_second_session_of_its_run(tmp_path):
    """A relaunch sets a failed run aside as ``<run>.attempt-1`` and trains it again; the
    attempt's session kept the run's name as its group, so the dashboard showed one row of two
    sessions and averaged their metrics. Its session files are now renamed out of TensorBoard's
    sight, the rest of its event files kept."""
    from callbacks.hparams import write_session
    from experiments.launch import study_dir

    run = tmp_path / "b64_s0"
    log_dir = str(run / "tensorboard")
    write_session(log_dir, {"batch_size": 64}, "b64_s0", {"val_loss": 9.0}, 3, "failure")
    tf.summary.create_file_writer(os.path.join(log_dir, "train")).close()  # a curve's folder
    (run / "status.json").write_text('{"status": "failed", "error": "NaN loss"}')
    moved = study_dir.set_aside(str(run))
    assert moved == str(tmp_path / "b64_s0.attempt-1")
    write_session(log_dir, {"batch_size": 64}, "b64_s0", {"val_loss": 0.5}, 9, "success")

    statuses = [api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE]
    (group,) = session_groups(str(tmp_path), statuses)
    assert group.name == "b64_s0" and len(group.sessions) == 1
    assert {m.name.tag: m.value for m in group.metric_values} == {"hparams/val_loss": 0.5}
    kept = os.listdir(os.path.join(moved, "tensorboard"))
    assert any("set-aside-events" in name for name in kept)  # renamed, not deleted
    assert os.path.isdir(os.path.join(moved, "tensorboard", "train"))


def test_a_rewritten_study_report_leaves_one_config_naming_the_new_target(tmp_path):
    """TensorBoard keeps the first metadata it reads for a tag: a report written again (each
    shard writes one; the default target moves with the runs) appended a second HParams config
    beside the first, and the dashboard kept showing the first target."""
    import json

    from experiments.launch import study_reporting

    def state(target):
        return {"study": "s", "gin_files": [], "gin_bindings": [], "config": "",
                "axes": {"batch_sizes": [64]},
                "target": {"metric": "val_accuracy", "value": target, "mode": "max"},
                "runs": [{"index": 0, "name": "b64_s0", "bindings": [], "path": "b64_s0",
                          "hparams": {"batch_size": 64, "learning_rate": 0.1, "seed": 0,
                                      "epochs": 1, "micro_batch_size": 64, "rule": None},
                          "status": "pending", "error": None}]}

    for target in (0.1, 0.2):
        (tmp_path / "study.json").write_text(json.dumps(state(target)))
        study_reporting.write(str(tmp_path))
    configs = [d.experiment for d in _plugin_data(str(tmp_path / "tensorboard"))
               if d.HasField("experiment")]
    assert len(configs) == 1
    steps = [m.display_name for m in configs[0].metric_infos
             if m.name.tag == "hparams/steps_to_target"]
    assert steps == ["updates to val_accuracy >= 0.2"]
    texts = [value for _, value in _events(str(tmp_path / "tensorboard"))
             if value.tag.startswith("report/text")]
    assert len(texts) == 1
    assert [name for name in os.listdir(tmp_path) if "tensorboard" in name] == ["tensorboard"]


def test_the_rewritten_report_directory_keeps_the_umask_permissions(tmp_path):
    """The swap's temporary directory (``mkdtemp``, mode 0700) became the report's
    ``tensorboard`` directory, unreadable to the other users of a shared study directory."""
    from experiments.launch import study_reporting

    previous = os.umask(0o022)
    try:
        study_reporting._write_afresh(str(tmp_path / "tensorboard"),
                                      lambda d: open(os.path.join(d, "x"), "w").close())
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "tensorboard").st_mode & 0o777 == 0o755
