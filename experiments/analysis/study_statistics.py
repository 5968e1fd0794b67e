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
   counting as larger than every reached value (``median_censored``), with an order-statistic
   interval over seeds that states the level it really has (``median_interval``);
4. per B the setting with the smallest median is the best one (ties: the lower learning rate);
   a B where no setting's median reached the target is censored at the largest budget tried.

Pure functions over run records (see ``study_report``).
"""

import math

import numpy as np

from experiments.analysis.steps_to_result import _check_mode, finished, reached

LEVEL = 0.9  # the level the report aims at; an interval that cannot reach it says its own


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


def median_coverage(n, rank):
    """Probability that [x_(rank), x_(n + 1 - rank)] of n independent draws holds their
    distribution's median: 1 - 2 P(Binomial(n, 1/2) <= rank - 1), for any continuous
    distribution (each draw falls below the median with probability 1/2)."""
    below = sum(math.comb(n, j) for j in range(rank)) / 2.0 ** n
    return 1.0 - 2.0 * below


def median_interval(values, level=LEVEL):
    """Order-statistic interval of the median over seeds and the level it really has:
    ((lo, hi), coverage), or (None, None) for fewer than 2 values.

    [x_(k), x_(n + 1 - k)] with the largest k whose coverage (``median_coverage``) is at least
    ``level``; with too few seeds for that (fewer than 5 for 90%) it is the seeds' whole range,
    whose coverage is 1 - 2^(1 - n): 50% with 2 seeds, 75% with 3, 87.5% with 4. The percentile
    bootstrap used before was labelled 90% but covered 51% / 75% / 85.5% with 2 / 3 / 5 seeds.
    None (censored, "more than the budget") sorts above every reached value; an end that falls on
    one is inf.
    """
    n = len(values)
    if n < 2:
        return None, None
    rank = 1
    while rank + 1 <= (n + 1) // 2 and median_coverage(n, rank + 1) >= level:
        rank += 1
    ordered = sorted(math.inf if v is None else float(v) for v in values)
    return (ordered[rank - 1], ordered[n - rank]), median_coverage(n, rank)


def setting_of(record):
    """A run's setting within its batch size: (learning rate, rule, micro-batch size, epochs).
    Runs of one setting differ only in their seed: runs that differ in micro-batch size (the
    same update, computed in other pieces) or in epochs (another schedule, another budget) are
    other settings, never extra seeds of one."""
    return (record.get("learning_rate"), record.get("rule"), record.get("micro_batch_size"),
            record.get("epochs"))


def setting_order(setting):
    """Sort key of ``setting_of``'s tuples (ties between settings go to the lower learning
    rate, then the smaller micro-batch and the fewer epochs)."""
    lr, rule, micro, epochs = setting
    return (math.inf if lr is None else lr, str(rule),
            math.inf if micro is None else micro, math.inf if epochs is None else epochs)


def per_setting(records, target, mode="max", metric="val_accuracy"):
    """{batch size: {(lr, rule): entry}} over finished runs; entry = {"steps" (median over seeds
    or None), "censored", "steps_interval" (order statistics of the seeds, ``median_interval``),
    "steps_interval_level" (the probability it holds the median), "runs" [{name, seed, steps,
    censored_at}],
    "budget" (largest censored update), "num_runs", "num_reached"}."""
    grouped = {}
    for record in finished(records):
        steps, censored_at = run_crossing(record, target, mode, metric)
        grouped.setdefault(record["batch_size"], {}).setdefault(setting_of(record), []).append(
            {"name": record.get("name"), "seed": record.get("seed"), "steps": steps,
             "censored_at": censored_at})
    out = {}
    for batch_size in sorted(grouped):
        out[batch_size] = {}
        for setting in sorted(grouped[batch_size], key=setting_order):
            runs = grouped[batch_size][setting]
            values = [r["steps"] for r in runs]
            median, censored = median_censored(values)
            interval, coverage = median_interval(values)
            budgets = [r["censored_at"] for r in runs if r["censored_at"] is not None]
            out[batch_size][setting] = {
                "steps": median, "censored": censored,
                "steps_interval": interval, "steps_interval_level": coverage,
                "runs": runs, "budget": max(budgets) if budgets else None,
                "num_runs": len(runs), "num_reached": sum(v is not None for v in values)}
    return out


def best_per_batch_size(records, target, mode="max", metric="val_accuracy"):
    """The best setting at each batch size by median steps over seeds:
    {B: {"steps", "steps_interval", "steps_interval_level", "censored", "budget", "learning_rate",
    "rule", "num_runs", "num_seeds", "learning_rates_tried", "at_edge", "runs"}}.

    ``steps`` is the median over the seeds of the setting with the fewest median steps (ties:
    the lower learning rate); a censored B (no setting's median reached the target) has steps
    None, censored True and ``budget`` = the largest update its runs evaluated. ``at_edge``:
    "low" or "high" when the learning rate that sets this point is the smallest or largest
    tried at this B (the optimum may lie outside the grid), else None.
    """
    best = {}
    for batch_size, settings in per_setting(records, target, mode, metric).items():
        reached_settings = [(entry["steps"], setting_order(s), s) for s, entry in
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
                "steps_interval_level": entry["steps_interval_level"], "censored": False,
                "budget": entry["budget"], "learning_rate": lr,
                "rule": setting[1], "num_runs": num_runs, "num_seeds": entry["num_runs"],
                "learning_rates_tried": lrs, "at_edge": edge, "runs": entry["runs"]}
        else:
            budgets = [e["budget"] for e in settings.values() if e["budget"] is not None]
            best[batch_size] = {
                "steps": None, "steps_interval": None, "steps_interval_level": None,
                "censored": True,
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
