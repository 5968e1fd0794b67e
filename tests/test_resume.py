"""Runs that survive: SIGKILL or SIGTERM at an arbitrary update, relaunch, identical results.

Every case trains through ``main.py`` in a child process, as a user or a cluster would, and
compares the final ``result.json`` metrics of the interrupted-then-relaunched run with those of an
uninterrupted run of the same command (``train.deterministic_ops = True``: bit-identical).
"""

import errno
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from experiments import launch
from experiments.run import checkpoints, run_dir, runner
from experiments.run.checkpoints import CheckpointStore, Position
from tests.helpers import saved_at_least

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


def _command(output, name, experiment, extra=()):
    return [sys.executable, "main.py", *experiment, *COMMON, *extra, f"--output_dir={output}",
            f"--run_name={name}"]


def _run(output, name, experiment, extra=()):
    process = subprocess.run(_command(output, name, experiment, extra), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    return process


def _start_and_stop(output, name, experiment, at_checkpoint, sig=signal.SIGKILL, extra=()):
    """Starts a run and sends ``sig`` once a checkpoint of update ``at_checkpoint`` or later is
    written (the run resumes from there or, killed during a later write, a later one)."""
    process = subprocess.Popen(_command(output, name, experiment, extra), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoints = os.path.join(output, "*", name, "checkpoints")
    deadline = time.time() + 240
    while not any(saved_at_least(c, at_checkpoint) for c in glob.glob(checkpoints)):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline, "the run never wrote the checkpoint"
        time.sleep(0.01)
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
@pytest.mark.parametrize("kind, experiment, epoch", [("arrays", ARRAYS, 2), ("arrays", ARRAYS, 3),
                                                     ("streams", STREAMS, 1)])
def test_a_kill_right_after_an_epochs_last_update_resumes_exactly(tmp_path, reference, kind,
                                                                  experiment, epoch):
    """A checkpoint at an epoch's last update (every epoch's length), killed there: the epoch's
    sums and stateful states belong to that epoch, not the next, and its end (logs, validation,
    epoch-end measurements) still runs; after the last epoch's, the whole result.json."""
    per_epoch = reference[kind]["updates"] // {"arrays": 3, "streams": 2}[kind]
    extra = [f"--gin_bindings=checkpoints.every_n_updates = {per_epoch}"]
    output = str(tmp_path)
    code, _ = _start_and_stop(output, "run", experiment, per_epoch * epoch, extra=extra)
    assert code == -signal.SIGKILL
    _run(output, "run", experiment, extra)
    result = _result(output, "run")
    (resumed,) = result["resumed_at_updates"]  # checkpoints only at epoch ends
    assert resumed >= per_epoch * epoch and resumed % per_epoch == 0
    assert _metrics(result) == reference[kind]


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
    result = _result(output, "run")
    assert _metrics(result) == reference["arrays"]
    # the wall time counts the first process up to its checkpoint, as the train time does (it
    # was the last process's alone: 3 s of wall time against 8 s of training)
    assert result["wall_time_s"] >= result["train_time_s"]


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
    elsewhere = dict(status, host=status["host"] + "-another", heartbeat=time.time() - 3600)
    run_dir.write_json(path, "status.json", elsewhere)
    assert run_dir.effective_status(path) == "interrupted"  # another host: the heartbeat decides
    run_dir.write_json(path, "status.json", dict(elsewhere, heartbeat=time.time()))
    assert run_dir.effective_status(path) == "running"
    run_dir.write_json(path, "status.json", run_dir.running_status())  # this live process
    assert run_dir.effective_status(path) == "running"
    # A live process whose last heartbeat is old (a long validation, a slow call): still
    # running, so that a relaunch does not train the same run beside it.
    run_dir.write_json(path, "status.json", dict(status, heartbeat=time.time() - 3600))
    assert run_dir.effective_status(path) == "running"
    # A pid that a later process took (it started after the run): not the run's process.
    run_dir.write_json(path, "status.json", dict(status, started=time.time() - 10 * 86400))
    assert run_dir.effective_status(path) == "interrupted"


def test_a_damaged_status_reads_as_what_the_run_directory_holds(tmp_path):
    """status.json emptied (a crash while it was written): a batchlab run directory (config.gin)
    reads as interrupted, so a relaunch resumes from its checkpoints, or as finished with a
    readable result.json; it read as 'missing', refused as "not made by batchlab"."""
    path = str(tmp_path)
    (tmp_path / "status.json").write_text("")
    assert run_dir.effective_status(path) == "missing"  # no config.gin: not batchlab's
    (tmp_path / "config.gin").write_text("train.batch_size = 8\n")
    assert run_dir.effective_status(path) == "interrupted"
    (tmp_path / "result.json").write_text('{"updates": 3')  # cut short too
    assert run_dir.effective_status(path) == "interrupted"
    run_dir.write_json(path, "result.json", {"updates": 3})
    assert run_dir.effective_status(path) == "finished"


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


class _FullDisk:
    """``json`` for ``run_dir`` and ``np.savez`` for checkpoints that fail with ENOSPC once the
    disk is full (from the ``full_from``-th checkpoint on), after creating their file."""

    def __init__(self, full_from, status_too):
        self.saves, self.full_from, self.status_too = 0, full_from, status_too
        self._savez = np.savez

    @property
    def full(self):
        return self.saves >= self.full_from

    def savez(self, handle, **arrays):
        self.saves += 1
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device (checkpoint)")
        return self._savez(handle, **arrays)

    def dump(self, payload, handle, **kwargs):
        if self.full and self.status_too:
            raise OSError(errno.ENOSPC, "No space left on device (status)")
        return json.dump(payload, handle, **kwargs)


@pytest.mark.parametrize("status_too", [False, True])
def test_a_full_disk_shows_its_own_error_and_leaves_no_partial_files(tmp_path, monkeypatch,
                                                                     status_too):
    disk = _FullDisk(full_from=3, status_too=status_too)
    monkeypatch.setattr(checkpoints.np, "savez", disk.savez)
    monkeypatch.setattr(run_dir, "json", types.SimpleNamespace(dump=disk.dump, load=json.load))
    launch.parse(["gin/experiments/digits_mlp.gin"], [
        "train.epochs = 1", "train.verbose = 0", "checkpoints.every_n_updates = 10"])
    with pytest.raises(OSError, match="No space left on device") as raised:
        runner.train(output_dir=str(tmp_path), experiment="full", run_name="run",
                     resumable=True)
    # The checkpoint's error, not the status write's that came after it.
    assert "(checkpoint)" in str(raised.value) and "(status)" not in str(raised.value)
    path = os.path.join(str(tmp_path), "full", "run")
    assert not [f for f in os.listdir(path) if ".tmp" in f]
    assert not glob.glob(os.path.join(path, "checkpoints", "*.tmp-*"))
    assert len(glob.glob(os.path.join(path, "checkpoints", "state-*.npz"))) == 2  # kept
    status = run_dir.read_status(path)
    if status_too:  # nothing could be written: the last status stands
        assert status["status"] == "running"
    else:
        assert status["status"] == "failed" and "No space left" in status["error"]


def _scalar_points(run_path):
    """Every (split, tag, step) of the run's TensorBoard scalars, with repeats."""
    from tensorboard.backend.event_processing import event_file_loader  # noqa: PLC0415

    points = []
    for path in glob.glob(os.path.join(run_path, "tensorboard", "*", "events.out.tfevents.*")):
        split = os.path.basename(os.path.dirname(path))
        for event in event_file_loader.EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name in ("scalars", ""):
                    points.append((split, value.tag, event.step))
    return points


@pytest.mark.slow
def test_a_restart_from_zero_logs_no_point_twice(tmp_path, reference):
    """Every checkpoint unreadable: the relaunch trains from update 0 in the same directory; each
    (tag, step) is in the event files once."""
    output = str(tmp_path)
    _start_and_stop(output, "run", ARRAYS, 10)
    (path,) = glob.glob(os.path.join(output, "*", "run"))
    for checkpoint in glob.glob(os.path.join(path, "checkpoints", "state-*.npz")):
        with open(checkpoint, "r+b") as handle:
            handle.truncate(100)
    _run(output, "run", ARRAYS)
    points = _scalar_points(path)
    assert len(points) > 100
    repeated = sorted({p for p in points if points.count(p) > 1})
    assert not repeated, repeated[:10]
    assert _metrics(_result(output, "run")) == reference["arrays"]


@pytest.mark.slow
def test_a_relaunch_on_changed_data_is_refused_with_what_changed(tmp_path):
    """Killed at update 10, the data file rewritten (3000 rows -> 1499, labels flipped): the
    relaunch refuses to resume on it, names what changed, and leaves the run resumable."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 64)).astype(np.float32)
    y = np.argmax(x[:, :10], axis=1).astype(np.int64)
    data_file = tmp_path / "rows.npz"
    np.savez(data_file, x=x, y=y)
    experiment = ["--gin_file=gin/experiments/digits_mlp.gin",
                  "--gin_bindings=train.data_fn = @npz_file",
                  f"--gin_bindings=npz_file.path = '{data_file}'",
                  "--gin_bindings=train.epochs = 3", "--gin_bindings=train.batch_size = 64",
                  "--gin_bindings=measurements.enabled = []"]
    output = str(tmp_path / "o")
    _start_and_stop(output, "run", experiment, 10)
    (path,) = glob.glob(os.path.join(output, "*", "run"))
    before = run_dir.read_status(path)
    np.savez(data_file, x=x[:1499], y=9 - y[:1499])
    refused = subprocess.run(_command(output, "run", experiment), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert "trained on other data" in refused.stderr
    assert re.search(r"train: 2400 -> 1\d{3} rows", refused.stderr)  # 80% of the rows train
    assert run_dir.effective_status(path) == "interrupted"  # nothing lost: still resumable
    assert run_dir.read_status(path) == before  # its record (reason, update) as it was
    np.savez(data_file, x=x, y=y)
    _run(output, "run", experiment)
    assert _result(output, "run")["resumed_at_updates"][0] >= 10


@pytest.mark.slow
def test_a_sweep_resumes_by_name(tmp_path):
    """SIGKILL during variant b of a sweep launched with --run_name=s; the same command again
    finishes it in the same directory: a kept (not retrained), b resumed from its checkpoint."""
    sweep = ["--gin_file=gin/experiments/digits_mlp.gin", "--gin_bindings=train.epochs = 3",
             "--gin_bindings=measurements.enabled = []",
             "--gin_bindings=sweep.variants = {'a': ['train.batch_size = 64'], "
             "'b': ['train.batch_size = 32']}"]
    output = str(tmp_path)
    command = [sys.executable, "main.py", *sweep, *COMMON, f"--output_dir={output}",
               "--run_name=s"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    checkpoints = os.path.join(output, "digits_mlp", "s", "b", "checkpoints")
    deadline = time.time() + 240
    while not saved_at_least(checkpoints, 10):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline, "variant b never wrote its checkpoint"
        time.sleep(0.02)
    process.kill()
    process.communicate(timeout=60)
    finished_a = os.path.getmtime(os.path.join(output, "digits_mlp", "s", "a", "result.json"))
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(os.listdir(os.path.join(output, "digits_mlp"))) == ["s"]  # no s-1
    group = os.path.join(output, "digits_mlp", "s")
    assert os.path.getmtime(os.path.join(group, "a", "result.json")) == finished_a
    with open(os.path.join(group, "b", "result.json")) as handle:
        resumed = json.load(handle)
    assert resumed["resumed_at_updates"][0] >= 10
    assert (resumed["experiment"], resumed["group"]) == ("digits_mlp", "s")
    with open(os.path.join(group, "sweep.json")) as handle:
        assert json.load(handle)["status"] == {"a": "finished", "b": "finished"}
    assert "1 variant(s) already finished" in again.stdout


def test_the_stop_message_says_how_to_resume_named_and_unnamed_runs():
    """A named run (or one given its directory) resumes by relaunching the same command; an
    unnamed one would start afresh there, so the message points at --resume instead."""
    import main  # noqa: PLC0415  (the entry point's flags are defined on import)

    for given in (("mine", None, None), (None, "runs/x/y", None), (None, None, "runs/x/y")):
        assert main._resume_hint(*given) == "relaunch the same command to resume"
    unnamed = main._resume_hint(None, None, None)
    assert "--resume=RUN_DIR" in unnamed and "relaunch the same command to resume" not in unnamed
    assert "a sweep or study by relaunching the same command with --run_name=" in unnamed


class _SignalAtTrainEnd:
    """A callback sending this process SIGTERM once training has ended (its last validation and
    the run's reports still to come)."""

    def __new__(cls):
        import keras  # noqa: PLC0415

        class SignalAtTrainEnd(keras.callbacks.Callback):
            def on_train_end(self, logs=None):
                os.kill(os.getpid(), signal.SIGTERM)

        return SignalAtTrainEnd()


def test_a_stop_signal_after_the_last_update_finishes_the_run_and_stops_the_sweep(tmp_path):
    """SIGTERM after the last update was dropped: the process exited 0 and a sweep trained its
    next variants. Now the run finishes (result.json, status 'finished') and the launch stops
    with the signal, before the next variant."""
    import gin  # noqa: PLC0415

    from callbacks.checkpointing import StoppedAfterFinish, TrainingInterrupted  # noqa: PLC0415

    gin.external_configurable(_SignalAtTrainEnd, "signal_at_train_end")
    sweep = tmp_path / "two.gin"
    sweep.write_text("include 'gin/experiments/digits_mlp.gin'\n"
                     "sweep.variants = {'a': ['train.batch_size = 64'],\n"
                     "                  'b': ['train.batch_size = 128']}\n")
    with pytest.raises(StoppedAfterFinish) as stopped:
        launch.launch([str(sweep)], ["train.epochs = 1", "train.verbose = 0",
                                     "measurements.enabled = []",
                                     "train.extra_callbacks = [@signal_at_train_end()]"],
                      output_dir=str(tmp_path / "runs"), print_fn=lambda *_: None)
    assert isinstance(stopped.value, TrainingInterrupted)  # main.py exits 128 + the signal
    assert stopped.value.reason == signal.SIGTERM
    (finished,) = glob.glob(str(tmp_path / "runs" / "two" / "*" / "a" / "result.json"))
    assert run_dir.read_status(os.path.dirname(finished))["status"] == "finished"
    assert not glob.glob(str(tmp_path / "runs" / "two" / "*" / "b"))  # the sweep stopped
