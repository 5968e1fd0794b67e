"""Steps to result (Shallue et al. 2018): how many updates each batch size needs to reach a target.

The question "does a bigger batch train faster?" is only fair when every batch size gets its best
learning rate, so the best run per batch size is the one that reaches the target in the fewest
updates. Everything here is a pure function of finished-run records (see ``study_report``).
"""

import math

TARGET_DIRECTIONS = ("max", "min")


def _check_mode(mode):
    if mode not in TARGET_DIRECTIONS:
        raise ValueError(f"mode must be 'max' (e.g. accuracy) or 'min' (e.g. loss), got {mode!r}")


def reached(value, target, mode="max"):
    """Whether ``value`` meets ``target``: at least it for mode "max", at most it for "min"."""
    _check_mode(mode)
    return value >= target if mode == "max" else value <= target


def steps_to_target(curve, target, mode="max"):
    """The first update at which the metric reaches ``target``, or None if it never does.

    ``curve`` is a list of (update, value) pairs in any order (evaluations may be logged out of
    order when runs resume); it is sorted by update so "first" means the earliest update.
    Missing or NaN values (a diverged evaluation) never count as reaching the target.
    """
    _check_mode(mode)
    for update, value in sorted(curve or (), key=lambda pair: pair[0]):
        if value is None or math.isnan(value):
            continue
        if reached(value, target, mode):
            return int(update)
    return None


def run_steps(record, target, mode="max", metric="val_accuracy"):
    """Steps to target of one run record, read from its ``curve[metric]``."""
    return steps_to_target((record.get("curve") or {}).get(metric), target, mode)


def finished(records):
    """The runs that finished: failed or still-running runs say nothing about steps to result."""
    return [r for r in records if r.get("status") == "finished"]


def _lr_order(record):
    lr = record.get("learning_rate")
    return math.inf if lr is None else lr


def best_per_batch_size(records, target, mode="max", metric="val_accuracy"):
    """The fastest finished run at each batch size: {batch_size: {"steps", "learning_rate", "run"}}.

    "Fastest" is fewest updates to reach ``target`` on ``curve[metric]``; ties go to the lower
    learning rate (the more conservative choice). A batch size with finished runs of which none
    reached the target is kept with steps, learning_rate and run all None, so callers can say so.
    """
    _check_mode(mode)
    candidates = {}
    for record in finished(records):
        steps = run_steps(record, target, mode, metric)
        candidates.setdefault(record["batch_size"], [])
        if steps is not None:
            candidates[record["batch_size"]].append((steps, _lr_order(record), record))
    best = {}
    for batch_size in sorted(candidates):
        runs = candidates[batch_size]
        if not runs:
            best[batch_size] = {"steps": None, "learning_rate": None, "run": None}
            continue
        steps, _, record = min(runs, key=lambda item: item[:2])
        best[batch_size] = {"steps": steps, "learning_rate": record.get("learning_rate"),
                            "run": record.get("name")}
    return best


def value_at(curve, update):
    """The value a logged curve ([update, value] pairs) had at ``update``: its last point at or
    before it (the first point when the curve starts later); None for an empty curve."""
    points = sorted((u, v) for u, v in (curve or []) if v is not None)
    if not points:
        return None
    before = [v for u, v in points if u <= update]
    return before[-1] if before else points[0][1]
