"""The study directory and its ``study.json``: what was asked, and where each run stands.

    <output_dir>/<study name>/<run_name or timestamp>/
        study.json       axes, target, every run's name, bindings, hparams, status, error, path
        <run>/           one run directory per grid point (see run/run_dir.py)
        <run>.attempt-K/ an earlier failed attempt, moved aside on relaunch (an interrupted run
                         resumes in place from its newest checkpoint instead)
        report.md, *.png, tensorboard/

Each run's own ``status.json`` is the truth about it; ``study.json`` is rewritten from them
(atomically, tmp + os.replace) whenever a run ends, so several shards writing it only ever leave
a complete file, and a relaunch trusts the run directories, not an older study.json.
"""

import json
import logging
import os

from experiments.common import json_files
from experiments.run import run_dir as run_dir_lib

STUDY_FILE = "study.json"


def load(study_dir):
    """The study.json of ``study_dir``, or None when there is none."""
    path = os.path.join(study_dir, STUDY_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        try:
            return json.load(handle)
        except ValueError as error:
            raise ValueError(f"{path} is not valid JSON ({error}): restore it, or move the "
                             "study directory aside.") from None


def write(study_dir, state):
    """Writes ``state`` as study.json atomically (a tmp name per process: shards may race)."""
    os.makedirs(study_dir, exist_ok=True)
    tmp = os.path.join(study_dir, f".{STUDY_FILE}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json_files.dump(state, handle, indent=2, sort_keys=True)  # standard JSON
        handle.write("\n")
    os.replace(tmp, os.path.join(study_dir, STUDY_FILE))


def differences(stored, axes):
    """Lines ``name: stored -> now`` where the stored study's axes differ from ``axes``."""
    old = stored.get("axes") or {}
    return [f"{k}: {old.get(k)!r} -> {axes.get(k)!r}" for k in sorted(set(old) | set(axes))
            if old.get(k) != axes.get(k)]


def run_status(run_dir):
    """(status, error) of a run directory: 'pending' when it does not exist; a 'running' run
    whose process is gone or whose heartbeat is stale reads 'interrupted' (``run_dir``)."""
    if not os.path.isdir(run_dir):
        return "pending", None
    return run_dir_lib.effective_status(run_dir), run_dir_lib.read_status(run_dir).get("error")


def set_aside(run_dir):
    """Moves an unfinished run directory to ``<run>.attempt-K`` (first free K); a finished one
    is never touched. Returns the new path, or None when nothing was moved. The attempt's
    HParams session (its group is the run's name) is renamed out of TensorBoard's sight
    (``hparams.retire_sessions``): the rerun's session is the run's one row."""
    if not os.path.isdir(run_dir) or run_status(run_dir)[0] == "finished":
        return None
    attempt = 1
    while os.path.exists(f"{run_dir}.attempt-{attempt}"):
        attempt += 1
    moved = f"{run_dir}.attempt-{attempt}"
    os.replace(run_dir, moved)
    from callbacks.hparams import retire_sessions  # noqa: PLC0415  (TensorFlow: only here)
    for log_dir in (os.path.join(moved, "tensorboard"),  # a study run's HParamsLogger
                    os.path.join(moved, "tensorboard", "hparams")):  # a sweep's session
        try:
            retire_sessions(log_dir)
        except (OSError, ValueError) as error:  # a damaged file: the move itself stands
            logging.warning("HParams session in %s not set aside: %s", log_dir, error)
    return moved


def new_state(study_name, gin_files, gin_bindings, spec, runs, config_text=None):
    """The study.json of a new study: every run pending. ``config_text``: the parsed base
    configuration (``gin.config_str()``), which every shard and relaunch must share."""
    return {
        "study": study_name, "gin_files": list(gin_files), "gin_bindings": list(gin_bindings),
        "config": config_text,
        "axes": spec.axes(),
        "target": {"metric": spec.target_metric, "value": spec.target, "mode": spec.target_mode},
        "runs": [{"index": r.index, "name": r.name, "bindings": list(r.bindings),
                  "hparams": r.hparams, "path": r.name, "status": "pending", "error": None}
                 for r in runs],
    }


def refresh(study_dir, state, errors=None):
    """``state`` with every run's status read from its directory; ``errors`` ({name: error})
    covers runs that failed before creating one."""
    errors = errors or {}
    for run in state["runs"]:
        status, error = run_status(os.path.join(study_dir, run["path"]))
        if status == "pending" and run["name"] in errors:
            status, error = "failed", errors[run["name"]]
        elif status == "pending" and run.get("status") == "failed":
            status, error = "failed", run.get("error")  # failed earlier, before its directory
        run["status"], run["error"] = status, error
    return state
