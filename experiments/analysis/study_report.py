"""The report of a batch-size study: plain-language answers, the figures they rest on, all runs.

``summarize`` gathers every number the report states (pure, no files), ``sentences`` turns a
summary into answers to the project's questions (does my batch size hurt my model? how should the
learning rate follow the batch size? what batch size should I pick?), and ``write_report`` writes
``report.md`` and its PNGs. A study with failed runs, a single batch size or no run reaching the
target still gets a report: each answer then says what could not be determined and why.
"""

import html
import json
import math
import os
import statistics

import numpy as np

from experiments.analysis import noise_at_target
from experiments.analysis import plots
from experiments.analysis import study_statistics as stats
from experiments.analysis.fits import (b_crit_limits, fit_power_law, fit_steps_to_result,
                                       power_law_interval, rise_p_value, steps_fit_intervals)
from experiments.analysis.steps_to_result import finished, value_at
from experiments.analysis.answers import (FIGURES, b_crit_withheld, better, gap_key, metric_name,
                                          ratio_level, sentences)


LEVEL = stats.LEVEL


def _default_target(done, mode, metric):
    """The best value that every batch size reached, so that every batch size gets a step count.

    Each (batch size, setting)'s reach is the median over its seeds of each seed's best value (one
    lucky seed does not set it); a batch size's reach is its best setting's; the target is the
    worst batch size's reach. With an even number of seeds the median is the lower middle value
    (for "min" metrics the higher): the value more than half of the seeds reached, which is
    what makes the median step count defined (``study_statistics.median_censored``; the mean of
    the two middle values was beyond one of them, so that batch size came out "never reached").
    It is still chosen from the runs it is then measured on, so the report says so; set
    ``study.target`` for an unbiased one.
    """
    reach = {}
    for record in done:
        values = [v for _, v in (record.get("curve") or {}).get(metric) or ()
                  if v is not None and math.isfinite(v)]
        if values:
            key = (record["batch_size"], stats.setting_of(record))
            reach.setdefault(key, []).append(max(values) if mode == "max" else min(values))
    per_batch = {}
    for (batch_size, _), values in reach.items():
        value = statistics.median_low(values) if mode == "max" else statistics.median_high(values)
        previous = per_batch.get(batch_size)
        if previous is None or better(value, previous, mode):
            per_batch[batch_size] = value
    if not per_batch:
        return None
    return min(per_batch.values()) if mode == "max" else max(per_batch.values())


def _steps_points(best):
    """(measured [(B, steps)], censored [(B, budget)]) of the per-B medians."""
    points = [(b, v["steps"]) for b, v in best.items() if v["steps"] is not None]
    censored = [(b, v["budget"]) for b, v in best.items()
                if v["censored"] and v["budget"] is not None and v["budget"] > 0]
    return points, censored


def _fit_steps(best, target, metric, mode):
    """(S(B) fit, its t intervals, why not): the fit over the per-B medians, censored batch
    sizes kept as "more than the budget"."""
    if target is None:
        return None, None, f"no finished run has a {metric} curve, so there is no target to reach"
    relation = ">=" if mode == "max" else "<="
    points, censored = _steps_points(best)
    if not points:
        return None, None, f"no run reached the target {metric} {relation} {metric_name(target)}"
    if len(points) < 3:
        return None, None, (f"only {len(points)} batch size(s) reached the target {metric} "
                            f"{relation} {metric_name(target)}; fitting S(B) needs at least 3")
    sizes, steps = zip(*points)
    fit = fit_steps_to_result(sizes, steps, censored)
    return fit, steps_fit_intervals(fit, LEVEL), None


def _fit_checks(best, fit):
    """Whether the fitted B_crit is an answer: {"limits": ``fits.BCritLimits`` (is a B_crit
    beyond the measured range, either way, as good a fit?), "rise_p" (p-value of S rising with
    B, None under 4 points), "lowest_at" (the B with the fewest measured updates),
    "residual_rms"}; None without a fit."""
    if fit is None:
        return None
    points, censored = _steps_points(best)
    sizes, steps = zip(*points)
    return {"limits": b_crit_limits(sizes, steps, censored, level=LEVEL),
            "rise_p": rise_p_value(sizes, steps),
            "lowest_at": min(points, key=lambda p: (p[1], p[0]))[0],
            "residual_rms": fit.residual_rms}


def _lr_or_inf(record):
    """Sort key that puts the lower learning rate first and runs without one last."""
    lr = record.get("learning_rate")
    return math.inf if lr is None else lr


def _spread(values):
    return [min(values), max(values)] if len(values) >= 2 else None


def _best_final_per_batch(done, metric, mode):
    """Per batch size, the setting (``study_statistics.setting_of``: learning rate, rule,
    micro-batch size, epochs) with the best median final ``metric`` over its seeds (ties: lower
    lr): {B: {"final" (median), "final_range" [min, max over seeds],
    "gap", "gap_range", "num_seeds", "learning_rate", "rule", "runs"}}.

    This is the tuned comparison: each batch size judged by its best learning rate or rule, and
    by the median seed of it, not by its luckiest run.
    """
    groups = {}
    for record in done:
        value = (record.get("final") or {}).get(metric)
        if value is not None and math.isfinite(value):
            key = stats.setting_of(record)
            groups.setdefault(record["batch_size"], {}).setdefault(key, []).append(record)
    sign = -1.0 if mode == "max" else 1.0
    gap = gap_key(metric)
    per_batch = {}
    for batch_size in sorted(groups):
        scored = []
        for setting, runs in groups[batch_size].items():
            median = statistics.median(r["final"][metric] for r in runs)
            scored.append((sign * median, stats.setting_order(setting), runs))
        _, _, runs = min(scored, key=lambda c: c[:2])
        finals = [r["final"][metric] for r in runs]
        gaps = [(r.get("final") or {}).get(gap) for r in runs]
        gaps = [g for g in gaps if g is not None and math.isfinite(g)]
        per_batch[batch_size] = {
            "final": statistics.median(finals), "final_range": _spread(finals),
            "gap": statistics.median(gaps) if gaps else None, "gap_range": _spread(gaps),
            "num_seeds": len(runs), "learning_rate": runs[0].get("learning_rate"),
            "rule": runs[0].get("rule"), "run": runs[0].get("name"),
            "runs": [r.get("name") for r in runs]}
    return per_batch


def _diverged_per_batch(done, metric):
    """{B: finished runs whose final ``metric`` is NaN or infinite}: left out of every median
    (``_best_final_per_batch``), so the report names them instead."""
    diverged = {}
    for record in done:
        value = (record.get("final") or {}).get(metric)
        if value is not None and not math.isfinite(value):
            diverged[record["batch_size"]] = diverged.get(record["batch_size"], 0) + 1
    return diverged


def _learning_rates_tried(records):
    """{batch size: sorted distinct learning rates}, and whether any B tried >= 2 settings, over
    ``records`` (the finished and failed runs: a rate that failed was tried, and a rate above it
    is not missing from the grid)."""
    tried, settings = {}, {}
    for record in records:
        batch_size, lr = record["batch_size"], record.get("learning_rate")
        settings.setdefault(batch_size, set()).add((lr, record.get("rule")))
        if lr is not None:
            tried.setdefault(batch_size, set()).add(lr)
    searched = any(len(s) >= 2 for s in settings.values())
    return {b: sorted(lrs) for b, lrs in tried.items()}, searched


def _fit_best_lr(best, per_batch):
    """Power law of the best learning rate over B: the learning rate that sets each S(B) point
    when steps to result exist for 2+ batch sizes, else the one with the best final metric.
    Returns (fit, interval, source, why not)."""
    for source, table in (("steps to target", best), ("final metric", per_batch)):
        points = [(b, v["learning_rate"]) for b, v in table.items()
                  if v.get("learning_rate") is not None and v["learning_rate"] > 0]
        if len(points) >= 2:
            fit = fit_power_law(*zip(*points))
            return fit, power_law_interval(fit, LEVEL), source, None
    return None, None, None, ("fewer than 2 batch sizes have a finished run with a learning "
                              "rate that reached the target or has a final metric; the fit "
                              "needs 2")


def _edge_warnings(best, per_batch, lrs_tried):
    """Batch sizes whose deciding learning rate is the smallest or largest tried there:
    [{"batch_size", "learning_rate", "edge" ("low"/"high"), "decides"}]. The learning rate
    that sets S(B) is checked when there is one, else the one with the best final metric."""
    warnings = []
    for b in sorted(set(best) | set(per_batch)):
        entry, decides = best.get(b), "steps to target"
        if entry is None or entry.get("learning_rate") is None:
            entry, decides = per_batch.get(b), "final metric"
        if not entry or entry.get("learning_rate") is None:
            continue
        tried = lrs_tried.get(b, [])
        if len(tried) < 2 or entry["learning_rate"] not in (tried[0], tried[-1]):
            continue
        warnings.append({"batch_size": b, "learning_rate": entry["learning_rate"],
                         "edge": "low" if entry["learning_rate"] == tried[0] else "high",
                         "decides": decides})
    return warnings


def _batch_norm_stale(done):
    """The batch sizes whose finished runs ended with stale BatchNormalization averages (their
    initial values still weighing more than 5%: result.json's ``batch_norm_statistics``, from
    ``experiments.run.batch_norm_statistics``), each with the largest such weight."""
    stale = {}
    for record in done:
        stated = (record.get("result") or {}).get("batch_norm_statistics") or {}
        if stated.get("stale") and record.get("batch_size"):
            b = record["batch_size"]
            stale[b] = max(stale.get(b, 0.0), float(stated["initial_weight"]))
    return dict(sorted(stale.items()))


def _throughput_per_batch(done):
    """{batch size: {"median", "range", "num_runs"}} of examples per second."""
    rates = {}
    for record in done:
        if record.get("examples_per_sec") is not None:
            rates.setdefault(record["batch_size"], []).append(record["examples_per_sec"])
    return {b: {"median": statistics.median(rates[b]), "range": _spread(rates[b]),
                "num_runs": len(rates[b])} for b in sorted(rates)}


def _fallback_b_simple(done, best):
    """The B_simple reading for runs that logged no raw estimates near the target (runs of
    older versions, whose pooled estimate ``noise_at_target`` cannot form): each run of each batch
    size's best setting read on its logged B_simple curve at its (interpolated) crossing; the
    median, with its order-statistic interval over those runs (``stats.median_interval``, at
    the level it really has: "interval_level"). Without such readings: no value (a value at
    the end of training is not one at the target)."""
    by_name = {r.get("name"): r for r in done}
    at_target = []
    for entry in best.values():
        for run_entry in entry.get("runs") or ():
            run = by_name.get(run_entry["name"])
            if run and run_entry["steps"] is not None and run.get("b_simple_curve"):
                value = value_at(run["b_simple_curve"], run_entry["steps"])
                if value is not None:  # an unresolved (negative) reading is B_simple 0
                    at_target.append(max(value, 0.0))
    when = "on each best setting's runs' B_simple curve at the update they reached the target"
    if not at_target:  # a value at the end of training is no reading at the target
        return {"b_simple": None, "interval": None, "num_runs": 0, "num_estimates": 0,
                "note": "no best-setting run that reached the target logged a B_simple curve",
                "source": "fallback"}
    interval, coverage = stats.median_interval(at_target)
    return {"b_simple": statistics.median(at_target), "interval": interval,
            "interval_level": coverage,
            "num_runs": len(at_target), "num_estimates": len(at_target),
            "note": f"fallback reading: median of {len(at_target)} values read {when}",
            "source": "fallback (median of curve readings)"}


def _b_simple(done, best, target, metric, mode="max"):
    """B_simple near the target: ``noise_at_target.pooled_b_simple`` (the estimate pooled over
    every run's logged raw noise-scale estimates near the target), else, where no run logged
    any, ``_fallback_b_simple``. Returns {"b_simple", "interval", "num_runs", "num_estimates",
    "note", "source"}."""
    if target is not None:
        out = dict(noise_at_target.pooled_b_simple(done, target, metric, mode=mode, level=LEVEL))
        out.setdefault("source", "noise_at_target.pooled_b_simple")
        if out.get("b_simple") is not None:
            return out
        if out.get("interval"):  # pooled |G|^2 <= 0: an interval, not the lagging reading
            low, high = out["interval"]
            bound = (f"B_simple is at least {low:.3g}" if not math.isfinite(high)
                     else f"B_simple lies in [{low:.3g}, {high:.3g}]")
            out["note"] = (f"the pooled |G|^2 is at or below 0: {bound}, with no value "
                           f"({out.get('note')})")
            return out
        # Raw estimates near the target whose mean |G|^2 is <= 0 (one run: no interval), or no
        # run at the target: nothing to read there (the smoothed curve would lag).
        if out.get("num_estimates"):
            out["note"] = "B_simple undefined near the target: " + out["note"]
            return out
        if out.get("reason") == "no_crossing":
            return out
        fallback = _fallback_b_simple(done, best)
        fallback["note"] = f"{fallback['note']} (pooled estimate unavailable: {out.get('note')})"
        return fallback
    return _fallback_b_simple(done, best)


def _ratio(fit, intervals, b_simple):
    """B_crit / B_simple with a conservative interval (lowest B_crit over highest B_simple, and
    the other way round); None where either is missing or B_simple is 0 (no ratio to form)."""
    if fit is None or b_simple.get("b_simple") is None or b_simple["b_simple"] <= 0:
        return None, None
    ratio = fit.b_crit / b_simple["b_simple"]
    if intervals is None or not b_simple.get("interval"):
        return ratio, None
    lo, hi = b_simple["interval"]
    # B_simple's open upper end (|G|^2 not told from 0) makes the ratio's lower end 0, and a
    # lower end of 0 its upper end unbounded: still an interval, which may well hold 1.
    return ratio, [intervals.b_crit[0] / hi if math.isfinite(hi) else 0.0,
                   intervals.b_crit[1] / lo if lo > 0 else math.inf]


def summarize(records, target=None, mode="max", metric="val_accuracy", extensions=None):
    """Everything the report states about a study, as a dict (see the keys below).

    ``target`` is the value of ``metric`` that defines steps to result; None picks the best value
    that every batch size reached (median over seeds). ``mode`` says whether higher ("max") or
    lower ("min") values of ``metric`` are better, for the target and for choosing the best run.
    ``extensions``: what ``study.extend_learning_rates`` added (``study_extension.report_info``),
    stated by the report; None when it was off.
    """
    done = finished(records)
    target_source = "given"
    if target is None:
        target = _default_target(done, mode, metric)
        target_source = ("the best value every batch size reached, chosen from these same runs, "
                         "so optimistic: set study.target for an unbiased one")
    best = stats.best_per_batch_size(records, target, mode, metric) if target is not None else {}
    steps_fit, steps_intervals, steps_fit_reason = _fit_steps(best, target, metric, mode)
    steps_fit_checks = _fit_checks(best, steps_fit)
    b_simple = _b_simple(done, best, target, metric, mode)
    ratio, ratio_interval = _ratio(steps_fit, steps_intervals, b_simple)
    per_batch = _best_final_per_batch(done, metric, mode)
    lr_fit, lr_interval, lr_source, lr_fit_reason = _fit_best_lr(best, per_batch)
    attempted = [r for r in records if r.get("status") in ("finished", "failed")]
    lrs_tried, lr_searched = _learning_rates_tried(attempted)
    lr_compared = _learning_rates_tried(done)[1]  # >= 2 settings finished at some B
    return {
        "metric": metric, "mode": mode, "gap_key": gap_key(metric), "level": LEVEL,
        "target": target, "target_source": target_source,
        "batch_sizes": sorted({r["batch_size"] for r in records if r.get("batch_size")}),
        "num_runs": len(records), "num_finished": len(done),
        "best": best, "steps_fit": steps_fit, "steps_intervals": steps_intervals,
        "steps_fit_reason": steps_fit_reason, "steps_fit_checks": steps_fit_checks,
        "num_steps_runs": sum(v["num_runs"] for v in best.values()),
        "b_simple": b_simple["b_simple"], "b_simple_interval": b_simple.get("interval"),
        "b_simple_info": b_simple, "num_b_simple": b_simple.get("num_runs", 0),
        "b_crit_over_b_simple": ratio, "b_crit_over_b_simple_interval": ratio_interval,
        "per_batch": per_batch, "diverged": _diverged_per_batch(done, metric),
        "lr_fit": lr_fit, "lr_fit_interval": lr_interval,
        "lr_fit_source": lr_source, "lr_fit_reason": lr_fit_reason,
        "lrs_tried": lrs_tried, "lr_searched": lr_searched, "lr_compared": lr_compared,
        "edge_warnings": _edge_warnings(best, per_batch, lrs_tried),
        "extensions": extensions,
        "throughput": _throughput_per_batch(done),
        "batch_norm_stale": _batch_norm_stale(done),
        "failed": [{"name": r.get("name"), "batch_size": r.get("batch_size"),
                    "error": r.get("error")} for r in records if r.get("status") == "failed"],
    }


def _interval(pair):
    return None if pair is None else [float(pair[0]), float(pair[1])]


def _checks_json(checks):
    """report.json's keys for whether the fitted B_crit is an answer (``_fit_checks``)."""
    if checks is None:
        return {"b_crit_beyond": None, "b_crit_not_ruled_out": None, "fit_rise_p": None,
                "fit_lowest_at": None}
    limits = checks["limits"]
    beyond = ("both" if limits.above and limits.below else "above" if limits.above
              else "below" if limits.below else None)
    return {"b_crit_beyond": beyond, "b_crit_not_ruled_out": [limits.low, limits.high],
            "fit_rise_p": checks["rise_p"], "fit_lowest_at": checks["lowest_at"]}


def _final_keys(final):
    """report.json's keys for a batch size's best-final setting (``_best_final_per_batch``'s
    entry; {} when it has none)."""
    return {"final": final.get("final"), "final_range": final.get("final_range"),
            "final_learning_rate": final.get("learning_rate"), "final_rule": final.get("rule"),
            "final_num_seeds": final.get("num_seeds"), "gap": final.get("gap")}


def report_json(summary):
    """The machine-readable report (report.json): every number the sentences state, under keys
    documented in docs/studies.md. Intervals are [lo, hi] at ``level`` (0.9), unless a
    ``..._level`` key beside them states the level they really have, or null."""
    fit, intervals = summary["steps_fit"], summary["steps_intervals"]
    per_batch = {}
    # Tried: finished and failed runs (a rate that failed was tried), as the edge warnings say.
    edges = {e["batch_size"]: e["edge"] for e in summary["edge_warnings"]}
    for b, v in summary["best"].items():
        final = summary["per_batch"].get(b, {})
        per_batch[str(b)] = {
            "steps": v["steps"], "steps_interval": _interval(v["steps_interval"]),
            "steps_interval_level": v.get("steps_interval_level"),
            "learning_rate": v["learning_rate"], "rule": v["rule"], "censored": v["censored"],
            "budget": v["budget"], "num_runs": v["num_runs"], "num_seeds": v["num_seeds"],
            "at_edge": edges.get(b),
            "learning_rates_tried": summary["lrs_tried"].get(b, v["learning_rates_tried"]),
            **_final_keys(final)}
    for b, final in summary["per_batch"].items():
        per_batch.setdefault(str(b), {"steps": None, "steps_interval": None,
                                      "steps_interval_level": None, "budget": None,
                                      "num_runs": None, "num_seeds": None,
                                      "at_edge": edges.get(b),
                                      "learning_rates_tried": summary["lrs_tried"].get(b, []),
                                      "learning_rate": final["learning_rate"],
                                      "rule": final["rule"], "censored": None,
                                      **_final_keys(final)})
    per_batch = {key: per_batch[key] for key in sorted(per_batch, key=float)}  # 4, 16, 256
    lr_fit = summary["lr_fit"]
    throughput = summary["throughput"]
    return {
        "schema": 1, "level": summary["level"],
        "metric": summary["metric"], "mode": summary["mode"], "target": summary["target"],
        "target_source": summary["target_source"],
        "num_runs": summary["num_runs"], "num_finished": summary["num_finished"],
        "per_batch_size": per_batch,
        "s_min": fit.s_min if fit else None,
        "s_min_interval": _interval(intervals.s_min) if intervals else None,
        "b_crit": fit.b_crit if fit else None,
        "b_crit_interval": _interval(intervals.b_crit) if intervals else None,
        "fit_residual_rms": fit.residual_rms if fit else None,
        "fit_num_points": fit.num_points if fit else None,
        "fit_num_censored": fit.num_censored if fit else None,
        "fit_reason": summary["steps_fit_reason"],
        **_checks_json(summary.get("steps_fit_checks")),
        "b_crit_reported": bool(fit) and not b_crit_withheld(summary),
        "b_simple_at_target": summary["b_simple"],
        "b_simple_interval": _interval(summary["b_simple_interval"]),
        "b_simple_interval_level": summary["b_simple_info"].get("interval_level", LEVEL),
        "b_simple_num_runs": summary["num_b_simple"],
        "b_simple_num_runs_outside_window":
            summary["b_simple_info"].get("num_runs_outside_window"),
        "b_simple_source": summary["b_simple_info"].get("source"),
        "b_simple_note": summary["b_simple_info"].get("note"),
        "b_crit_over_b_simple": summary["b_crit_over_b_simple"],
        "b_crit_over_b_simple_interval": _interval(summary["b_crit_over_b_simple_interval"]),
        "b_crit_over_b_simple_interval_level": ratio_level(summary),
        "lr_exponent": lr_fit.exponent if lr_fit else None,
        "lr_exponent_interval": _interval(summary["lr_fit_interval"]),
        "lr_exponent_source": summary["lr_fit_source"],
        "lr_fit_residual_rms": lr_fit.residual_rms if lr_fit else None,
        "lr_fit_bend_p": lr_fit.curvature_p if lr_fit else None,
        "edge_warnings": summary["edge_warnings"],
        "extensions": summary.get("extensions"),
        "throughput": {str(b): v for b, v in throughput.items()},
        "batch_norm_stale": {str(b): w for b, w in summary["batch_norm_stale"].items()},
        "failed": summary["failed"],
        "diverged": {str(b): n for b, n in sorted((summary.get("diverged") or {}).items())},
    }


# ---- sentences ------------------------------------------------------------------------------


_FIGURE_TITLES = {
    "steps_to_result": "Steps to result",
    "final_metric": "Final metric",
    "generalization_gap": "Generalization gap",
    "best_lr": "Best learning rate",
    "throughput": "Throughput and wall time",
}


def _group_key(records):
    """Lines per rule when rules were compared, else per learning rate."""
    return "rule" if len({r.get("rule") for r in finished(records)}) > 1 else "learning_rate"


def _write_figures(study_dir, records, summary):
    """Every figure the sentences cite, written into ``study_dir``: {name: path}."""
    metric, gap, group = summary["metric"], summary["gap_key"], _group_key(records)
    path = lambda name: os.path.join(study_dir, FIGURES[name])  # noqa: E731
    deciding = summary["best"] if summary["lr_fit_source"] == "steps to target" else \
        summary["per_batch"]
    best_lr = {b: v["learning_rate"] for b, v in deciding.items()}
    relation = ">=" if summary["mode"] == "max" else "<="
    target = (None if summary["target"] is None
              else f"{metric} {relation} {metric_name(summary['target'])}")
    return {
        "steps_to_result": plots.plot_steps_to_result(
            summary["best"], summary["steps_fit"], path("steps_to_result"), summary["b_simple"],
            target=target, intervals=summary["steps_intervals"],
            b_crit_is_answer=not b_crit_withheld(summary)),
        "final_metric": plots.plot_metric_vs_batch(
            records, metric, path("final_metric"), group, ylabel=metric, mode=summary["mode"]),
        "generalization_gap": plots.plot_metric_vs_batch(
            records, gap, path("generalization_gap"), group, ylabel=f"generalization gap ({gap})"),
        "best_lr": plots.plot_best_lr(
            list(best_lr), list(best_lr.values()), summary["lr_fit"], path("best_lr")),
        "throughput": plots.plot_throughput(records, path("throughput")),
    }


def _text(value):
    """User text (run names, errors holding paths, metric names) as markdown that shows it as
    text: HTML escaped (a name holding ``<img ...>`` or ``</td>`` renders as those characters,
    never as markup), on one line."""
    return html.escape(" ".join(str(value).split()), quote=False)


def _cell(value):
    """One markdown table cell: numbers short, text escaped (``_text``) with pipes escaped."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return _text(value).replace("|", "\\|")


def _run_order(record):
    return (record.get("batch_size") or 0, _lr_or_inf(record), record.get("seed") or 0,
            str(record.get("name")))


def _setting_text(learning_rate, rule):
    """"lr 0.1", "linear" (a rule's rate is in the runs table), or "-"."""
    if rule is not None:
        return str(rule)
    return "-" if learning_rate is None else f"lr {learning_rate:g}"


def _per_batch_table(summary):
    """One row per batch size: the steps to target S(B) of its fastest setting with its interval
    (level and seeds), and the final metric of its best-final setting with the seeds' range; each
    names its setting, since the two can differ."""
    metric, best, finals = summary["metric"], summary["best"], summary["per_batch"]
    lines = [f"S(B): updates to the target of the setting that reaches it in the fewest (its "
             f"seeds' median, with the order-statistic interval of that median at the level "
             f"shown); final {metric}: of the setting with the best median over its seeds, with "
             f"the seeds' range. The two settings can differ.", "",
             f"| B | S(B) | interval | level | seeds | setting (S) | final {metric} | "
             f"range | seeds | setting (final) |", "|" + "---|" * 10]
    for b in sorted(set(best) | set(finals)):
        v, f = best.get(b) or {}, finals.get(b) or {}
        steps = v.get("steps")
        if v.get("censored"):
            steps = "-" if v.get("budget") is None else f"> {_cell(float(v['budget']))}"
        interval = v.get("steps_interval")
        level = v.get("steps_interval_level")
        row = [b, steps, "-" if interval is None else
               f"{_cell(float(interval[0]))} to " + (
                   _cell(float(interval[1])) if interval[1] is not None
                   and math.isfinite(interval[1]) else "more than the budget"),
               "-" if level is None else f"{100 * level:.1f}%", v.get("num_seeds"),
               _setting_text(v.get("learning_rate"), v.get("rule")) if v else "-",
               f.get("final"), "-" if f.get("final_range") is None else
               f"{metric_name(f['final_range'][0])} to {metric_name(f['final_range'][1])}",
               f.get("num_seeds"),
               _setting_text(f.get("learning_rate"), f.get("rule")) if f else "-"]
        lines.append("| " + " | ".join(_cell(x) for x in row) + " |")
    return lines


def _runs_table(records, summary):
    """Markdown table of every run, failed and running ones included, with their errors."""
    metric, target, mode = summary["metric"], summary["target"], summary["mode"]
    header = ["run", "B", "b", "lr", "rule", "seed", "status", "steps to target",
              f"final {metric}", summary["gap_key"], "examples/s", "wall time (s)", "error"]
    lines = ["Steps to target: the interpolated crossing between evaluations; \"> N\": not "
             "reached within the N updates evaluated (censored).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(records, key=_run_order):
        final = r.get("final") or {}
        steps = None
        if target is not None and r.get("status") == "finished":
            reached, censored_at = stats.run_crossing(r, target, mode, metric)
            steps = reached if reached is not None else (
                f"> {censored_at:.0f}" if censored_at is not None else None)
        row = [r.get("name"), r.get("batch_size"), r.get("micro_batch_size"),
               r.get("learning_rate"), r.get("rule"), r.get("seed"), r.get("status"), steps,
               final.get(metric), final.get(summary["gap_key"]), r.get("examples_per_sec"),
               r.get("wall_time_s"), r.get("error")]
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return lines


def _overview(records, summary):
    """One paragraph: how many runs in which state, the metric, and the target used."""
    states = [r.get("status") for r in records]
    direction = "higher" if summary["mode"] == "max" else "lower"
    text = (f"{len(records)} runs: {states.count('finished')} finished, "
            f"{states.count('failed')} failed, {states.count('running')} still running. "
            f"Metric: {summary['metric']} ({direction} is better).")
    if summary["target"] is not None:
        relation = ">=" if summary["mode"] == "max" else "<="
        text += (f" Steps to result count the updates until {summary['metric']} {relation} "
                 f"{metric_name(summary['target'])} ({summary['target_source']}).")
    return text


def write_report(study_dir, records, study_name, target=None, mode="max", metric="val_accuracy",
                 extensions=None):
    """Write ``report.md`` and its figures into ``study_dir``.

    Returns {"report": path, "figures": {name: path}, "summary": summary}. The answers come
    first because they are what a reader came for; figures and the full run table back them up.
    """
    os.makedirs(study_dir, exist_ok=True)
    summary = summarize(records, target=target, mode=mode, metric=metric, extensions=extensions)
    figures = _write_figures(study_dir, records, summary)
    lines = [f"# Batch-size study: {_text(study_name)}", "", _text(_overview(records, summary)),
             "", "## Answers", ""]
    lines += [f"- {_text(sentence)}" for sentence in sentences(summary)]
    lines += ["", "## Per batch size", ""] + _per_batch_table(summary)
    lines += ["", "## Figures", ""]
    for name, path in figures.items():
        lines += [f"### {_FIGURE_TITLES[name]}", "",
                  f"![{_FIGURE_TITLES[name]}]({os.path.basename(path)})", ""]
    lines += ["## Runs", ""] + _runs_table(records, summary) + [""]
    report = os.path.join(study_dir, "report.md")
    with open(report, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    machine = os.path.join(study_dir, "report.json")
    tmp = machine + f".{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_jsonable(report_json(summary)), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, machine)
    return {"report": report, "report_json": machine, "figures": figures, "summary": summary,
            "markdown": "\n".join(lines)}


def _jsonable(value):
    """Plain JSON values: numpy scalars as numbers, inf and nan as null (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
