"""Runs a list of runs: in this process one after the other, or N at once in worker processes.

The one mechanism for sweeps and studies. A ``Job`` is a ``RunSpec`` with its exact run directory.
A failing run never stops the others: its error is caught (in process) or read back from its
``status.json`` / log (worker), and it comes back as an ``Outcome`` with status 'failed'.

With ``jobs`` > 1, N workers (``python main.py --worker``, see ``worker``) each train one run at a
time, fed by one thread here per worker; runs get ``train.verbose = 2`` (no progress bar, so no
terminal control codes) and their stdout/stderr in ``DIR/log.txt`` (written next to the run
directory while running, because the runner creates DIR itself, then moved in). The CPU threads
are split between the workers (``--intra_op_threads``, ``OMP_NUM_THREADS``): N processes that
each assume every core would fight over them. A worker that dies (a crash, not an exception)
fails its run and is replaced. The parent prints one line per finished run and the progress.
"""

import dataclasses
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Optional

from callbacks.checkpointing import TrainingInterrupted
from experiments.common import paths
from experiments.launch.worker import DONE_PREFIX

MAIN = os.path.join(paths.REPO_ROOT, "main.py")
CHILD_BINDINGS = ("train.verbose = 2",)


@dataclasses.dataclass(frozen=True)
class Job:
    """A ``grid.RunSpec`` and the exact directory its run gets (created by the runner)."""

    spec: object
    run_dir: str


@dataclasses.dataclass
class Outcome:
    """How one run ended: 'finished' (with its result dict) or 'failed' (with the error)."""

    name: str
    run_dir: str
    status: str
    seconds: float
    result: Optional[dict] = None
    error: Optional[str] = None


def execute(jobs, run_in_process, gin_files, base_bindings, num_jobs=1, print_fn=print):
    """Runs every job; returns their Outcomes in the jobs' order.

    ``run_in_process(job)`` trains one job here and returns its result dict (used when
    ``num_jobs`` is 1); workers parse ``gin_files`` and ``base_bindings`` then the job's.
    """
    if num_jobs > 1:
        return _run_workers(jobs, gin_files, base_bindings, num_jobs, print_fn)
    progress, outcomes = Progress(len(jobs), 1, print_fn), []
    for job in jobs:
        outcomes.append(_run_here(job, run_in_process))
        progress.report(outcomes[-1], 0)
    return outcomes


def _run_here(job, run_in_process):
    started = time.time()
    try:
        result = run_in_process(job)
    except TrainingInterrupted:  # a stop request (SIGINT/SIGTERM) stops the whole launch
        raise
    except Exception as error:  # one failing run must not stop the others
        return Outcome(job.spec.name, job.run_dir, "failed", time.time() - started,
                       error=f"{type(error).__name__}: {error}")
    return Outcome(job.spec.name, result.get("run_dir", job.run_dir), "finished",
                   time.time() - started, result=result)


def threads_per_job(num_jobs):
    """CPU threads each of ``num_jobs`` simultaneous runs may use (at least 1)."""
    return max(1, (os.cpu_count() or 1) // num_jobs)


def worker_command(gin_files, base_bindings, threads):
    """The command line of a worker process (see ``worker``)."""
    return ([sys.executable, MAIN, "--worker", f"--intra_op_threads={threads}"]
            + [f"--gin_file={f}" for f in gin_files]
            + [f"--gin_bindings={b}" for b in base_bindings])


def _worker_env(threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TF_NUM_INTRAOP_THREADS=str(threads),
               TF_NUM_INTEROP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (paths.REPO_ROOT, env.get("PYTHONPATH")) if p)
    return env


def _pending_log(run_dir):
    return f"{run_dir}.log.txt"


class _Pool:
    """Worker processes fed by one thread each from a shared queue of job positions."""

    def __init__(self, jobs, gin_files, base_bindings, num_jobs):
        self.jobs, self.threads = jobs, threads_per_job(num_jobs)
        self.command = worker_command(gin_files, base_bindings, self.threads)
        self.todo, self.done = queue.Queue(), queue.Queue()
        for position in range(len(jobs)):
            self.todo.put(position)
        self.processes, self.lock = [], threading.Lock()
        self.feeders = [threading.Thread(target=self._feed, daemon=True)
                        for _ in range(min(num_jobs, len(jobs)))]

    def _start_worker(self, job):
        errors = open(os.path.join(os.path.dirname(job.run_dir), ".workers.log"), "a")
        process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=errors, text=True, cwd=paths.REPO_ROOT,
                                   env=_worker_env(self.threads))
        errors.close()
        with self.lock:
            self.processes.append(process)
        return process

    def _feed(self):
        worker = None
        while True:
            try:
                position = self.todo.get_nowait()
            except queue.Empty:
                break
            job = self.jobs[position]
            os.makedirs(os.path.dirname(job.run_dir), exist_ok=True)
            if worker is None:
                worker = self._start_worker(job)
            started = time.time()
            message = {"bindings": list(job.spec.bindings) + list(CHILD_BINDINGS),
                       "run_dir": job.run_dir, "log": _pending_log(job.run_dir)}
            returncode = _send(worker, message)
            if returncode != 0:
                worker = None  # it died: the next job gets a fresh one
            self.done.put((position, collect(job, returncode, time.time() - started)))
        if worker is not None:
            worker.stdin.close()
            worker.wait()

    def run(self, on_outcome):
        for feeder in self.feeders:
            feeder.start()
        outcomes = {}
        previous = _stop_on_sigterm()
        try:
            while len(outcomes) < len(self.jobs):
                position, outcome = self.done.get()
                outcomes[position] = outcome
                on_outcome(outcome, min(len(self.feeders), len(self.jobs) - len(outcomes)))
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            _stop(self.processes, self.lock)
        return [outcomes[position] for position in range(len(self.jobs))]


def _stop(processes, lock, grace_seconds=30):
    """Asks the workers we started that still run to stop (SIGTERM: their run saves a checkpoint
    and says 'interrupted'), waits for them, kills any that do not end in time."""
    with lock:
        alive = [p for p in processes if p.poll() is None]
    for process in alive:
        process.terminate()
    for process in alive:
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stop_on_sigterm():
    """SIGTERM raises KeyboardInterrupt here (main thread only), so that the workers are stopped
    with us instead of finishing their run unattended; returns the previous handler or None."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, interrupt)


def _send(worker, message):
    """Sends one job to a worker and waits for it: 0 when it reported done, else its exit code."""
    try:
        worker.stdin.write(json.dumps(message) + "\n")
        worker.stdin.flush()
    except (BrokenPipeError, OSError):
        return worker.wait() or -1
    for line in worker.stdout:
        if line.startswith(DONE_PREFIX):
            return 0
    return worker.wait() or -1


def _run_workers(jobs, gin_files, base_bindings, num_jobs, print_fn):
    progress = Progress(len(jobs), num_jobs, print_fn)
    return _Pool(jobs, gin_files, base_bindings, num_jobs).run(progress.report)


def collect(job, returncode, seconds):
    """The Outcome of a finished child, from its run directory; moves its log in."""
    log_path = _move_log(job.run_dir)
    status = _read_json(os.path.join(job.run_dir, "status.json")) or {}
    if returncode == 0 and status.get("status") == "finished":
        result = _read_json(os.path.join(job.run_dir, "result.json"))
        return Outcome(job.spec.name, job.run_dir, "finished", seconds, result=result)
    error = status.get("error") or _last_lines(log_path) or f"exit status {returncode}"
    return Outcome(job.spec.name, job.run_dir, "failed", seconds, error=error)


def _move_log(run_dir):
    pending = _pending_log(run_dir)
    if not os.path.isdir(run_dir):  # the child failed before creating its run directory
        return pending
    target = os.path.join(run_dir, "log.txt")
    shutil.move(pending, target)
    return target


def _last_lines(path, count=5):
    """The end of a child's log: its error when it failed before writing a status."""
    try:
        with open(path, errors="replace") as handle:
            lines = [line.rstrip() for line in handle if line.strip()]
    except OSError:
        return None
    return "\n".join(lines[-count:]) or None


def _read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


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
        lines = (outcome.error or "").strip().splitlines()
        return f" ({lines[-1][:160]})" if lines else ""
    final = (outcome.result or {}).get("final_epoch") or {}
    shown = [f"{k}={final[k]:.4g}" for k in ("val_loss", "val_accuracy") if k in final]
    return f" ({', '.join(shown)})" if shown else ""
