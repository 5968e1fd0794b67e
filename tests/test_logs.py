"""Logs a file can hold: no terminal control codes when stdout is not a terminal, a first line
before TensorFlow loads, progress lines while runs train, and ``--list``."""

import io
import json
import os
import subprocess
import sys
import types

import pytest

from experiments.analysis import tables
from experiments.launch import listing, outcomes
from experiments.run.settings import progress_verbosity
from tests.helpers import write_run_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_keras_verbosity_follows_the_terminal_unless_the_user_set_it():
    assert progress_verbosity(None, io.StringIO()) == 2  # a file or pipe: a line per epoch
    assert progress_verbosity(None, _Terminal()) == 1    # a terminal: the progress bar
    assert progress_verbosity("auto", io.StringIO()) == 2
    assert progress_verbosity(1, io.StringIO()) == 1     # train.verbose = 1 is kept
    assert progress_verbosity(0, _Terminal()) == 0


def test_redirected_output_has_no_control_codes_and_list_shows_the_run(tmp_path):
    output = tmp_path / "out.txt"
    runs = tmp_path / "runs"
    with open(output, "w") as handle:
        done = subprocess.run(
            [sys.executable, "main.py", "--gin_file=gin/experiments/digits_mlp.gin",
             f"--output_dir={runs}", "--gin_bindings=train.epochs = 2",
             "--gin_bindings=train.batch_size = 128", "--gin_bindings=measurements.enabled = []"],
            cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, timeout=600)
    text = output.read_text()
    assert done.returncode == 0, text[-2000:]
    assert text.startswith("batchlab: gin/experiments/digits_mlp.gin: loading TensorFlow")
    assert "Epoch 2/2" in text  # Keras' epoch lines are there, as plain lines
    for code in ("\x1b[", "\r", "\b"):
        assert code not in text, repr(code)
    listed = subprocess.run([sys.executable, "main.py", f"--list={runs}"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    line = [l for l in listed.stdout.splitlines() if l.startswith("finished")]
    assert len(line) == 1 and "val_accuracy=" in line[0] and "B=128" in line[0]
    assert str(runs / "digits_mlp") in line[0]


def test_list_shows_status_metrics_errors_and_groups(tmp_path):
    study = tmp_path / "tiny" / "r"
    write_run_dir(str(study / "b64_s0"), {"status": "finished"},
         {"final_validation": {"accuracy": 0.9, "loss": 0.3}, "batch_size": 64, "updates": 12})
    write_run_dir(str(study / "b128_s0"), {"status": "failed", "error": "Traceback\nNonFiniteLossError: "
                                                                 "loss became nan"})
    write_run_dir(str(tmp_path / "x" / "adaptive"), {"status": "finished"},
         {"final_validation": {"loss": 0.25}, "batch_size": 16, "final_batch_size": 48,
          "updates": 99})
    write_run_dir(str(tmp_path / "x" / "killed"), {"status": "running", "pid": 2 ** 22 + 7,
                                          "host": os.uname().nodename, "heartbeat": 0})
    with open(study / "study.json", "w") as handle:  # b8_s0: refused before its directory
        json.dump({"runs": [{"name": "b64_s0"}, {"name": "b128_s0"},
                            {"name": "b8_s0", "status": "failed"}]}, handle)
    text = listing.format_listing(str(tmp_path))
    assert f"study  3 runs: 2 failed, 1 finished  {study}" in text
    assert "val_accuracy=0.9 val_loss=0.3 B=64 updates=12" in text
    assert "val_loss=0.25 B=16->48 updates=99" in text  # a batch that grew says so
    assert "NonFiniteLossError: loss became nan" in text
    assert "interrupted" in text and "killed" in text


def test_list_says_what_is_damaged(tmp_path):
    """A truncated sweep.json was listed as "sweep  0 variants: ;", a finished run with a
    truncated result.json as finished with nothing, an emptied status.json as 'missing'."""
    sweep = tmp_path / "exp" / "s"
    write_run_dir(str(sweep / "a"), {"status": "finished"}, None)
    (sweep / "a" / "result.json").write_text('{"updates": 1')
    write_run_dir(str(sweep / "b"), {"status": "finished"}, None)
    (sweep / "b" / "status.json").write_text("")
    (sweep / "b" / "config.gin").write_text("train.batch_size = 8\n")
    (sweep / "sweep.json").write_text('{"variants": {"a": [')
    text = listing.format_listing(str(tmp_path))
    assert f"sweep  sweep.json is damaged (not valid JSON); its runs are listed below  {sweep}" \
        in text
    assert f"finished     result.json missing or unreadable  {sweep / 'a'}" in text
    assert "interrupted" in text and str(sweep / "b") in text


def test_a_relaunch_onto_a_damaged_sweep_json_says_so(tmp_path):
    """It said the directory "holds no sweep; use another --run_name"."""
    from experiments import launch  # noqa: PLC0415

    sweep = tmp_path / "quickstart" / "s"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text('{"variants": {')
    with pytest.raises(launch.ConfigError, match=r"s/sweep.json is not valid JSON \(damaged"):
        launch.launch([], ["train.verbose = 0"], output_dir=str(tmp_path), run_name="s",
                      print_fn=lambda *_: None)
    assert (sweep / "sweep.json").read_text() == '{"variants": {'  # left as it was


def test_a_progress_line_names_each_running_run_and_its_update(tmp_path):
    write_run_dir(str(tmp_path / "b32_s0"), {"status": "running", "update": 140, "heartbeat": 1.0})
    ticker = outcomes.Ticker(3, print, seconds=3600)
    job = types.SimpleNamespace(spec=types.SimpleNamespace(name="b32_s0"),
                                run_dir=str(tmp_path / "b32_s0"))
    ticker.started(job)
    line = ticker.line()
    assert line.startswith("[progress] done 0/3; running 1: b32_s0 (update 140 at last heartbeat, ")
    ticker.finished(job)
    assert ticker.line() == "[progress] done 1/3; running 0: none"


def test_the_run_table_shows_a_changed_batch_and_leaves_out_empty_columns():
    rows = [{"run": "fixed", "batch_size": 64, "final_batch_size": 64,
             "final_validation": {"loss": 0.5}},
            {"run": "grown", "batch_size": 16, "final_batch_size": 48,
             "final_validation": {"loss": 0.25}}]
    lines = tables.format_table(rows).splitlines()
    assert lines[0].split() == ["run", "batch", "val", "loss"]
    assert lines[2].split() == ["fixed", "64", "0.5000"]
    assert lines[3].split() == ["grown", "16->48", "0.2500"]
    assert tables.has_metrics(rows) and not tables.has_metrics([{"run": "probe"}])


def test_a_variant_another_launch_is_training_is_reported_running_not_failed(tmp_path):
    """Two launches of one sweep --run_name: a variant the other launch took after this one
    checked was recorded as failed ("RunExistsError ... is running"); it is running."""
    from experiments.launch import executor  # noqa: PLC0415
    from experiments.run import run_dir  # noqa: PLC0415

    path = str(tmp_path / "b")
    os.makedirs(path)
    job = types.SimpleNamespace(spec=types.SimpleNamespace(name="b"), run_dir=path)

    def taken(_):
        raise run_dir.RunExistsError(f"The run {path} is running (pid 1 on here)",
                                     state="running")

    outcome = executor._run_here(job, taken)
    assert (outcome.status, outcome.error) == ("running", "running in another launch")
    run_dir.write_json(path, "status.json", run_dir.running_status())  # a live process's
    outcome = outcomes.collect(job, 0, 0.5)  # a --jobs worker refused it and went on
    assert (outcome.status, outcome.error) == ("running", "running in another launch")
    assert not os.path.exists(os.path.join(path, "log.txt"))  # its log not moved in there
    run_dir.write_json(path, "status.json", {"status": "failed", "error": "ValueError: x"})
    (tmp_path / "b.log.txt").write_text("the worker's log\n")  # what a worker leaves
    assert outcomes.collect(job, 1, 0.5).status == "failed"


def test_a_worker_stopped_after_its_runs_last_update_reports_it_finished(tmp_path):
    """A stop signal after the last update ends a --jobs worker without its "done" (exit -1);
    the run finished all the same, and was reported failed."""
    from experiments.run import run_dir  # noqa: PLC0415

    path = str(tmp_path / "a")
    os.makedirs(path)
    run_dir.write_json(path, "status.json", {"status": "finished"})
    run_dir.write_json(path, "result.json", {"updates": 3})
    (tmp_path / "a.log.txt").write_text("StoppedAfterFinish: stopped (SIGTERM) after ...\n")
    job = types.SimpleNamespace(spec=types.SimpleNamespace(name="a"), run_dir=path)
    outcome = outcomes.collect(job, -1, 0.5)
    assert outcome.status == "finished" and outcome.result == {"updates": 3}


@pytest.mark.parametrize("error, shown", [
    ("OSError: /runs/a/final.weights.h5: No space\n(, detail)",
     "OSError: /runs/a/final.weights.h5: No space"),
    ("Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: x",
     "ValueError: x"),
    ("    raise error\nMemoryError: Unable to allocate 3.2 GiB\n  File \"runner.py\", line 140, "
     "in run", "MemoryError: Unable to allocate 3.2 GiB"),  # a dead worker's last log lines
    ("exit status -9", "exit status -9"),
])
def test_a_progress_line_shows_the_errors_own_line(error, shown):
    outcome = outcomes.Outcome("a", "/runs/a", "failed", 1.0, error=error)
    assert outcomes._summary(outcome) == f" ({shown})"
