"""The child side of ``--jobs``: a long-lived ``python main.py --worker`` training the runs sent.

A worker reads one JSON job a line on stdin (``{"bindings", "run_dir", "log"}``), trains it with
``train_here`` (the base gin files and bindings come from its own flags), with its file
descriptors 1 and 2 pointing at the job's log (Python, absl and TensorFlow's C++ output alike),
then writes ``DONE_PREFIX <json>`` on its real stdout. One process serves many runs, so
TensorFlow is imported once per worker, not once per run: for runs of a few seconds the import
would cost as much as the run. A run that raises is written to its log and marked failed by the
runner; the worker goes on with the next one. A run stopped by a signal (``TrainingInterrupted``)
ends the worker.
"""

import contextlib
import json
import os
import sys
import traceback

import gin

from callbacks.checkpointing import TrainingInterrupted
from experiments.launch import study, sweep
from experiments.launch.gin_config import parse
from experiments.run import runner

DONE_PREFIX = "BATCHLAB-WORKER-DONE "


def train_here(gin_files, bindings, run_dir):
    """Parses the files then ``bindings`` and trains one run into exactly ``run_dir`` (new, or
    an unfinished run of the same configuration, which resumes from its newest checkpoint);
    returns the result dict."""
    parse(gin_files, bindings)
    sweep.sweep()  # the launcher consumed study.* and sweep.*: not "never used" by this run
    study.study()
    parent = os.path.dirname(os.path.abspath(run_dir))
    return runner.train(output_dir=os.path.dirname(parent), experiment=os.path.basename(parent),
                        run_name=os.path.basename(run_dir), config_text=gin.config_str(),
                        resumable=True)


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


def serve(gin_files, base_bindings, lines=sys.stdin, out=None):
    """Trains each job read from ``lines`` until they end (the parent closed our stdin)."""
    out = out or os.fdopen(os.dup(1), "w")  # the real stdout, kept across redirections
    for line in lines:
        if not line.strip():
            continue
        job = json.loads(line)
        with output_to(job["log"]):
            try:
                train_here(gin_files, list(base_bindings) + list(job["bindings"]), job["run_dir"])
            except TrainingInterrupted:  # stopped by a signal: end without "done"; the parent
                traceback.print_exc()    # reads the run's 'interrupted' status
                return
            except Exception:  # noqa: BLE001  (recorded in the log and status.json; go on)
                traceback.print_exc()
        out.write(DONE_PREFIX + json.dumps({"run_dir": job["run_dir"]}) + "\n")
        out.flush()
