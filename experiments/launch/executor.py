"""Runs a list of runs: in this process one after the other, or N at once in child processes.

The one mechanism for sweeps and studies. A ``Job`` is a ``RunSpec`` with its exact run directory.
A failing run never stops the others: its error is caught (in process) or read back from its
``status.json`` / log (child process), and it comes back as an ``Outcome`` with status 'failed'.

With ``jobs`` > 1 each run is ``python main.py --gin_file=... --gin_bindings=... --run_dir=DIR``
(TensorFlow is most robust in a fresh process), with ``train.verbose = 2`` (no progress bar, so
no terminal control codes) and its stdout/stderr in ``DIR/log.txt`` (written next to the run
directory while running, because the runner creates DIR itself, then moved in). The CPU threads
are split between the jobs (``--intra_op_threads``, ``OMP_NUM_THREADS``): N jobs that each
assume every core would fight over them. The parent prints one line per finished run and the
overall progress.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Optional

from experiments.common import paths

MAIN = os.path.join(paths.REPO_ROOT, "main.py")
POLL_SECONDS = 0.2
CHILD_BINDINGS = ("train.verbose = 2",)


@dataclasses.dataclass(frozen=True)
class Job:
    spec: object  # grid.RunSpec
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
    ``num_jobs`` is 1); child processes parse ``gin_files`` and ``base_bindings`` then the job's.
    """
    if num_jobs > 1:
        return _run_children(jobs, gin_files, base_bindings, num_jobs, print_fn)
    progress, outcomes = Progress(len(jobs), 1, print_fn), []
    for job in jobs:
        outcomes.append(_run_here(job, run_in_process))
        progress.report(outcomes[-1], 0)
    return outcomes


def _run_here(job, run_in_process):
    started = time.time()
    try:
        result = run_in_process(job)
    except Exception as error:  # one failing run must not stop the others
        return Outcome(job.spec.name, job.run_dir, "failed", time.time() - started,
                       error=f"{type(error).__name__}: {error}")
    return Outcome(job.spec.name, result.get("run_dir", job.run_dir), "finished",
                   time.time() - started, result=result)


def threads_per_job(num_jobs):
    """CPU threads each of ``num_jobs`` simultaneous runs may use (at least 1)."""
    return max(1, (os.cpu_count() or 1) // num_jobs)


def child_command(job, gin_files, base_bindings, threads):
    """The command line that trains ``job`` in a child process."""
    bindings = list(base_bindings) + list(job.spec.bindings) + list(CHILD_BINDINGS)
    return ([sys.executable, MAIN] + [f"--gin_file={f}" for f in gin_files]
            + [f"--gin_bindings={b}" for b in bindings]
            + [f"--run_dir={job.run_dir}", f"--intra_op_threads={threads}"])


def _child_env(threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TF_NUM_INTRAOP_THREADS=str(threads),
               TF_NUM_INTEROP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (paths.REPO_ROOT, env.get("PYTHONPATH")) if p)
    return env


def _pending_log(run_dir):
    return f"{run_dir}.log.txt"


def _start(job, gin_files, base_bindings, threads):
    os.makedirs(os.path.dirname(job.run_dir), exist_ok=True)
    log = open(_pending_log(job.run_dir), "w")
    process = subprocess.Popen(child_command(job, gin_files, base_bindings, threads),
                               stdout=log, stderr=subprocess.STDOUT, cwd=paths.REPO_ROOT,
                               env=_child_env(threads))
    return process, log, time.time()


def _run_children(jobs, gin_files, base_bindings, num_jobs, print_fn):
    threads = threads_per_job(num_jobs)
    waiting, running, outcomes = list(jobs), {}, {}
    progress = Progress(len(jobs), num_jobs, print_fn)
    try:
        while waiting or running:
            while waiting and len(running) < num_jobs:
                job = waiting.pop(0)
                running[job] = _start(job, gin_files, base_bindings, threads)
            time.sleep(POLL_SECONDS)
            for job, (process, log, started) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[job]
                outcome = collect(job, process.returncode, time.time() - started)
                outcomes[job] = outcome
                progress.report(outcome, len(running))
    finally:
        for process, log, _ in running.values():  # interrupted: stop the children we started
            process.terminate()
            process.wait()
            log.close()
    return [outcomes[job] for job in jobs]


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
