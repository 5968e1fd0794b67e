"""``python main.py --list=DIR``: the runs, sweeps and studies under a directory, without opening
files by hand: each run's status (a 'running' run whose process is gone or silent reads as
'interrupted'), its key metrics or its error, and where it is; each sweep or study with its
counts and its report.

Reads ``status.json``, ``result.json``, ``study.json`` and ``sweep.json`` only: importing this
module imports no TensorFlow, so the listing takes a fraction of a second.
"""

import os
import time

from experiments.analysis import tables
from experiments.common.json_files import read_json
from experiments.run import run_dir as run_dir_lib

_METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")
# Never a run's or a group's directory (``sweep.RESERVED_NAMES``), so skipped at every depth. A
# run's own checkpoints/ and figures/ are never walked (the walk stops at a run's status.json): a
# sweep's variant may be named so.
_SKIPPED = {"tensorboard", "__pycache__"}


def find(directory):
    """(run directories, group directories holding study.json or sweep.json) under
    ``directory``, sorted; FileNotFoundError when it does not exist."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"--list={directory} is a file; give a directory (an output "
                                 "directory, a study's or a sweep's).")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--list={directory}: no such directory.")
    runs, groups = [], []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED)
        if "status.json" in files:
            runs.append(root)
            dirs[:] = []  # a run holds no runs
        if "study.json" in files or "sweep.json" in files:
            groups.append(root)
    return sorted(runs), sorted(groups)


def run_line(path, now=None):
    """(status, what, path) of one run directory."""
    status = run_dir_lib.read_status(path)
    state = status.get("status", "missing")
    if state == "running" and not run_dir_lib.is_alive(status, now):
        state = "interrupted"
    if state == "missing":  # a damaged status.json reads as the rest of the directory says
        state = run_dir_lib.effective_status(path)
    now = time.time() if now is None else now
    result = read_json(os.path.join(path, "result.json")) if state == "finished" else None
    if state == "finished" and result is None:
        what = "result.json missing or unreadable"
    elif state == "finished":
        final = dict(result.get("final_epoch") or {})
        final.update({f"val_{k}": v for k, v in (result.get("final_validation") or {}).items()})
        shown = [f"{k}={final[k]:.4g}" for k in _METRICS if isinstance(final.get(k), float)][:2]
        shown += [f"B={tables.batch_label(result)}" for _ in [0] if "batch_size" in result]
        shown += [f"updates={result['updates']}" for _ in [0] if "updates" in result]
        if isinstance(result.get("wall_time_s"), (int, float)):
            shown.append(f"{result['wall_time_s']:.0f}s")
        what = " ".join(shown)
    elif state == "running":
        update = f"update {status['update']}, " if "update" in status else ""
        what = (f"{update}heartbeat {now - float(status.get('heartbeat', now)):.0f}s ago, "
                f"pid {status.get('pid')} on {status.get('host')}")
    elif state == "failed":
        what = run_dir_lib.error_line(status.get("error"))[:100]
    elif state == "interrupted":
        what = _resume_point(path, status)
    else:
        what = ""
    return state, what, path


def _resume_point(path, status):
    """Where an interrupted run continues. A run stopped by a signal saved a checkpoint at the
    update its status records; one whose process died ('running', process gone or heartbeat
    stale) continues from its newest checkpoint, not from its last heartbeat's update."""
    update = status.get("update") if status.get("status") == "interrupted" else None
    if update is None:
        update = run_dir_lib.newest_checkpoint_update(path)
    return "restarts from update 0" if update is None else f"resumable from update {update}"


def _group_run_status(run_dir):
    """A sweep's or study's run as its group counts it: 'pending' before its directory exists
    (study.json's word; ``effective_status`` says 'missing')."""
    return "pending" if not os.path.isdir(run_dir) else run_dir_lib.effective_status(run_dir)


def group_line(path):
    """(kind, summary, path) of a study or sweep directory."""
    study = read_json(os.path.join(path, "study.json"))
    if study is not None:
        runs = study.get("runs") or []
        counts = {}
        for run in runs:
            state = _group_run_status(os.path.join(path, run.get("path") or run.get("name", "")))
            if state == "pending" and run.get("status") == "failed":  # refused before its
                state = "failed"                                       # directory existed
            counts[state] = counts.get(state, 0) + 1
        report = os.path.join(path, "report.md")
        summary = f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if os.path.isfile(report):
            summary += f"; report {report}"
        return "study", summary, path
    sweep = read_json(os.path.join(path, "sweep.json"))
    if sweep is None:
        name = "study.json" if os.path.exists(os.path.join(path, "study.json")) else "sweep.json"
        return ("study" if name == "study.json" else "sweep"), \
            f"{name} is damaged (not valid JSON); its runs are listed below", path
    variants = sweep.get("variants") or {}
    counts = {}
    for name in variants:
        state = _group_run_status(os.path.join(path, name))
        if state == "pending":  # refused before its directory existed: the sweep recorded it
            state = (sweep.get("status") or {}).get(name, state)
        counts[state] = counts.get(state, 0) + 1
    summary = f"{len(variants)} variants: " + ", ".join(
        f"{n} {s}" for s, n in sorted(counts.items()))
    table = os.path.join(path, "table.txt")
    if os.path.isfile(table):
        summary += f"; table {table}"
    return "sweep", summary, path


def _table(rows, header):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header) - 1)]
    lines = []
    for row in [header] + rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return lines


def format_listing(directory):
    """The text ``--list=DIR`` prints."""
    runs, groups = find(directory)
    lines = []
    if groups:
        lines.append(f"Studies and sweeps under {directory}:")
        lines += _table([group_line(g) for g in groups], ("kind", "runs", "where"))
        lines.append("")
    lines.append(f"Runs under {directory}: {len(runs)}")
    if runs:
        lines += _table([run_line(r) for r in runs], ("status", "metrics / error", "where"))
    return "\n".join(lines)
