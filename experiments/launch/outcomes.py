"""How runs ended, as the executor reports them: an ``Outcome`` per run and one line per run.

A run trained in a worker process is read back from its run directory (``collect``): its
``status.json`` and ``result.json``, or the end of its log when it failed before writing a status.
A worker killed by a signal (the OOM killer, ``kill -9``) is named by its signal, and its run by
what its directory says (interrupted, resumable from its checkpoint), not by its last log lines.
Its log is written next to the run directory while it runs (``pending_log``: the runner creates the
directory itself) and moved in afterwards.
"""

import dataclasses
import os
import shutil
import signal
import sys
import threading
import time
from typing import Optional

from experiments.common.json_files import read_json
from experiments.run import run_dir as run_dir_lib


@dataclasses.dataclass
class Outcome:
    """How one run ended: 'finished' (with its result dict) or 'failed' (with the error)."""

    name: str
    run_dir: str
    status: str
    seconds: float
    result: Optional[dict] = None
    error: Optional[str] = None


def pending_log(run_dir):
    """Where a run's log is written while it runs (its directory may not exist yet)."""
    return f"{run_dir}.log.txt"


# What ``WorkerProcess.send`` returns for a worker that exited with status 0 without saying
# "done" (a stop signal between updates): no exit status, and not a signal (-1 is SIGHUP's).
UNANSWERED = 256


def collect(job, returncode, seconds):
    """The Outcome of a finished child, from its run directory; moves its log in."""
    status = read_json(os.path.join(job.run_dir, "status.json")) or {}
    if run_dir_lib.is_alive(status):
        # The job has ended, yet its run is live: another launch took it after this one
        # checked. Reported, not failed; the refusal's log is not moved into that run.
        return Outcome(job.spec.name, job.run_dir, "running", seconds,
                       error="running in another launch")
    log_path = _move_log(job.run_dir)
    result = read_json(os.path.join(job.run_dir, "result.json"))
    if status.get("status") == "finished" and result is not None:
        # whatever the worker's exit (a stop signal after the last update ends it without its
        # "done": the run finished all the same)
        return Outcome(job.spec.name, job.run_dir, "finished", seconds, result=result)
    if status.get("status") == "interrupted":  # stopped by a signal, checkpoint saved
        return Outcome(job.spec.name, job.run_dir, "interrupted", seconds,
                       error=f"{status.get('reason', 'stopped')} after update "
                             f"{status.get('update')}; resumable")
    if returncode is not None and returncode < 0:
        # Killed without a word (SIGKILL from the OOM killer or a user): the log ends with
        # whatever the run printed last (an epoch line), which says nothing of why it ended.
        error = _killed(job.run_dir, -returncode, status)
    else:
        ended = ("the worker ended without reporting on this run" if returncode == UNANSWERED
                 else f"exit status {returncode}")
        error = (status.get("error") or _failure_line(log_path) or _last_lines(log_path)
                 or ended)
    # Still 'failed' (not 'interrupted'): the launcher's table, sweep.json's errors and the exit
    # status list failed runs only, and a killed worker must not pass unnoticed there.
    return Outcome(job.spec.name, job.run_dir, "failed", seconds, error=error)


def _signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _killed(run_dir, signum, status):
    """The error of a run whose worker was killed by ``signum``: the signal, and what the run
    directory says of the run (``run_dir.effective_status``)."""
    killed = f"worker killed by {_signal_name(signum)} (signal {signum}"
    killed += "; out of memory?)" if signum == signal.SIGKILL else ")"
    if not os.path.isdir(run_dir):
        return f"{killed} before its run directory existed; a relaunch trains it"
    state = run_dir_lib.effective_status(run_dir)
    if state == "failed":
        return f"{killed}; the run had failed: {status.get('error') or 'no error recorded'}"
    if state != "interrupted":
        return f"{killed}; the run directory reads {state}"
    update = run_dir_lib.newest_checkpoint_update(run_dir)
    if update is None:
        return (f"{killed} before its first checkpoint; the run reads interrupted: relaunch "
                "with the same --run_name to train it again")
    return (f"{killed}; the run is resumable from its checkpoint at update {update}: relaunch "
            "with the same --run_name")


def _move_log(run_dir):
    pending = pending_log(run_dir)
    if not os.path.isdir(run_dir):  # the child failed before creating its run directory
        return pending
    target = os.path.join(run_dir, "log.txt")
    if not os.path.exists(target):
        shutil.move(pending, target)
        return target
    # A run resumed in place keeps what its earlier attempts logged: this one is appended.
    with open(target, "a", errors="replace") as out, open(pending, errors="replace") as new:
        out.write("\n--- the run resumed in a new process: its log from here ---\n")
        shutil.copyfileobj(new, out)
    os.remove(pending)
    return target


# The last line a worker writes into a run's log when the run raised (``worker.run_job``).
FAILED_PREFIX = "batchlab: the run failed: "


def _failure_line(path):
    """The error a worker named at the end of the log (``FAILED_PREFIX``), or None."""
    try:
        with open(path, errors="replace") as handle:
            found = [line.rstrip()[len(FAILED_PREFIX):] for line in handle
                     if line.startswith(FAILED_PREFIX)]
    except OSError:
        return None
    return found[-1] if found else None


def _last_lines(path, count=5):
    """The end of a child's log: its error when it failed before writing a status."""
    try:
        with open(path, errors="replace") as handle:
            lines = [line.rstrip() for line in handle if line.strip()]
    except OSError:
        return None
    return "\n".join(lines[-count:]) or None


class Progress:
    """One line per finished run: its status, then done / running / failed and an ETA."""

    def __init__(self, total, num_jobs, print_fn):
        self.total, self.num_jobs, self.print_fn = total, num_jobs, print_fn
        self.started = time.time()
        self.done = self.failed = 0

    def report(self, outcome, running):
        self.done += 1
        self.failed += outcome.status == "failed"
        elapsed = time.time() - self.started
        left = self.total - self.done
        eta = elapsed / self.done * left
        what = _summary(outcome)
        self.print_fn(f"[{self.done}/{self.total}] {outcome.name}: {outcome.status} in "
                      f"{outcome.seconds:.1f}s{what} | done {self.done}, running {running}, "
                      f"failed {self.failed}, ETA {eta:.0f}s")


def _summary(outcome):
    if outcome.status != "finished":
        line = run_dir_lib.error_line(outcome.error)  # its "Type: message" line
        return f" ({line[:160]})" if line else ""
    # The weights the run ended with (``final_validation``: after EarlyStopping restored its
    # best), as the table and --list show them; the last epoch's logs only where it has none.
    result = outcome.result or {}
    final = dict(result.get("final_epoch") or {})
    final.update({f"val_{k}": v for k, v in (result.get("final_validation") or {}).items()})
    shown = [f"{k}={final[k]:.4g}" for k in ("val_loss", "val_accuracy") if k in final]
    return f" ({', '.join(shown)})" if shown else ""


def unredirected(print_fn):
    """(print_fn, stream to close): when ``print_fn`` is ``print``, lines go to the stdout this
    process has now, even while a run here has file descriptors 1 and 2 pointed at its log."""
    if print_fn is not print:
        return print_fn, None
    try:
        sys.stdout.flush()
        stream = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    except (AttributeError, OSError, ValueError):  # no real file behind sys.stdout
        return print_fn, None

    def to_stream(*args, **kwargs):
        if not stream.closed:
            print(*args, **kwargs, file=stream, flush=True)

    return to_stream, stream


# Seconds between two progress lines while runs train (``BATCHLAB_PROGRESS_SECONDS``).
PROGRESS_SECONDS = 30.0


def progress_seconds():
    try:
        return max(0.1, float(os.environ.get("BATCHLAB_PROGRESS_SECONDS", PROGRESS_SECONDS)))
    except ValueError:
        return PROGRESS_SECONDS


class Ticker:
    """A line every ``progress_seconds()`` while runs train: each running run with its update
    (from its ``status.json`` heartbeat) and time so far, and how many are done. A study's
    runs print nothing of their own (their output goes to their logs), and a run can take an
    hour: this says that the launch is alive and where it is."""

    def __init__(self, total, print_fn, seconds=None):
        self.total, self.print_fn = total, print_fn
        self.seconds = seconds or progress_seconds()
        self.running, self.done = {}, 0
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(timeout=5)

    def started(self, job):
        with self.lock:
            self.running[job.run_dir] = (job.spec.name, time.time())

    def finished(self, job):
        with self.lock:
            self.running.pop(job.run_dir, None)
            self.done += 1

    def in_flight(self):
        """How many runs are being trained now (started, not finished)."""
        with self.lock:
            return len(self.running)

    def line(self):
        with self.lock:
            running, done = dict(self.running), self.done
        now, parts = time.time(), []
        for run_dir, (name, since) in running.items():
            update = read_json(os.path.join(run_dir, "status.json")) or {}
            where = (f"update {update['update']} at last heartbeat, "  # status.json: every 30 s
                     if "update" in update else "")
            parts.append(f"{name} ({where}{now - since:.0f}s)")
        return (f"[progress] done {done}/{self.total}; running {len(parts)}: "
                + (", ".join(parts) or "none"))

    def _loop(self):
        while not self.stopped.wait(self.seconds):
            try:
                self.print_fn(self.line())
            except Exception:  # noqa: BLE001  (a progress line must never stop a launch)
                pass
