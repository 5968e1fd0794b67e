"""The child side of ``--jobs``: a long-lived ``python main.py --worker`` training the runs sent.

A worker says ``READY_PREFIX`` on its stdout once its imports are done, then reads one JSON job a
line on stdin (``{"gin_files", "bindings", "run_dir", "log"}``; without ``gin_files`` its own
flags' files and bindings come first), trains it with ``run_job`` (``train_here`` with file
descriptors 1 and 2 pointing at the job's log: Python, absl and TensorFlow's C++ output alike),
then writes ``DONE_PREFIX <json>`` on its real stdout. One process serves many runs, so
TensorFlow is imported once per worker, not once per run: for runs of a few seconds the import
would cost as much as the run. The launcher itself serves jobs with ``run_job`` too (one of the
``--jobs`` slots). A run that raises is written to its log and marked failed by the runner; the
worker goes on with the next one. A run stopped by a signal (``TrainingInterrupted``) ends the
worker.
"""

import contextlib
import json
import os
import sys
import traceback

import gin

from callbacks.checkpointing import TrainingInterrupted
from experiments.common import errors
from experiments.launch import outcomes, study, sweep
from experiments.launch.gin_config import parse
from experiments.run import runner

DONE_PREFIX = "BATCHLAB-WORKER-DONE "
READY_PREFIX = "BATCHLAB-WORKER-READY"


def train_here(gin_files, bindings, run_dir):
    """Parses the files then ``bindings`` and trains one run into exactly ``run_dir`` (new, or
    an unfinished run of the same configuration, which resumes from its newest checkpoint);
    returns the result dict."""
    parse(gin_files, bindings)
    sweep.sweep()  # the launcher consumed study.* and sweep.*: not "never used" by this run
    study.study()
    run_dir = os.path.normpath(run_dir)  # a trailing '/' would name no run
    parent = os.path.dirname(os.path.abspath(run_dir))
    return runner.train(output_dir=os.path.dirname(parent), experiment=os.path.basename(parent),
                        run_name=os.path.basename(run_dir), config_text=gin.config_str(),
                        resumable=True, in_group=True)


@contextlib.contextmanager
def output_to(path):
    """Points file descriptors 1 and 2 (and sys.stdout/err) at ``path`` for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_job(gin_files, bindings, run_dir, log):
    """Trains one job with its output in ``log``; an exception is written there (the runner
    marks the run failed) and not raised. ``TrainingInterrupted`` (a stop signal) is raised."""
    with output_to(log):
        try:
            train_here(gin_files, bindings, run_dir)
        except TrainingInterrupted:
            traceback.print_exc()
            raise
        except Exception as error:  # noqa: BLE001  (recorded in the log and status.json; go on)
            # Written to the log file itself (sys.stderr may not be the redirected descriptor),
            # and ended by one line that names the error: a run that failed before its
            # directory existed has no status.json to read it from (``outcomes.collect``).
            with open(log, "a", errors="replace") as handle:
                traceback.print_exc(file=handle)
                named = " / ".join(errors.summary(error).splitlines())  # one line
                handle.write(f"{outcomes.FAILED_PREFIX}{named}\n")


def serve(gin_files, base_bindings, lines=sys.stdin, out=None):
    """Trains each job read from ``lines`` until they end (the parent closed our stdin)."""
    out = out or os.fdopen(os.dup(1), "w")  # the real stdout, kept across redirections
    out.write(READY_PREFIX + "\n")
    out.flush()
    for line in lines:
        if not line.strip():
            continue
        job = json.loads(line)
        if "gin_files" in job:
            files, bindings = job["gin_files"], job["bindings"]
        else:
            files, bindings = gin_files, list(base_bindings) + list(job["bindings"])
        try:
            run_job(files, bindings, job["run_dir"], job["log"])
        except TrainingInterrupted:  # stopped by a signal: end without "done"; the parent
            return                   # reads the run's 'interrupted' status
        out.write(DONE_PREFIX + json.dumps({"run_dir": job["run_dir"]}) + "\n")
        out.flush()
