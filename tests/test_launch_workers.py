"""What a ``--jobs`` launch says about its workers and their runs: a worker killed by a signal,
the metrics of a finished run, the runs in flight, a launch stopped while a worker starts, and
the flags a worker is started with.

The workers are a small Python script speaking the worker protocol (see
``test_study_executor``), so no test waits on a TensorFlow import."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types

import pytest

from callbacks.checkpointing import TrainingInterrupted
from experiments.launch import executor, grid, outcomes, spares, worker, worker_processes
from experiments.run import run_dir as run_dir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_WORKER = r'''
import json, os, signal, socket, sys, time, zipfile
if os.environ.get("FAKE_WORKER_SIGNAL_AT_START"):
    os.kill(os.getpid(), int(os.environ["FAKE_WORKER_SIGNAL_AT_START"]))
time.sleep(float(os.environ.get("FAKE_WORKER_READY_SECONDS", "0")))
print("BATCHLAB-WORKER-READY", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    os.makedirs(os.path.join(job["run_dir"], "checkpoints"))
    if os.path.basename(job["run_dir"]) == "oom":  # killed mid-run, as by the OOM killer
        with open(os.path.join(job["run_dir"], "status.json"), "w") as f:
            json.dump({"status": "running", "pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.time(), "heartbeat": time.time(), "update": 10500}, f)
        with zipfile.ZipFile(os.path.join(job["run_dir"], "checkpoints",
                                          "state-000010000.npz"), "w") as archive:
            archive.writestr("__meta__.npy", b"")  # what a whole checkpoint holds
        with open(job["log"], "w") as log:
            log.write("Epoch 246/1500\n45/45 - 0s - loss: 8.6e-05 - val_loss: 0.1174\n"
                      "Epoch 247/1500\n")
        os.kill(os.getpid(), signal.SIGKILL)
    with open(job["log"], "w") as log:
        log.write("worker log\n")
    with open(os.path.join(job["run_dir"], "result.json"), "w") as f:
        json.dump({"pid": os.getpid()}, f)
    with open(os.path.join(job["run_dir"], "status.json"), "w") as f:
        json.dump({"status": "finished"}, f)
    print("BATCHLAB-WORKER-DONE {}", flush=True)
'''


@pytest.fixture
def fake_workers(tmp_path, monkeypatch):
    """Workers are FAKE_WORKER; this process's slot trains for ``here_seconds[0]`` seconds."""
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    monkeypatch.setattr(spares, "worker_command",
                        lambda files, bindings, threads: [sys.executable, str(script)])
    here_seconds = [0.3]

    def run_here(gin_files, bindings, run_dir, log):
        time.sleep(here_seconds[0])
        os.makedirs(run_dir)
        with open(log, "w") as handle:
            handle.write("here log\n")
        with open(os.path.join(run_dir, "result.json"), "w") as handle:
            json.dump({"pid": os.getpid()}, handle)
        with open(os.path.join(run_dir, "status.json"), "w") as handle:
            json.dump({"status": "finished"}, handle)

    monkeypatch.setattr(worker, "run_job", run_here)
    return here_seconds


def jobs_for(tmp_path, names):
    return [executor.Job(grid.RunSpec(i, name, ()), str(tmp_path / "sweep" / name))
            for i, name in enumerate(names)]


def run(jobs, num_jobs=2):
    lines = []
    done = executor.execute(jobs, None, ["base.gin"], [], num_jobs, lines.append)
    executor.wait_for_workers()
    return done, lines


def test_a_worker_killed_by_sigkill_is_named_by_its_signal_not_its_last_log_lines(
        fake_workers, tmp_path):
    """An OOM-killed worker's log ends with an epoch line: the error names the signal and what
    the run directory says (interrupted, resumable from its checkpoint)."""
    fake_workers[0] = 1.0  # this slot takes "b" at once; the worker (ready at once) "oom"
    done, lines = run(jobs_for(tmp_path, ["b", "oom"]))
    killed = done[1]
    assert killed.status == "failed"  # listed by the table, sweep.json and the exit status
    assert "worker killed by SIGKILL (signal 9" in killed.error
    assert "resumable from its checkpoint at update 10000" in killed.error
    assert "Epoch" not in killed.error
    assert run_dir_lib.effective_status(killed.run_dir) == "interrupted"
    line = next(line for line in lines if " oom: " in line)
    assert "(worker killed by SIGKILL (signal 9" in line and "Epoch" not in line
    assert done[0].status == "finished"


def _job(path):
    return types.SimpleNamespace(spec=types.SimpleNamespace(name="r"), run_dir=str(path))


def test_a_killed_workers_run_is_described_from_its_directory(tmp_path):
    path = tmp_path / "r"
    pending = tmp_path / "r.log.txt"
    pending.write_text("Epoch 3/10\n")
    error = outcomes.collect(_job(path), -9, 1.0).error  # before its directory existed
    assert error.startswith("worker killed by SIGKILL") and "before its run directory" in error
    path.mkdir()
    run_dir_lib.write_json(str(path), "status.json", {"status": "running", "pid": 2 ** 22 + 7,
                                                      "host": socket.gethostname()})
    pending.write_text("Epoch 3/10\n")
    error = outcomes.collect(_job(path), -signal.SIGTERM, 1.0).error
    assert error.startswith("worker killed by SIGTERM (signal 15)")
    assert "before its first checkpoint" in error and "Epoch" not in error
    pending.write_text("Traceback...\nSystemError: bad\n")
    run_dir_lib.write_json(str(path), "status.json", {"status": "failed"})
    assert outcomes.collect(_job(path), 1, 1.0).error.endswith("SystemError: bad")  # as before


def test_a_worker_that_ended_without_a_word_is_not_read_as_a_signal(tmp_path):
    """``send`` says a worker that exited 0 without "done" in a way no signal is read as."""
    (tmp_path / "r.log.txt").write_text("")
    error = outcomes.collect(_job(tmp_path / "r"), outcomes.UNANSWERED, 1.0).error
    assert error == "the worker ended without reporting on this run"


def test_the_finish_line_shows_the_metrics_the_run_ended_with():
    """EarlyStopping(restore_best_weights=True): the final validation (the table's and --list's
    val loss), not the last epoch's logs."""
    lines = []
    result = {"final_epoch": {"val_loss": 2.3463, "val_accuracy": 0.117, "loss": 2.35},
              "final_validation": {"loss": 2.3230, "accuracy": 0.0919}}
    outcomes.Progress(1, 1, lines.append).report(
        outcomes.Outcome("es", "/runs/es", "finished", 2.4, result=result), 0)
    assert "(val_loss=2.323, val_accuracy=0.0919)" in lines[0]
    lines.clear()  # a result without a final validation: the last epoch's, as before
    outcomes.Progress(1, 1, lines.append).report(outcomes.Outcome(
        "a", "/runs/a", "finished", 1.0, result={"final_epoch": {"val_loss": 0.5}}), 0)
    assert "(val_loss=0.5)" in lines[0]


def test_running_counts_runs_being_trained_not_worker_slots(fake_workers, tmp_path, monkeypatch):
    """The worker is still starting while this process's slot trains every run: nothing else
    is in flight when each of them finishes."""
    monkeypatch.setenv("FAKE_WORKER_READY_SECONDS", "3")
    done, lines = run(jobs_for(tmp_path, ["a", "b", "c"]))
    assert [o.status for o in done] == ["finished"] * 3
    assert len(lines) == 3 and all(", running 0," in line for line in lines), lines


def test_a_stopped_launch_does_not_report_its_starting_workers_exit(
        fake_workers, tmp_path, monkeypatch):
    """A SIGTERM (or Ctrl-C) stops the launch while its worker imports: the launch stops that
    worker itself, and "one slot fewer" is no news then."""
    monkeypatch.setenv("FAKE_WORKER_READY_SECONDS", "30")

    def stopped(*args):
        time.sleep(0.5)  # the worker has started
        raise TrainingInterrupted(signal.SIGTERM, 3)

    monkeypatch.setattr(worker, "run_job", stopped)
    lines = []
    pool = executor._Pool(jobs_for(tmp_path, ["a", "b"]), ["base.gin"], [], 2, lines.append)
    with pytest.raises(worker_processes.LaunchStopped):
        pool.run()
    for feeder in pool.feeders:
        feeder.join(timeout=10)
    assert not any(feeder.is_alive() for feeder in pool.feeders)
    assert [w.process.returncode for w in pool.workers] == [-signal.SIGTERM]
    assert not [line for line in lines if "before it was ready" in line]


def test_a_worker_killed_alone_while_starting_is_still_reported(
        fake_workers, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_SIGNAL_AT_START", str(int(signal.SIGTERM)))
    done, lines = run(jobs_for(tmp_path, ["a", "b"]))
    assert [o.status for o in done] == ["finished"] * 2
    assert any("exited with status -15 before it was ready" in line for line in lines)


SHOW_COMMAND = """
from absl import app, logging  # as main.py (absl.logging defines its flags)
from experiments.launch import spares
app.run(lambda argv: print("\\n".join(spares.worker_command(["a.gin"], ["train.epochs = 1"],
                                                             2))))
"""


@pytest.mark.parametrize("given, forwarded", [
    (["-v", "1", "--alsologtostderr", "--log_dir=/tmp/logs", "--noshowprefixforinfo"],
     ["--verbosity=1", "--alsologtostderr", "--log_dir=/tmp/logs", "--noshowprefixforinfo"]),
    (["--verbosity=-1", "--logtostderr", "--stderrthreshold=error"],
     ["--verbosity=-1", "--logtostderr", "--stderrthreshold=error"]),
    ([], []),
])
def test_workers_get_the_absl_logging_flags_the_user_gave(given, forwarded):
    """A fresh process, as ``main.py`` parses its flags (this one's FLAGS are left alone): what
    absl's app.run sets itself (the verbosity) is not the user's."""
    command = subprocess.run([sys.executable, "-c", SHOW_COMMAND] + given, cwd=REPO, check=True,
                             capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=REPO)).stdout.splitlines()
    assert command[2:4] == ["--worker", "--intra_op_threads=2"]
    assert command[4:-2] == forwarded
    assert command[-2:] == ["--gin_file=a.gin", "--gin_bindings=train.epochs = 1"]
