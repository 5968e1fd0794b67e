"""Runs a list of runs: in this process one after the other, or N at once.

The one mechanism for sweeps and studies. A ``Job`` is a ``RunSpec`` with its exact run directory.
A failing run never stops the others: its error is caught (in process) or read back from its
``status.json`` / log (worker), and it comes back as an ``Outcome`` with status 'failed'.

With ``jobs`` = N > 1 there are N slots: this process trains runs itself (it has imported
TensorFlow already) and N - 1 workers (``python main.py --worker``, see ``worker``) each train one
run at a time, fed by one thread here per worker. A slot takes the next run only when it is free
(a worker once it says it is ready, after its TensorFlow import), longest runs first (``cost``),
so the slots end together. Runs get ``train.verbose = 2`` (no progress bar, so no terminal
control codes) and their stdout/stderr in ``DIR/log.txt`` (written next to the run directory
while running, because the runner creates DIR itself, then moved in). The CPU threads are split
between the slots (``--intra_op_threads``, ``OMP_NUM_THREADS``; ``main.py`` limits its own): N
processes that each assume every core would fight over them. ``main.py`` may start the workers
before it imports TensorFlow (``offer_spares``), so that their import runs beside its own. A
worker that dies (a crash, not an exception) fails its run and is replaced. The parent prints one
line per finished run and the progress.
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
from experiments.launch import spares, worker
from experiments.launch.worker import DONE_PREFIX, READY_PREFIX

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
    ``num_jobs`` is 1); workers parse ``gin_files`` and ``base_bindings`` then the job's, and so
    does this process's slot when ``num_jobs`` > 1.
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


def cost(spec):
    """A run's expected length, relative to the others: updates (epochs / B) times micro-batches
    per update; 0 when its hyperparameters do not say (sweeps keep their order)."""
    hparams = getattr(spec, "hparams", None) or {}
    batch, epochs = hparams.get("batch_size"), hparams.get("epochs")
    if not batch or not epochs:
        return 0.0
    micro = hparams.get("micro_batch_size") or batch
    return float(epochs) / min(batch, micro)


def dispatch_order(jobs):
    """Positions of ``jobs`` longest first (stable: equal costs keep the grid's order)."""
    return sorted(range(len(jobs)), key=lambda position: -cost(jobs[position].spec))


# Feeder threads still closing their worker after the last run (see wait_for_workers).
_CLOSING = []


def wait_for_workers():
    """Waits until every worker of the pools that ran has ended. A pool returns as soon as the
    last run's outcome is in, so that a worker's exit (about a second of TensorFlow shutdown)
    overlaps the caller's report; the caller waits here at its end, and no worker outlives it."""
    while _CLOSING:
        _CLOSING.pop().join()


def _pending_log(run_dir):
    return f"{run_dir}.log.txt"


class _Worker:
    """One worker process, its stdout read line by line, its stderr in a file."""

    def __init__(self, process, errors_path, spare_errors=None):
        self.process, self.errors_path, self.spare_errors = process, errors_path, spare_errors

    def wait_ready(self):
        """True once the worker says it is ready (imports done); False when it died first."""
        for line in self.process.stdout:
            if line.startswith(READY_PREFIX):
                return True
        return False

    def send(self, message):
        """Sends one job and waits for it: 0 when it reported done, else its exit code."""
        return _send(self.process, message)

    def close(self):
        spares.close(self.process)
        self.keep_errors()

    def keep_errors(self):
        """A spare's stderr (a temporary file until now) is appended to the study's log."""
        if self.spare_errors is None:
            return
        self.spare_errors.seek(0)
        text = self.spare_errors.read()
        self.spare_errors.close()
        self.spare_errors = None
        if text:
            with open(self.errors_path, "ab") as log:
                log.write(text)


class _Pool:
    """This process (one slot) and N - 1 worker processes, each fed by one thread, all taking
    job positions from a shared queue, longest first."""

    def __init__(self, jobs, gin_files, base_bindings, num_jobs, print_fn):
        self.jobs, self.threads = jobs, spares.threads_per_job(num_jobs)
        self.gin_files, self.base_bindings = list(gin_files), list(base_bindings)
        self.command = spares.worker_command(gin_files, base_bindings, self.threads)
        self.todo = queue.Queue()
        for position in dispatch_order(jobs):
            self.todo.put(position)
        self.outcomes, self.workers, self.lock = {}, [], threading.Lock()
        self.print_fn, self.stream = _unredirected(print_fn)
        self.progress = Progress(len(jobs), num_jobs, self.print_fn)
        self.slots = min(num_jobs, len(jobs))
        self.running, self.all_done = self.slots, threading.Event()
        self.feeders = [threading.Thread(target=self._feed, daemon=True)
                        for _ in range(self.slots - 1)]

    def _errors_path(self):
        directory = os.path.dirname(self.jobs[0].run_dir)
        os.makedirs(directory, exist_ok=True)
        return os.path.join(directory, ".workers.log")

    def _start_worker(self):
        """A worker main.py started early (``spares``), or a new one."""
        path = self._errors_path()
        spare = spares.take(self.threads)
        if spare is not None:
            child = _Worker(spare[0], path, spare[1])
        else:
            with open(path, "a") as errors:
                child = _Worker(spares.popen(self.command, self.threads, errors), path)
        with self.lock:
            self.workers.append(child)
        return child

    def _message(self, job):
        return {"gin_files": self.gin_files,
                "bindings": self.base_bindings + list(job.spec.bindings) + list(CHILD_BINDINGS),
                "run_dir": job.run_dir, "log": _pending_log(job.run_dir)}

    def _next(self):
        try:
            return self.todo.get_nowait()
        except queue.Empty:
            return None

    def _finish(self, position, outcome):
        with self.lock:
            self.outcomes[position] = outcome
            self.progress.report(outcome, min(self.running, len(self.jobs) - len(self.outcomes)))
            if len(self.outcomes) == len(self.jobs):
                self.all_done.set()

    def _feed(self):
        child = None
        try:
            while True:
                if child is None:
                    child = self._start_worker()
                    if not child.wait_ready():  # it died starting: the other slots go on
                        code = child.process.wait()
                        with self.lock:
                            self.print_fn(f"A worker exited with status {code} before it was "
                                          f"ready (see {child.errors_path}); one slot fewer.")
                        break
                position = self._next()
                if position is None:
                    break
                job = self.jobs[position]
                os.makedirs(os.path.dirname(job.run_dir), exist_ok=True)
                started = time.time()
                returncode = child.send(self._message(job))
                if returncode != 0:
                    child.close()
                    child = None  # it died: the next job gets a fresh one
                self._finish(position, collect(job, returncode, time.time() - started))
        finally:
            with self.lock:
                self.running -= 1
            if child is not None:
                child.close()

    def _serve_here(self):
        """This process's slot: trains jobs in process, like a worker, until none is left."""
        while True:
            position = self._next()
            if position is None:
                break
            job = self.jobs[position]
            os.makedirs(os.path.dirname(job.run_dir), exist_ok=True)
            message = self._message(job)
            started = time.time()
            try:
                worker.run_job(message["gin_files"], message["bindings"], message["run_dir"],
                               message["log"])
            except TrainingInterrupted as stopped:  # stop the workers too (run's finally)
                raise KeyboardInterrupt(str(stopped)) from stopped
            self._finish(position, collect(job, 0, time.time() - started))
        with self.lock:
            self.running -= 1

    def run(self):
        """Runs every job; the outcomes in the jobs' order. The workers end when their feeder
        finds no job left (their exit overlaps what the caller does next); a KeyboardInterrupt
        (Ctrl-C, SIGTERM, or a run here stopped by a signal) stops them at once."""
        previous = _stop_on_sigterm()
        completed = False
        try:
            for feeder in self.feeders:
                feeder.start()
            self._serve_here()
            while not self.all_done.is_set() and any(f.is_alive() for f in self.feeders):
                self.all_done.wait(timeout=0.5)  # a short wait: signals still reach us
            completed = True
            _CLOSING.extend(self.feeders)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if not completed:
                _stop([w.process for w in self.workers], self.lock)
                for child in self.workers:
                    child.keep_errors()
            if self.stream is not None:
                self.stream.close()
        return [self.outcomes.get(position) or Outcome(
            job.spec.name, job.run_dir, "failed", 0.0, error="no worker reported on this run")
            for position, job in enumerate(self.jobs)]


def _unredirected(print_fn):
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
    if not jobs:
        return []
    return _Pool(jobs, gin_files, base_bindings, num_jobs, print_fn).run()


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
