"""B_simple where a study's runs reach their target, pooled over runs, with an interval.

B_simple = tr(Sigma)/|G|^2 grows as the loss falls (linear regression: (d + 1) + s^2 d/|delta|^2),
so the critical batch for reaching a target is predicted by its value where runs reach that
target (McCandlish et al. 2018, section 3), not by an average over training. Each run logs the
train step's raw per-update estimates (``noise_scale/raw``: [update, |G|^2, tr(Sigma), B,
pieces]), each unbiased for its update but very noisy. Here every finished run whose metric
crosses the target contributes the raw estimates logged within ``window`` (a fraction) of its
crossing update, on either side; the pooled value is the ratio of the mean tr(Sigma) to the mean
|G|^2 over all of them, and its interval Fieller's for that ratio with runs as the independent
units (a run's estimates share its trajectory; ``noise_statistics.pooled_ratio``: a bootstrap
over runs covered 50-86% at "90%" with 2-20 runs). A run with no estimate inside the window
contributes its nearest logged estimate on each side of the crossing instead, and the note
counts such runs and says how far those estimates lie: a reading that says "within 10%" must
be one.

Every run at a batch size, learning rate or seed that crosses the target measures the same thing,
the noise scale at that loss level, so all of them pool, not only the fastest. The window trades
bias (B_simple moves within it: for an exponentially falling |delta|^2 that drops 100x by the
crossing, a +-10% window biases the pooled ratio by about -4%) for variance (more estimates).
Pure functions of the study's run records (``experiments.launch.study_reporting.record``).
"""

import math

import numpy as np

from experiments.common import noise_statistics

RAW_KEY = "noise_raw"  # the record's copy of result.json's noise_scale/raw


def crossing_update(curve, target, mode="max"):
    """The update at which ``curve`` ([update, value] pairs) first reaches ``target``, linearly
    interpolated between the evaluations around it; None if it never does."""
    points = sorted((int(u), float(v)) for u, v in curve or ()
                    if v is not None and not math.isnan(float(v)))
    reached = (lambda v: v >= target) if mode == "max" else (lambda v: v <= target)
    previous = None
    for update, value in points:
        if reached(value):
            if previous is None or previous[1] == value:
                return float(update)
            u0, v0 = previous
            return u0 + (target - v0) / (value - v0) * (update - u0)
        previous = (update, value)
    return None


def pooled_b_simple(runs, target, metric="val_accuracy", mode="max", window=0.1, level=0.95):
    """B_simple at the target from every run's raw estimates near its crossing (module doc).

    ``runs``: study run records, each with ``curve`` ({metric: [[update, value], ...]}) and
    ``noise_raw`` (result.json's ``noise_scale/raw`` rows). Returns {"b_simple", "interval",
    "num_runs", "num_runs_outside_window", "num_estimates", "window", "level", "note",
    "reason"} (``reason``: why there is no estimate, see ``_empty``; None when rows were pooled);
    ``b_simple`` None when no run crossing the target logged raw estimates near it (or their
    mean |G|^2 is <= 0).
    """
    if target is None:
        return _empty(window, level, "no target")
    g2, trace, groups = [], [], []
    outside = []  # per run whose rows lie outside the window: its farthest row's distance
    crossed = 0  # finished runs that reached the target
    for index, run in enumerate(runs):
        if run.get("status") in (None, "finished") and crossing_update(
                (run.get("curve") or {}).get(metric), target, mode) is not None:
            crossed += 1
        rows, distance = _rows_near_crossing(run, target, metric, mode, window)
        if not rows:
            continue
        if distance is not None:
            outside.append(distance)
        for row in rows:
            g2.append(row[1])
            trace.append(row[2])
            groups.append(index)
    if not g2:
        if not crossed:
            return _empty(window, level, "no finished run reached the target", "no_crossing")
        return _empty(window, level, "no run that reached the target logged raw noise-scale "
                                     "estimates (k = 1 on one replica, or noise scale off)",
                      "no_raw")
    value, interval = noise_statistics.pooled_ratio(g2, trace, level=level, groups=groups)
    used = len(set(groups))
    return {"b_simple": value, "interval": interval, "num_runs": used,
            "num_runs_outside_window": len(outside), "num_estimates": len(g2),
            "window": window, "level": level, "reason": None,
            "note": _note(len(g2), used, outside, window, value, interval)}


def _rows_near_crossing(run, target, metric, mode, window):
    """(rows, distance) of one run: its raw rows within ``window`` of its crossing and None, or,
    where none lies there, the nearest row on each side and the farthest one's distance in
    updates; ([], None) for an unfinished run, one that never crosses, or one without rows."""
    if run.get("status") not in (None, "finished"):
        return [], None
    raw = run.get(RAW_KEY) or []
    crossing = crossing_update((run.get("curve") or {}).get(metric), target, mode)
    if crossing is None or not raw:
        return [], None
    # A raw estimate logged at update u is the gradient at the weights after u - 1 updates
    # (the ones update u was computed at); the metric at u is that of the weights after u.
    raw = [[row[0] - 1, *row[1:]] for row in raw]
    half = max(window * crossing, 0.5)
    near = [row for row in raw if abs(row[0] - crossing) <= half]
    if near:
        return near, None
    before = [row for row in raw if row[0] <= crossing]
    after = [row for row in raw if row[0] > crossing]
    nearest = before[-1:] + after[:1]
    return nearest, max(abs(row[0] - crossing) for row in nearest)


def _note(num_estimates, used, outside, window, value, interval):
    """The report's sentence on what was pooled; it names the runs read outside the window,
    whose rows measure B_simple at another loss (it moves as the loss falls)."""
    note = (f"pooled over {num_estimates} raw estimates of {used} run(s) within {window:.0%} "
            "of the update where each reached the target")
    if outside:
        note = (f"pooled over {num_estimates} raw estimates of {used} run(s); {len(outside)} of "
                f"{used} run(s) had no logged estimate within {window:.0%} of their crossing: "
                f"their nearest rows (up to {max(outside):.0f} updates away) were used")
    if value is None:
        note += "; their mean |G|^2 is <= 0 (the gradient is buried in noise there)"
    if used < 2:
        note += "; one run: no interval"
    elif interval is not None and math.isinf(interval[1]):
        note += "; |G|^2 cannot be told from 0 across runs, so the interval has no upper end"
    return note


def _empty(window, level, note, reason="no_target"):
    """No estimate; ``reason``: "no_target", "no_crossing" (no finished run reached it) or
    "no_raw" (runs reached it without logging raw estimates)."""
    return {"b_simple": None, "interval": None, "num_runs": 0, "num_runs_outside_window": 0,
            "num_estimates": 0, "window": window, "level": level, "note": note,
            "reason": reason}


def mean_raw(raw):
    """(mean |G|^2, mean tr(Sigma)) of raw rows (for tables)."""
    rows = np.asarray(raw, float)
    return float(rows[:, 1].mean()), float(rows[:, 2].mean())
