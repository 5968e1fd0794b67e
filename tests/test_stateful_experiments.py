"""The stateful experiments end to end through gin and the runner (shrunk to run in seconds)."""

import json
import math
import os

import pytest

from experiments import launch
from experiments.inputs import stream_sources as stateful_data
from experiments.inputs.streams import StreamLayout

QUIET = ["train.verbose = 0"]


def _launch(gin_file, bindings, output_dir):
    return launch.launch([gin_file], QUIET + bindings, output_dir=str(output_dir),
                         print_fn=lambda *args: None)


@pytest.mark.slow
def test_stateful_beats_stateless_on_the_long_memory_task(tmp_path):
    results = _launch("gin/experiments/long_memory.gin",
                      ["flip_flop.num_steps = 24000", "train.epochs = 5"], tmp_path)
    accuracy = {r["run"]: r["final_validation"]["accuracy"] for r in results}
    # The stateless model cannot know the bit until a marker shows up in its window.
    assert accuracy["stateless"] < 0.7
    assert accuracy["stateful"] > 0.85
    assert accuracy["stateful"] > accuracy["stateless"] + 0.2


@pytest.mark.slow
def test_char_lm_reports_bits_per_character_on_held_out_text(tmp_path):
    results = _launch("gin/experiments/char_lm.gin", [
        "stream_text.max_characters = 30000", "NUM_STREAMS = 8",
        "stream_layout.window_length = 25", "stream_layout.num_micro_batches = 2",
        "stateful_stacked_lstm.units = (32,)", "train.epochs = 2",
        "measurements.enabled = [@measurements.validation_curve]",
        "measurements.every_n_updates = 30"], tmp_path)
    result = results[0]
    with open(os.path.join(result["run_dir"], "result.json")) as handle:
        written = json.load(handle)
    final = written["final_validation"]
    assert math.isfinite(final["bits_per_character"])
    assert final["bits_per_character"] == pytest.approx(final["loss"] / math.log(2), rel=1e-4)
    # Better than a uniform guess over the characters of the text.
    vocabulary = stateful_data.stream_text(
        paths=["data/shakespeare"], max_characters=30000,
        layout=StreamLayout(num_streams=8, window_length=25)).vocabulary
    assert final["bits_per_character"] < math.log2(len(vocabulary)) - 1.0
    assert written["batch_size"] == 8 and written["num_micro_batches"] == 2
    # 29999 input steps, the last 10% held out; 8 streams of whole 50-step updates, offset <= 25.
    train_steps = 29999 - 3000
    assert written["updates"] == 2 * ((train_steps - 25) // 8 // 50)
    # The held-out streams are validation data: 3000 steps, 8 streams of 15 windows of 25.
    assert written["num_validation_examples"] == 8 * (3000 // 8 // 25)
    curve = written["measurements"]["curve"]
    assert [u for u, _ in curve["val_loss"]] == [*range(30, written["updates"], 30),
                                                 written["updates"]]
    # Its last point evaluates the final weights on the same held-out windows, state carried.
    assert curve["val_loss"][-1][1] == pytest.approx(final["loss"], rel=1e-5)


def test_runner_refuses_mismatched_settings_before_any_run_exists(tmp_path):
    with pytest.raises(ValueError, match="stream_layout.num_micro_batches"):
        _launch("gin/experiments/char_lm.gin", ["train.micro_batch_size = 4"], tmp_path)
    with pytest.raises(ValueError, match="train.batch_size=16 does not match"):
        _launch("gin/experiments/char_lm.gin", ["train.batch_size = 16"], tmp_path)
    assert not os.path.exists(os.path.join(tmp_path, "char_lm"))


def test_runner_refuses_a_stateless_model_on_stateful_streams(tmp_path):
    with pytest.raises(ValueError, match="has no stateful layer"):
        _launch("gin/experiments/long_memory.gin",
                ["sweep.variants = {}", "train.model_fn = @stacked_lstm"], tmp_path)
    # Refused before the run directory exists: relaunching the corrected run under the same
    # name is not blocked by a failed directory of the bad one.
    assert not os.path.exists(os.path.join(tmp_path, "long_memory"))


def test_a_stateful_model_on_stateless_windows_leaves_no_run_directory(tmp_path):
    shrink = ["stream_text.max_characters = 30000", "NUM_STREAMS = 8",
              "stream_layout.window_length = 25", "stateful_stacked_lstm.units = (8,)",
              "train.epochs = 1", "measurements.enabled = []"]
    with pytest.raises(ValueError, match="set stream_layout.stateful = True"):
        launch.launch(["gin/experiments/char_lm.gin"],
                      QUIET + shrink + ["stream_layout.stateful = False"],
                      output_dir=str(tmp_path), run_name="lm", print_fn=lambda *_: None)
    assert not os.path.exists(os.path.join(tmp_path, "char_lm"))
    (result,) = launch.launch(["gin/experiments/char_lm.gin"], QUIET + shrink,
                              output_dir=str(tmp_path), run_name="lm", print_fn=lambda *_: None)
    assert result["updates"] > 0
