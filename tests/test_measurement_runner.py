"""Measurements wired into runs from gin: the documented tags reach TensorBoard, defaults switch
themselves on and off, bad settings fail before a run directory exists."""

import os

import pytest

from experiments import launch
from tests.helpers import event_tags, read_json, run_dirs

MEASURE = "gin/experiments/measure_digits.gin"
DIGITS = "gin/experiments/digits_mlp.gin"
SMALL = ["train.verbose = 0", "train.epochs = 2", "measurements.gap_subset_size = 128"]

PER_UPDATE = ["gradients/global_norm", "gradients/layer/01_dense",
              "gradients/layer/03_output",
              "update_ratio/global", "update_ratio/layer/02_dense",
              "weights/distance_from_init", "weights/relative_distance_from_init",
              "weights/distance_from_init/layer/03_output"]
PER_EPOCH = ["train_inference/loss", "train_inference/accuracy", "generalization_gap/loss",
             "generalization_gap/accuracy", "throughput/examples_per_sec",
             "throughput/updates_per_sec", "throughput/train_seconds",
             "throughput/epoch_seconds", "throughput/peak_memory_mb"]
NOISE = ["noise_scale/b_simple", "noise_scale/trace_sigma", "noise_scale/gradient_sq_norm"]
SHARPNESS = ["sharpness/phi", "sharpness/loss", "sharpness/max_loss"]


def _run(tmp_path, files, bindings=()):
    launch.launch(list(files), SMALL + list(bindings), output_dir=str(tmp_path / "runs"),
                  print_fn=lambda *_: None)
    (path,) = run_dirs(str(tmp_path / "runs"))
    return path, event_tags(os.path.join(path, "tensorboard")), read_json(
        os.path.join(path, "result.json"))


@pytest.mark.slow
def test_measure_gin_shows_every_tag(tmp_path):
    path, tags, result = _run(tmp_path, [MEASURE], ["measurements.sharpness.max_iterations = 3"])
    missing = [t for t in PER_UPDATE + PER_EPOCH + NOISE + SHARPNESS if t not in tags]
    assert not missing
    measured = result["measurements"]
    assert measured["noise_scale/b_simple"] > 0 and measured["sharpness/phi"] > 0
    assert measured["weights/distance_from_init"] > 0


def test_default_run_at_k1_notes_instead_of_noise(tmp_path):
    path, tags, result = _run(tmp_path, [DIGITS], ["train.batch_size = 128"])
    assert all(t in tags for t in PER_UPDATE + PER_EPOCH)
    assert "noise_scale/note" in tags
    assert not any(t in tags for t in NOISE + SHARPNESS)
    assert "sharpness/phi" not in result["measurements"]


def test_no_measurements(tmp_path):
    path, tags, result = _run(tmp_path, [DIGITS], ["measurements.enabled = []"])
    assert not any(t.split("/")[0] in ("gradients", "noise_scale", "throughput", "weights")
                   for t in tags)
    assert result["measurements"] == {}


@pytest.mark.parametrize("binding, message", [
    ("measurements.sharpness.epsilon = -1.0", "measurements.sharpness.epsilon"),
    ("measurements.gradient_norms.every_n_updates = 0",
     "measurements.gradient_norms.every_n_updates"),
    ("measurements.every_n_updates = 0", "measurements.every_n_updates"),
    ("measurements.track_gradient_noise = False", "measurements.track_gradient_noise"),
    ("measurements.enabled = [3]", "measurements.enabled"),
])
def test_bad_settings_fail_before_any_run(tmp_path, binding, message):
    with pytest.raises(ValueError, match=message):
        launch.launch([MEASURE], SMALL + [binding], output_dir=str(tmp_path / "runs"),
                      print_fn=lambda *_: None)
    assert run_dirs(str(tmp_path / "runs")) == []


@pytest.mark.parametrize("num_micro_batches", [1, 2])
def test_stream_data_gets_the_stream_note_not_the_k1_advice(monkeypatch, num_micro_batches):
    """On stream data the noise scale is never measured; at k = 1 the note used to say 'set
    train.micro_batch_size to a divisor of train.batch_size', which a stream batch refuses."""
    from experiments.inputs.layout import BatchLayout
    from experiments.run import measurements

    logged = []
    monkeypatch.setattr(measurements.logging, "info", lambda message, *a: logged.append(message))
    layout = BatchLayout(batch_size=8, micro_batch_size=None, num_micro_batches=num_micro_batches,
                         eval_batch_size=8, updates_per_epoch=10, window_length=25,
                         num_streams=8)
    context = measurements.MeasurementContext(layout=layout, every_n_updates=10,
                                              track_gradient_noise=False)
    assert measurements.gradient_noise_scale(context) is None
    assert logged == [measurements.STREAM_NOTE]
    assert "micro_batch_size" not in logged[0]


def test_runs_in_one_process_leave_no_traced_graph_behind(tmp_path):
    """Each traced train step registers a ``tf.custom_gradient`` (the optimizer's all-reduce)
    that TensorFlow never removes, holding that run's graph: about 6 MB per run with the default
    measurements, for the life of a study worker. A run removes those it registered."""
    from experiments.engine import keras_internals
    bindings = ["train.epochs = 1", "train.verbose = 0", "train.batch_size = 128"]
    launch.launch(["gin/experiments/digits_mlp.gin"], bindings, output_dir=str(tmp_path / "a"),
                  print_fn=lambda *_: None)
    after_one = keras_internals.custom_gradient_count()
    launch.launch(["gin/experiments/digits_mlp.gin"], bindings, output_dir=str(tmp_path / "b"),
                  print_fn=lambda *_: None)
    assert keras_internals.custom_gradient_count() == after_one
