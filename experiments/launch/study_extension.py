"""Extending a study's learning rates beyond the grid's edge (``study.extend_learning_rates``).

When the learning rate that sets a batch size's S(B) point is the smallest or largest tried at
that B (``study_report``'s edge warnings: the rate with the fewest median updates to the target,
or where no rate reached it, the one with the best final metric), the optimum may lie outside the
grid. After each round of runs, ``plan`` proposes, for each such B, the next rate beyond that
edge, at the same ratio as the two rates at the edge (0.1, 0.3 -> 0.9 above; 0.1 / 3 below),
rounded to 4 significant digits; the launcher runs it (every seed, micro-batch size and epoch
count of the grid) and asks again, until the best rate is inside or ``study.max_extensions``
rates were added at that B.

A B stops being extended when the rate beyond the edge was tried already (it failed, e.g. a
diverging loss: the edge is the stable limit) or when the limit is reached; both are recorded.
Every added rate is written to study.json (``extensions``) before its runs start, so a relaunch
with the same ``--run_name`` rebuilds the same runs, skips the finished ones and resumes the rest;
the report states what was added and why (``study_report``'s ``extensions``).
"""

import math

from experiments.launch import grid as grid_lib

SIGNIFICANT_DIGITS = 4


def next_rate(tried, edge):
    """The rate beyond ``edge`` ('low' or 'high') of the sorted rates ``tried`` (at least 2),
    at the ratio of the two rates at that edge; 4 significant digits."""
    if len(tried) < 2:
        raise ValueError(f"extending needs 2 or more learning rates, got {tried!r}")
    if edge == "high":
        value = tried[-1] * (tried[-1] / tried[-2])
    elif edge == "low":
        value = tried[0] / (tried[1] / tried[0])
    else:
        raise ValueError(f"edge must be 'low' or 'high', got {edge!r}")
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def added_at(state, batch_size):
    """The extension entries of study.json at ``batch_size``."""
    return [e for e in state.get("extensions") or () if e["batch_size"] == batch_size]


def _rates_in_state(state, batch_size):
    """Every learning rate that has a run at ``batch_size`` (finished, failed or pending)."""
    return {(run.get("hparams") or {}).get("learning_rate") for run in state["runs"]
            if (run.get("hparams") or {}).get("batch_size") == batch_size}


def plan(summary, state, max_extensions):
    """(new rates, stops) after a round: new = [{"batch_size", "learning_rate", "edge", "from",
    "round", "decides"}] to run now; stops = {B: why no rate is added there although its best is
    at an edge} ("limit": ``max_extensions`` reached; "tried": the rate beyond the edge has runs
    already, e.g. failed ones)."""
    new, stops = [], {}
    for warning in summary.get("edge_warnings") or ():
        batch_size, edge = warning["batch_size"], warning["edge"]
        tried = summary["lrs_tried"].get(batch_size) or []
        done = len(added_at(state, batch_size))
        if done >= max_extensions:
            stops[batch_size] = "limit"
            continue
        rate = next_rate(tried, edge)
        have = _rates_in_state(state, batch_size)
        if any(r is not None and math.isclose(r, rate, rel_tol=1e-9) for r in have):
            stops[batch_size] = "tried"
            continue
        new.append({"batch_size": batch_size, "learning_rate": rate, "edge": edge,
                    "from": warning["learning_rate"], "round": done + 1,
                    "decides": warning.get("decides")})
    return new, stops


def runs_of(spec, context, entries, start_index, names):
    """The RunSpecs of extension ``entries`` (study.json's ``extensions`` or new ones from
    ``plan``), indices from ``start_index``; ``names`` (taken so far) gets theirs, and each
    entry its ``runs``."""
    runs = []
    for entry in entries:
        added = grid_lib.extension_runs(spec, context, entry["batch_size"],
                                        entry["learning_rate"], start_index + len(runs), names)
        entry["runs"] = [r.name for r in added]
        runs += added
    return runs


def record(state, entries, runs):
    """Adds ``entries`` to study.json's ``extensions`` and their ``runs`` (pending) to its runs."""
    state.setdefault("extensions", []).extend(entries)
    state["runs"].extend(
        {"index": r.index, "name": r.name, "bindings": list(r.bindings), "hparams": r.hparams,
         "path": r.name, "status": "pending", "error": None} for r in runs)


def settings(spec, stops=None, held=None):
    """study.json's ``extension_settings``: this launch's switch and limit, where the
    extension stopped at an edge ({B: "limit" / "tried"}), and ``held``: why this launch did not
    extend at all though the switch was on ("shard": launched with ``--shard``; "running": runs
    of the study were live in another launch), so the report says what to do."""
    return {"enabled": spec.extend_learning_rates, "max_extensions": spec.max_extensions,
            "stopped": {str(b): why for b, why in (stops or {}).items()}, "held": held}


def report_info(state):
    """What the report says about the extension, from study.json: None when it was never on and
    added nothing; else {"enabled", "max_extensions", "added" [entries], "stopped" {B: why}}."""
    settings_ = state.get("extension_settings") or {}
    added = state.get("extensions") or []
    if not settings_.get("enabled") and not added:
        return None
    return {"enabled": bool(settings_.get("enabled")),
            "max_extensions": settings_.get("max_extensions"),
            "added": [dict(e) for e in added], "stopped": dict(settings_.get("stopped") or {}),
            "held": settings_.get("held")}
