"""What a failed run's one-line message tells the user names only files that exist."""

import os

import pytest

from experiments import launch
from experiments.common import errors
from tests.helpers import run_dirs

DIGITS = "gin/experiments/digits_mlp.gin"


def test_a_single_run_that_diverges_names_only_its_status_json(tmp_path):
    """A single run (no --jobs) has no log.txt: its output went to the console."""
    with pytest.raises(FloatingPointError) as raised:
        launch.launch([DIGITS], ["keras.optimizers.SGD.learning_rate = 1e6", "train.verbose = 0",
                                 "train.epochs = 1"],
                      output_dir=str(tmp_path / "runs"), print_fn=lambda *_: None)
    (run,) = run_dirs(str(tmp_path / "runs"))
    message = errors.user_message(raised.value)
    assert "The training loss became nan" in message
    assert message.endswith(f"(run {run} is marked failed in its status.json)")
    assert "log" not in message.splitlines()[-1]
    assert not os.path.exists(os.path.join(run, "log.txt"))


def test_the_note_names_a_log_only_where_there_is_one(tmp_path):
    run = str(tmp_path)
    assert errors.failed_run_note(run) == f"run {run} failed"
    (tmp_path / "log.txt").write_text("output\n")
    assert errors.failed_run_note(run) == f"run {run} failed; its log.txt says more"
    (tmp_path / "status.json").write_text('{"status": "failed"}\n')
    assert errors.failed_run_note(run) == \
        f"run {run} is marked failed; its log.txt and status.json say more"
    os.remove(tmp_path / "log.txt")
    assert errors.failed_run_note(run) == f"run {run} is marked failed in its status.json"
    # a status that could not be rewritten (a full disk) still says running: not claimed failed
    (tmp_path / "status.json").write_text('{"status": "running"}\n')
    assert errors.failed_run_note(run) == f"run {run} failed"


def test_a_file_system_error_from_tensorflow_is_one_line_naming_the_file():
    """A full disk under TensorFlow's own writers (a summary's or the HParams') raised a
    ResourceExhaustedError shown as a 66-line traceback; a TensorFlow error of another kind
    stays a bug's traceback."""
    import tensorflow as tf  # noqa: PLC0415

    full = tf.errors.ResourceExhaustedError(
        None, None, "/runs/x/events.out.tfevents.1; No space left on device\nmore detail")
    assert errors.user_message(full) == "/runs/x/events.out.tfevents.1; No space left on device"
    assert errors.user_message(tf.errors.InvalidArgumentError(None, None, "shape [2]")) is None
