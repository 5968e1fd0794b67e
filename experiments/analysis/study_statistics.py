"""Steps to result with seeds: crossings between evaluations, medians over seeds, censoring.

A study's S(B) point is "the updates to reach the target at batch size B with its best learning
rate". Taking the minimum over learning rate x seed picks the luckiest seed and is biased low
(about -21% at 15% run-to-run noise with 3 seeds), so here:

1. each run's steps to target are the *interpolated* crossing of its validation curve
   (``crossing``): linear between the last evaluation that missed the target and the first that
   met it, so the evaluation cadence does not round every point up;
2. a run that finished without reaching the target is *censored*: its steps are "more than its
   last evaluated update" (the budget), never dropped;
3. per (B, learning rate or rule) the seeds are aggregated by their *median*, censored runs
   counting as larger than every reached value (``median_censored``), with a bootstrap interval
   over seeds;
4. per B the setting with the smallest median is the best one (ties: the lower learning rate);
   a B where no setting's median reached the target is censored at the largest budget tried.

Pure functions over run records (see ``study_report``).
"""

import math

import numpy as np

from experiments.analysis.steps_to_result import _check_mode, finished, reached

LEVEL = 0.9  # every interval the report states is a 90% interval


def crossing(curve, target, mode="max"):
    """(steps, censored_at) of one validation curve ([update, value] pairs, any order).

    steps: the interpolated update at which the curve first meets ``target`` (linear between the
    last evaluation that missed it and the first that met it; the first evaluation itself when
    that already meets it), or None. censored_at: when it never does, the last evaluated update
    (the run needs more than that), else None. NaN or missing values never meet the target and
    are skipped for the interpolation.
    """
    _check_mode(mode)
    points = sorted((float(u), float(v)) for u, v in (curve or ())
                    if v is not None and not math.isnan(v))
    previous = None
    for update, value in points:
        if reached(value, target, mode):
            if previous is None or previous[1] == value:
                return update, None
            u0, v0 = previous
            return u0 + (update - u0) * (target - v0) / (value - v0), None
        previous = (update, value)
    last = max((float(u) for u, _ in (curve or ())), default=None)
    return None, last


def run_crossing(record, target, mode="max", metric="val_accuracy"):
    """``crossing`` of one run record's ``curve[metric]``; a curve-less run is censored at its
    ``updates``."""
    curve = (record.get("curve") or {}).get(metric)
    steps, censored_at = crossing(curve, target, mode)
    if steps is None and censored_at is None:
        censored_at = record.get("updates")
    return steps, censored_at


def median_censored(values):
    """Median of ``values`` where None means "more than every reached value" (censored).

    Returns (median, censored): (None, True) when half or more of the values are censored, so
    the median itself is only known to exceed the budget; (None, False) for no values.
    """
    if not values:
        return None, False
    ordered = sorted(values, key=lambda v: (v is None, v if v is not None else 0.0))
    n = len(ordered)
    middle = ordered[(n - 1) // 2:n // 2 + 1]
    if any(v is None for v in middle):
        return None, True
    return float(np.mean(middle)), False


def bootstrap_median_interval(values, level=LEVEL, num_resamples=1000, seed=0):
    """Percentile bootstrap interval of ``median_censored`` over resampled seeds: (lo, hi), with
    hi = inf when more than the upper tail of resamples are censored; None for fewer than 2
    values (one seed has no spread to resample)."""
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    reached_values = [v for v in values if v is not None]
    huge = 10.0 * (max(reached_values) if reached_values else 1.0) + 1.0  # stands for "more"
    coded = np.array([huge if v is None else v for v in values], dtype=float)
    medians = np.median(rng.choice(coded, size=(num_resamples, coded.size), replace=True), axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = (float(v) for v in np.percentile(medians, [tail, 100.0 - tail]))
    # a median that mixes a censored value is itself only a lower bound: the upper end is open
    return (math.inf if lo > max(reached_values, default=0.0) else lo,
            math.inf if hi > max(reached_values, default=0.0) else hi)


def _setting(record):
    """A run's setting within its batch size: (learning rate, rule)."""
    return record.get("learning_rate"), record.get("rule")


def _setting_order(setting):
    lr, rule = setting
    return (math.inf if lr is None else lr, str(rule))


def per_setting(records, target, mode="max", metric="val_accuracy"):
    """{batch size: {(lr, rule): entry}} over finished runs; entry = {"steps" (median over seeds
    or None), "censored", "steps_interval", "runs" [{name, seed, steps, censored_at}],
    "budget" (largest censored update), "num_runs", "num_reached"}."""
    grouped = {}
    for record in finished(records):
        steps, censored_at = run_crossing(record, target, mode, metric)
        grouped.setdefault(record["batch_size"], {}).setdefault(_setting(record), []).append(
            {"name": record.get("name"), "seed": record.get("seed"), "steps": steps,
             "censored_at": censored_at})
    out = {}
    for batch_size in sorted(grouped):
        out[batch_size] = {}
        for setting in sorted(grouped[batch_size], key=_setting_order):
            runs = grouped[batch_size][setting]
            values = [r["steps"] for r in runs]
            median, censored = median_censored(values)
            budgets = [r["censored_at"] for r in runs if r["censored_at"] is not None]
            out[batch_size][setting] = {
                "steps": median, "censored": censored,
                "steps_interval": bootstrap_median_interval(values),
                "runs": runs, "budget": max(budgets) if budgets else None,
                "num_runs": len(runs), "num_reached": sum(v is not None for v in values)}
    return out


def best_per_batch_size(records, target, mode="max", metric="val_accuracy"):
    """The best setting at each batch size by median steps over seeds:
    {B: {"steps", "steps_interval", "censored", "budget", "learning_rate", "rule",
    "num_runs", "num_seeds", "learning_rates_tried", "at_edge", "runs"}}.

    ``steps`` is the median over the seeds of the setting with the fewest median steps (ties:
    the lower learning rate); a censored B (no setting's median reached the target) has steps
    None, censored True and ``budget`` = the largest update its runs evaluated. ``at_edge``:
    "low" or "high" when the learning rate that sets this point is the smallest or largest
    tried at this B (the optimum may lie outside the grid), else None.
    """
    best = {}
    for batch_size, settings in per_setting(records, target, mode, metric).items():
        reached_settings = [(entry["steps"], _setting_order(s), s) for s, entry in
                            settings.items() if entry["steps"] is not None]
        lrs = sorted({s[0] for s in settings if s[0] is not None})
        num_runs = sum(e["num_runs"] for e in settings.values())
        if reached_settings:
            _, _, setting = min(reached_settings)
            entry = settings[setting]
            lr = setting[0]
            edge = None
            if len(lrs) >= 2 and lr is not None:
                edge = "low" if lr == lrs[0] else "high" if lr == lrs[-1] else None
            best[batch_size] = {
                "steps": entry["steps"], "steps_interval": entry["steps_interval"],
                "censored": False, "budget": entry["budget"], "learning_rate": lr,
                "rule": setting[1], "num_runs": num_runs, "num_seeds": entry["num_runs"],
                "learning_rates_tried": lrs, "at_edge": edge, "runs": entry["runs"]}
        else:
            budgets = [e["budget"] for e in settings.values() if e["budget"] is not None]
            best[batch_size] = {
                "steps": None, "steps_interval": None, "censored": True,
                "budget": max(budgets) if budgets else None, "learning_rate": None,
                "rule": None, "num_runs": num_runs, "num_seeds": None,
                "learning_rates_tried": lrs, "at_edge": None, "runs": []}
    return best


def minimum_over_seeds(records, target, mode="max", metric="val_accuracy"):
    """The old S(B): the minimum over learning rate x seed of the interpolated crossing. Kept for
    comparison (it is biased low: the luckiest seed sets each point); {B: steps or None}."""
    out = {}
    for record in finished(records):
        steps, _ = run_crossing(record, target, mode, metric)
        b = record["batch_size"]
        if steps is not None and (out.get(b) is None or steps < out[b]):
            out[b] = steps
        out.setdefault(b, None)
    return dict(sorted(out.items()))
