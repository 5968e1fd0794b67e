"""Exact resume at every boundary: each kind of run killed right after a checkpoint at every
epoch boundary, every stage boundary of a batch-size schedule, the first update and the first
update of an epoch; relaunched; every final metric, every measurement and every TensorBoard point
(tag, step, value) equal to the uninterrupted run's, bit for bit.

The kill is simulated in the process (the training state's ``save`` raises an exception no code
catches once it has written the checkpoint of the chosen update): what survives it is only what
a real kill leaves on disk, the relaunch re-parses the gin files and builds a fresh model (layer
names reset). ``tests/test_resume.py`` kills real ``main.py`` processes with SIGKILL.
"""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from callbacks import summary_writer
from experiments import launch
from experiments.run import runner, training_state

pytestmark = pytest.mark.slow

COMMON = ["train.verbose = 0", "train.deterministic_ops = True",
          "checkpoints.every_n_updates = 1", "checkpoints.every_n_minutes = None"]
KINDS = {
    # digits MLP, B = 256: 6 updates per epoch, 3 epochs.
    "digits_mlp": (["gin/experiments/digits_mlp.gin"],
                   ["train.batch_size = 256", "train.epochs = 3"]),
    # every measurement on (k = 4, noise scale, gap, distance, sharpness at the end).
    "measure_digits": (["gin/experiments/measure_digits.gin"],
                       ["train.batch_size = 256", "train.micro_batch_size = 64",
                        "train.epochs = 3", "measurements.every_n_updates = 2",
                        "measurements.sharpness.max_iterations = 2"]),
    # B = 256, then 512 from epoch 1, then 768 from update 12 (mid-epoch 2): k = 1, 2, 3.
    "batch_size_schedule": (["gin/experiments/digits_mlp.gin"],
                            ["train.batch_size = 256", "train.micro_batch_size = 256",
                             "train.epochs = 4",
                             "train.batch_size_schedule = @batch_size_schedule()",
                             "batch_size_schedule.boundaries = [6, 12]",
                             "batch_size_schedule.unit = 'updates'",
                             "batch_size_schedule.batch_sizes = [512, 768]"]),
    # stateful character LM over 8 streams, 2 windows per update.
    "char_lm": (["gin/experiments/char_lm.gin"],
                ["train.epochs = 2", "stream_text.max_characters = 6000", "NUM_STREAMS = 8",
                 "stream_layout.window_length = 25", "stream_layout.num_micro_batches = 2",
                 "stateful_stacked_lstm.units = (16,)"]),
}


class _Killed(BaseException):
    """A process death, as far as the run can tell: nothing catches it."""


class _EpochEnds(keras.callbacks.Callback):
    """The update count at each epoch's end."""

    def __init__(self):
        super().__init__()
        self.updates = []

    def on_epoch_end(self, epoch, logs=None):
        self.updates.append(int(self.model.optimizer.iterations.numpy()))


def _train(output, name, kind, kill_at=None, monkeypatch=None, extra_callbacks=(), config=None):
    files, bindings = config or KINDS[kind]
    launch.parse(files, bindings + COMMON)
    if kill_at is not None:
        save = training_state.RunState.save

        def save_then_die(self, epoch, step, update):
            save(self, epoch, step, update)
            if update == kill_at:
                raise _Killed(update)

        monkeypatch.setattr(training_state.RunState, "save", save_then_die)
    try:
        more = {"extra_callbacks": extra_callbacks} if extra_callbacks else {}  # else gin's
        return runner.train(output_dir=output, experiment=kind, run_name=name, resumable=True,
                            **more)
    finally:
        monkeypatch.undo() if monkeypatch is not None else None


def _logged(result):
    """Every final metric and measurement of result.json (not times, rates or memory), and
    every TensorBoard scalar point (split, tag, step, value)."""
    values = {"updates": result["updates"]}
    for section in ("final_epoch", "final_validation", "measurements"):
        for key, value in result[section].items():
            if not any(word in key for word in ("time", "seconds", "per_sec", "memory",
                                                 "throughput")):
                values[f"{section}.{key}"] = value
    points = []
    for path in glob.glob(os.path.join(result["run_dir"], "tensorboard", "*",
                                       "events.out.tfevents.*")):
        split = os.path.basename(os.path.dirname(path))
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("tensor") and not any(
                        word in value.tag for word in ("throughput", "seconds", "per_second")):
                    array = tf.make_ndarray(value.tensor)
                    if array.dtype.kind == "f" and array.size == 1:
                        points.append((split, value.tag, event.step, float(np.ravel(array)[0])))
    return values, sorted(points)


def _boundaries(result, epoch_ends):
    """The kill points: the first update, each epoch's last update and the next one, each
    stage's first update and the one before it."""
    updates = result["updates"]
    points = {1, updates}
    for end in epoch_ends:
        points.update({end, min(end + 1, updates)})
    for stage in result.get("batch_size_stages", [])[1:]:
        points.update({stage["update"], stage["update"] + 1})
    return sorted(p for p in points if 1 <= p <= updates)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_kill_at_every_boundary_resumes_bit_for_bit(tmp_path, monkeypatch, kind):
    output = str(tmp_path)
    epochs = _EpochEnds()
    reference = _train(output, "reference", kind, extra_callbacks=[epochs])
    expected = _logged(reference)
    kills = _boundaries(reference, epochs.updates)
    assert len(kills) >= 4
    for kill_at in kills:
        name = f"killed-at-{kill_at}"
        with pytest.raises(_Killed):
            _train(output, name, kind, kill_at, monkeypatch)
        resumed = _train(output, name, kind)
        assert resumed["resumed_at_updates"] == [kill_at], kill_at
        values, points = _logged(resumed)
        assert values == expected[0], f"{kind}, killed at update {kill_at}"
        assert points == expected[1], f"{kind}, killed at update {kill_at}: TensorBoard points"


def _keras_callbacks_config(csv_path):
    """EarlyStopping (stops after epoch 3 of 6: no epoch improves by 100), ReduceLROnPlateau
    (divides the rate by 10 every 2 epochs, 0.5 -> 0.0005 by epoch 6 without early stopping), a
    CSV log and per-update TensorBoard scalars."""
    return (["gin/experiments/digits_mlp.gin"],
            ["train.batch_size = 256", "train.epochs = 6", "measurements.enabled = []",
             "train.extra_callbacks = [@keras.callbacks.EarlyStopping(), "
             "@keras.callbacks.ReduceLROnPlateau(), @keras.callbacks.CSVLogger()]",
             "keras.callbacks.EarlyStopping.monitor = 'loss'",
             "keras.callbacks.EarlyStopping.min_delta = 100.0",
             "keras.callbacks.EarlyStopping.patience = 3",
             "keras.callbacks.EarlyStopping.restore_best_weights = True",
             "keras.callbacks.ReduceLROnPlateau.monitor = 'loss'",
             "keras.callbacks.ReduceLROnPlateau.min_delta = 100.0",
             "keras.callbacks.ReduceLROnPlateau.patience = 1",
             "keras.callbacks.ReduceLROnPlateau.factor = 0.1",
             f"keras.callbacks.CSVLogger.filename = '{csv_path}'",
             "batchlab.TensorBoard.update_freq = 1"])


def test_keras_callbacks_state_csv_and_batch_curves_survive_a_resume(tmp_path, monkeypatch):
    """Patience counters, best values and best weights travel with the checkpoint; the CSV log
    keeps its earlier rows; per-update TensorBoard curves are keyed by the update count."""
    output = str(tmp_path)
    reference = _train(output, "reference", "callbacks",
                       config=_keras_callbacks_config(tmp_path / "reference.csv"))
    assert reference["updates"] == 24  # stopped by EarlyStopping after epoch 4 of 6
    expected = _logged(reference)
    batch_steps = sorted(step for split, tag, step, _ in expected[1] if tag == "batch_loss")
    assert batch_steps == list(range(1, 25))
    with open(tmp_path / "reference.csv") as handle:
        reference_csv = handle.read()
    for kill_at in (8, 13, 18):
        config = _keras_callbacks_config(tmp_path / f"killed-{kill_at}.csv")
        with pytest.raises(_Killed):
            _train(output, f"killed-{kill_at}", "callbacks", kill_at, monkeypatch, config=config)
        resumed = _train(output, f"killed-{kill_at}", "callbacks", config=config)
        assert resumed["resumed_at_updates"] == [kill_at]
        assert _logged(resumed) == expected, f"killed at update {kill_at}"
        with open(tmp_path / f"killed-{kill_at}.csv") as handle:
            assert handle.read() == reference_csv, f"killed at update {kill_at}"
        assert _text_events(resumed, "config/operative") == 1  # written once, not per process


def _text_events(result, tag):
    """How many events of the run's TensorBoard files hold ``tag``."""
    count = 0
    for path in glob.glob(os.path.join(result["run_dir"], "tensorboard", "*",
                                       "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            count += sum(value.tag == tag for value in event.summary.value)
    return count


def test_a_relaunched_range_test_starts_its_ramp_again(tmp_path, monkeypatch):
    """Its ramp lives in its callback: the relaunch gives the uninterrupted run's curve, with
    every TensorBoard point once."""
    config = (["gin/experiments/digits_mlp.gin"],
              ["train.batch_size = 64", "train.mode = 'lr_range_test'",
               "lr_range_test.num_updates = 30", "lr_range_test.min_learning_rate = 1e-4",
               "lr_range_test.max_learning_rate = 1.0", "measurements.enabled = []"])
    output = str(tmp_path)
    reference = _train(output, "reference", "range_test", config=config)
    with pytest.raises(_Killed):
        _train(output, "killed", "range_test", 12, monkeypatch, config=config)
    again = _train(output, "killed", "range_test", config=config)
    assert again["resumed_at_updates"] == []
    for key in ("learning_rates", "losses", "suggested_learning_rate", "updates"):
        assert again["lr_range_test"][key] == reference["lr_range_test"][key], key
    assert _logged(again)[1] == _logged(reference)[1]


def test_cadenced_callbacks_log_no_extra_point_after_a_resume(tmp_path, monkeypatch):
    """The noise-scale probe, AdaScale's log and per-update TensorBoard scalars took the update
    count in ``on_train_begin``, which runs before the checkpoint is restored: the resumed
    process saw update 0 and logged at its first call's end (update 8 here, off the cadence of
    5): an extra probe row in result.json and extra TensorBoard points."""
    config = (["gin/experiments/digits_mlp.gin"],
              ["train.batch_size = 64", "train.micro_batch_size = 16", "train.epochs = 1",
               "train.learning_rate_scaling = @adascale()", "measurements.every_n_updates = 5",
               "measurements.enabled = [@measurements.gradient_noise_scale, "
               "@measurements.noise_scale_probe]",
               "measurements.noise_scale_probe.every_n_updates = 5",
               "measurements.noise_scale_probe.num_draws = 4",
               "measurements.noise_scale_probe.sizes = [16, 32]",
               "measurements.noise_scale_probe.at_end = False",
               "batchlab.TensorBoard.update_freq = 5"])
    output = str(tmp_path)
    expected = _logged(_train(output, "reference", "cadenced", config=config))
    assert [row["update"] for row in expected[0]["measurements.noise_probe/probes"]] == \
        [5, 10, 15, 20]
    with pytest.raises(_Killed):
        _train(output, "killed", "cadenced", 7, monkeypatch, config=config)
    resumed = _train(output, "killed", "cadenced", config=config)
    assert resumed["resumed_at_updates"] == [7]
    values, points = _logged(resumed)
    assert values == expected[0]
    assert points == expected[1]


def test_notes_and_the_hparams_session_are_written_once_over_a_resume(tmp_path, monkeypatch):
    """The 'noise scale undefined at k = 1' note and the HParams session start were written
    again by every resumed process."""
    config = (["gin/experiments/digits_mlp.gin"],
              ["train.batch_size = 256", "train.epochs = 2",
               "measurements.also = [@measurements.hparams]",
               "measurements.hparams.values = {'batch_size': 256}"])
    output = str(tmp_path)
    with pytest.raises(_Killed):
        _train(output, "killed", "notes", 4, monkeypatch, config=config)
    resumed = _train(output, "killed", "notes", config=config)
    assert resumed["resumed_at_updates"] == [4]
    assert _text_events(resumed, "noise_scale/note") == 1
    sessions = 0
    for path in glob.glob(os.path.join(resumed["run_dir"], "tensorboard", "**",
                                       "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            sessions += sum(value.tag == "_hparams_/session_start_info"
                            for value in event.summary.value)
    assert sessions == 1


def test_a_run_ended_by_an_exception_does_not_silence_the_next_runs_summaries(
        tmp_path, monkeypatch):
    """Keras' TensorBoard with ``update_freq = N`` pushes a ``tf.summary.record_if`` that only its
    ``on_train_end`` pops: after a run that ended by an exception, every later text summary of
    the process (the next run's notes, its HParams session) was dropped."""
    killed = (["gin/experiments/digits_mlp.gin"],
              ["train.batch_size = 64", "train.epochs = 1", "measurements.enabled = []",
               "batchlab.TensorBoard.update_freq = 5"])
    with pytest.raises(_Killed):
        _train(str(tmp_path), "killed", "per_update", 7, monkeypatch, config=killed)
    after = _train(str(tmp_path), "next", "notes", config=(
        ["gin/experiments/digits_mlp.gin"], ["train.batch_size = 256", "train.epochs = 1"]))
    assert _text_events(after, "noise_scale/note") == 1


def test_notes_are_written_while_per_update_scalars_are_logged(tmp_path):
    """With ``update_freq = 5`` Keras' TensorBoard keeps a ``record_if`` of its batch count
    pushed through training: the operative config, written after the first update, was
    dropped."""
    result = _train(str(tmp_path), "per_update", "per_update", config=(
        ["gin/experiments/digits_mlp.gin"],
        ["train.batch_size = 256", "train.epochs = 1", "batchlab.TensorBoard.update_freq = 5"]))
    assert _text_events(result, "config/operative") == 1
    assert _text_events(result, "noise_scale/note") == 1


@pytest.mark.parametrize("spelling", ["{}", "./{}", "{}/"])
def test_a_note_is_not_written_again_after_a_resume_however_its_directory_is_spelt(
        tmp_path, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    log_dir = spelling.format("run/tensorboard")
    for resumed in (False, True):
        writers = summary_writer.SummaryWriters(summary_writer.ScalarEncoder())
        if resumed:
            writers.continue_from(log_dir)
        writers.text(log_dir, "noise_scale/note", "undefined at k = 1")
        writers.close_all()
    assert [tag for tag, _, _ in summary_writer.summaries_in("run/tensorboard/train")] == \
        ["noise_scale/note"]
