"""Runs a list of runs: in this process one after the other, or N at once.

The one mechanism for sweeps and studies. A ``Job`` is a ``RunSpec`` with its exact run directory.
A failing run never stops the others: its error is caught (in process) or read back from its
``status.json`` / log (worker), and it comes back as an ``outcomes.Outcome`` with status 'failed'.

With ``jobs`` = N > 1 there are N slots: this process trains runs itself (it has imported
TensorFlow already) and N - 1 workers (``python main.py --worker``, see ``worker`` and
``worker_processes``) each train one run at a time, fed by one thread here per worker. A slot
takes the next run only when it is free (a worker once it says it is ready, after its TensorFlow
import), longest runs first (``cost``), so the slots end together. Runs get
``worker_processes.CHILD_BINDINGS`` and their stdout/stderr in ``DIR/log.txt`` (see ``outcomes``).
The CPU threads are split between the slots (``--intra_op_threads``, ``OMP_NUM_THREADS``;
``main.py`` limits its own): N processes that each assume every core would fight over them.
``main.py`` may start the workers before it imports TensorFlow (``spares``), so that their import
runs beside its own. A worker that dies (a crash, not an exception) fails its run and is replaced
(one killed by a signal is named by it, ``outcomes.collect``). The parent prints one line per
finished run and the progress, counting the runs being trained, not the slots.
"""

import dataclasses
import os
import queue
import signal
import threading
import time

from callbacks.checkpointing import TrainingInterrupted
from experiments.common import errors
from experiments.launch import outcomes, spares, worker, worker_processes
from experiments.launch.outcomes import Outcome
from experiments.run import run_dir as run_dir_lib


@dataclasses.dataclass(frozen=True)
class Job:
    """A ``grid.RunSpec`` and the exact directory its run gets (created by the runner)."""

    spec: object
    run_dir: str


def execute(jobs, run_in_process, gin_files, base_bindings, num_jobs=1, print_fn=print):
    """Runs every job; returns their Outcomes in the jobs' order.

    ``run_in_process(job)`` trains one job here and returns its result dict (used when
    ``num_jobs`` is 1); workers parse ``gin_files`` and ``base_bindings`` then the job's, and so
    does this process's slot when ``num_jobs`` > 1.
    """
    if num_jobs > 1:
        return _Pool(jobs, gin_files, base_bindings, num_jobs, print_fn).run() if jobs else []
    progress, done = outcomes.Progress(len(jobs), 1, print_fn), []
    with outcomes.Ticker(len(jobs), print_fn) as ticker:
        for job in jobs:
            ticker.started(job)
            done.append(_run_here(job, run_in_process))
            ticker.finished(job)
            progress.report(done[-1], 0)
    return done


def _run_here(job, run_in_process):
    started = time.time()
    try:
        result = run_in_process(job)
    except TrainingInterrupted:  # a stop request (SIGINT/SIGTERM) stops the whole launch
        raise
    except Exception as error:  # one failing run must not stop the others
        if isinstance(error, run_dir_lib.RunExistsError) and error.state == "running":
            # another launch took the run after this one checked: reported, not failed
            return Outcome(job.spec.name, job.run_dir, "running", time.time() - started,
                           error="running in another launch")
        return Outcome(job.spec.name, job.run_dir, "failed", time.time() - started,
                       error=errors.summary(error))
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
        self.print_fn, self.stream = outcomes.unredirected(print_fn)
        self.progress = outcomes.Progress(len(jobs), num_jobs, self.print_fn)
        self.ticker = outcomes.Ticker(len(jobs), self.print_fn)
        self.slots = min(num_jobs, len(jobs))
        self.all_done = threading.Event()
        # Set before the launch stops its workers: their exit is then no news to print.
        self.stopping = threading.Event()
        self.feeders = [threading.Thread(target=self._feed, daemon=True)
                        for _ in range(self.slots - 1)]

    def _start_worker(self):
        """A ready worker, or None when it died starting (then the other slots go on)."""
        directory = os.path.dirname(self.jobs[0].run_dir)
        os.makedirs(directory, exist_ok=True)
        child = worker_processes.WorkerProcess.start(
            self.command, self.threads, os.path.join(directory, ".workers.log"))
        with self.lock:
            self.workers.append(child)
        if child.wait_ready():
            return child
        code = child.process.wait()
        child.close()  # keeps a spare's stderr in the log named below
        if code in (-signal.SIGINT, -signal.SIGTERM):
            # Ctrl-C reaches the whole process group: the worker may end before this launch,
            # stopping too, says so (``run``). A moment for it, then only a lone death is news.
            self.stopping.wait(timeout=2.0)
        with self.lock:
            if self.stopping.is_set():
                return None
            self.print_fn(f"A worker exited with status {code} before it was ready "
                          f"(see {child.errors_path}); one slot fewer.")
        return None

    def _take(self):
        """(position, job, its message) of the next job, its parent directory made; or None."""
        try:
            position = self.todo.get_nowait()
        except queue.Empty:
            return None
        job = self.jobs[position]
        os.makedirs(os.path.dirname(job.run_dir), exist_ok=True)
        self.ticker.started(job)
        return position, job, worker_processes.job_message(job, self.gin_files,
                                                           self.base_bindings)

    def _finish(self, position, outcome):
        self.ticker.finished(self.jobs[position])
        with self.lock:
            self.outcomes[position] = outcome
            # runs being trained now (the ticker's count), not slots: a slot whose worker is
            # still starting, or that found nothing left to take, trains nothing
            self.progress.report(outcome, self.ticker.in_flight())
            if len(self.outcomes) == len(self.jobs):
                self.all_done.set()

    def _feed(self):
        """One worker's slot: a fresh worker whenever the last one died in a run."""
        child = None
        try:
            while not self.stopping.is_set():  # a stopping launch starts no new worker
                child = child or self._start_worker()
                taken = child and self._take()
                if not taken:
                    break
                position, job, message = taken
                started = time.time()
                returncode = child.send(message)
                if returncode != 0:
                    child.close()
                    child = None
                self._finish(position, outcomes.collect(job, returncode, time.time() - started))
        finally:
            if child is not None:
                child.close()

    def _serve_here(self):
        """This process's slot: trains jobs in process, like a worker, until none is left."""
        while taken := self._take():
            position, job, message = taken
            started = time.time()
            try:
                worker.run_job(message["gin_files"], message["bindings"], message["run_dir"],
                               message["log"])
            except TrainingInterrupted as stopped:  # stop the workers too (run's finally)
                signum = stopped.reason if isinstance(stopped.reason, int) else signal.SIGTERM
                raise worker_processes.LaunchStopped(signum) from stopped
            self._finish(position, outcomes.collect(job, 0, time.time() - started))

    def run(self):
        """Runs every job; the outcomes in the jobs' order. The workers end when their feeder
        finds no job left (their exit overlaps what the caller does next); a KeyboardInterrupt
        (Ctrl-C, SIGTERM, or a run here stopped by a signal) stops them at once."""
        previous = worker_processes.stop_on_sigterm()
        completed = False
        self.ticker.__enter__()
        try:
            for feeder in self.feeders:
                feeder.start()
            self._serve_here()
            while not self.all_done.is_set() and any(f.is_alive() for f in self.feeders):
                self.all_done.wait(timeout=0.5)  # a short wait: signals still reach us
            completed = True
            _CLOSING.extend(self.feeders)
        finally:
            self.ticker.__exit__()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if not completed:
                self.stopping.set()  # before the workers end: their exit is not news
                worker_processes.stop([w.process for w in self.workers], self.lock)
                for child in self.workers:
                    child.keep_errors()
            if self.stream is not None:
                self.stream.close()
        return [self.outcomes.get(position) or Outcome(
            job.spec.name, job.run_dir, "failed", 0.0, error="no worker reported on this run")
            for position, job in enumerate(self.jobs)]
