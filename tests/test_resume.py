"""Runs that survive: SIGKILL or SIGTERM at an arbitrary update, relaunch, identical results.

Every case trains through ``main.py`` in a child process, as a user or a cluster would, and
compares the final ``result.json`` metrics of the interrupted-then-relaunched run with those of an
uninterrupted run of the same command (``train.deterministic_ops = True``: bit-identical).
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments.run import run_dir
from experiments.run.checkpoints import CheckpointStore, Position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARRAYS = ["--gin_file=gin/experiments/measure_digits.gin", "--gin_bindings=train.epochs = 3",
          "--gin_bindings=measurements.every_n_updates = 3"]
STREAMS = ["--gin_file=gin/experiments/char_lm.gin", "--gin_bindings=train.epochs = 2",
           "--gin_bindings=stream_text.max_characters = 20000", "--gin_bindings=NUM_STREAMS = 8",
           "--gin_bindings=stream_layout.window_length = 25",
           "--gin_bindings=stream_layout.num_micro_batches = 2",
           "--gin_bindings=stateful_stacked_lstm.units = (16,)"]
COMMON = ["--gin_bindings=train.verbose = 0", "--gin_bindings=train.deterministic_ops = True",
          "--gin_bindings=checkpoints.every_n_updates = 5"]


def _command(output, name, experiment):
    return [sys.executable, "main.py", *experiment, *COMMON, f"--output_dir={output}",
            f"--run_name={name}"]


def _run(output, name, experiment):
    process = subprocess.run(_command(output, name, experiment), cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    return process


def _start_and_stop(output, name, experiment, at_checkpoint, sig=signal.SIGKILL):
    """Starts a run and sends ``sig`` once checkpoint ``at_checkpoint`` (an update) is written."""
    process = subprocess.Popen(_command(output, name, experiment), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pattern = os.path.join(output, "*", name, "checkpoints", f"state-{at_checkpoint:09d}.npz")
    deadline = time.time() + 240
    while not glob.glob(pattern):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline, "the run never wrote the checkpoint"
        time.sleep(0.02)
    process.send_signal(sig)
    _, errors = process.communicate(timeout=120)
    return process.returncode, errors


def _result(output, name):
    (path,) = glob.glob(os.path.join(output, "*", name, "result.json"))
    with open(path) as handle:
        return json.load(handle)


def _metrics(result):
    """Every final metric and measurement (not times, rates or memory)."""
    out = {"updates": result["updates"]}
    for section in ("final_epoch", "final_validation", "measurements"):
        for key, value in result[section].items():
            if not any(word in key for word in ("time", "seconds", "per_sec", "memory")):
                out[f"{section}.{key}"] = value
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, one per data kind."""
    output = str(tmp_path_factory.mktemp("reference"))
    _run(output, "arrays", ARRAYS)
    _run(output, "streams", STREAMS)
    return {"arrays": _metrics(_result(output, "arrays")),
            "streams": _metrics(_result(output, "streams"))}


@pytest.mark.slow
@pytest.mark.parametrize("kind, experiment, at", [("arrays", ARRAYS, 5), ("arrays", ARRAYS, 30),
                                                  ("streams", STREAMS, 20)])
def test_sigkill_then_relaunch_gives_the_uninterrupted_metrics(tmp_path, reference, kind,
                                                               experiment, at):
    output = str(tmp_path)
    code, _ = _start_and_stop(output, "run", experiment, at)
    assert code == -signal.SIGKILL
    (path,) = glob.glob(os.path.join(output, "*", "run"))
    assert run_dir.read_status(path)["status"] == "running"  # what a kill leaves...
    assert run_dir.effective_status(path) == "interrupted"  # ...is read as interrupted
    _run(output, "run", experiment)
    result = _result(output, "run")
    assert result["resumed_at_updates"] and result["resumed_at_updates"][0] >= at
    assert _metrics(result) == reference[kind]
    assert len(glob.glob(os.path.join(path, "checkpoints", "state-*.npz"))) <= 2  # keep = 2


@pytest.mark.slow
def test_sigterm_saves_marks_interrupted_and_resumes(tmp_path, reference):
    output = str(tmp_path)
    code, errors = _start_and_stop(output, "run", ARRAYS, 10, signal.SIGTERM)
    assert code == 143, errors[-2000:]
    assert "relaunch the same command to resume" in errors
    (path,) = glob.glob(os.path.join(output, "*", "run"))
    status = run_dir.read_status(path)
    assert status["status"] == "interrupted" and status["reason"] == "SIGTERM"
    saved = CheckpointStore(os.path.join(path, "checkpoints")).latest_meta()
    assert saved[1].update == status["update"] >= 10  # saved at the update it stopped after
    _run(output, "run", ARRAYS)
    assert _metrics(_result(output, "run")) == reference["arrays"]


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, reference):
    output = str(tmp_path)
    _start_and_stop(output, "run", ARRAYS, 15)
    (path,) = glob.glob(os.path.join(output, "*", "run"))
    store = CheckpointStore(os.path.join(path, "checkpoints"))
    newest = store.paths()[0]
    with open(newest, "r+b") as handle:  # a write cut short
        handle.truncate(os.path.getsize(newest) // 2)
    open(newest + ".tmp-12345", "wb").write(b"partial")  # a kill during a write
    process = _run(output, "run", ARRAYS)
    assert "cannot be read" in process.stderr and "using the previous one" in process.stderr
    assert not glob.glob(os.path.join(path, "checkpoints", "*.tmp-*"))
    assert _metrics(_result(output, "run")) == reference["arrays"]


@pytest.mark.slow
def test_finished_runs_are_never_overwritten_and_other_configs_are_refused(tmp_path):
    output = str(tmp_path)
    small = ARRAYS + ["--gin_bindings=train.epochs = 1"]
    _start_and_stop(output, "run", small, 5)
    changed = subprocess.run(_command(output, "run", small) + [
        "--gin_bindings=train.batch_size = 64"], cwd=REPO, capture_output=True, text=True)
    assert changed.returncode != 0
    assert "another configuration" in changed.stderr and "+train.batch_size = 64" in changed.stderr
    _run(output, "run", small)
    again = subprocess.run(_command(output, "run", small), cwd=REPO, capture_output=True,
                           text=True)
    assert again.returncode != 0 and "is finished; it is never overwritten" in again.stderr


def test_a_stale_running_status_reads_as_interrupted(tmp_path):
    path = str(tmp_path)
    status = run_dir.running_status()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir.write_json(path, "status.json", dict(status, pid=dead.pid))  # process gone
    assert run_dir.effective_status(path) == "interrupted"
    run_dir.write_json(path, "status.json", dict(status, heartbeat=time.time() - 3600))
    assert run_dir.effective_status(path) == "interrupted"  # heartbeat stale (another host too)
    run_dir.write_json(path, "status.json", run_dir.running_status())  # this live process
    assert run_dir.effective_status(path) == "running"


def test_checkpoint_store_is_atomic_keeps_k_and_checks_the_model(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=2)
    names = ["model/w", "optimizer/iteration"]
    for update in (3, 6, 9):
        store.save(names, [np.full((2, 2), update, np.float32), np.int64(update)],
                   Position(0, update, update), {"train_time_s": 1.0})
    assert [os.path.basename(p) for p in store.paths()] == ["state-000000009.npz",
                                                             "state-000000006.npz"]
    path, position, bookkeeping = store.latest_meta()
    assert position == Position(0, 9, 9) and bookkeeping == {"train_time_s": 1.0}
    np.testing.assert_array_equal(store.load(path, names)[0], np.full((2, 2), 9))
    with pytest.raises(ValueError, match="another model"):
        store.load(path, ["model/other"])
