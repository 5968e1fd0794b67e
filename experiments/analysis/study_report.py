"""The report of a batch-size study: plain-language answers, the figures they rest on, all runs.

``summarize`` gathers every number the report states (pure, no files), ``sentences`` turns a
summary into answers to the project's questions (does my batch size hurt my model? how should the
learning rate follow the batch size? what batch size should I pick?), and ``write_report`` writes
``report.md`` and its PNGs. A study with failed runs, a single batch size or no run reaching the
target still gets a report: each answer then says what could not be determined and why.
"""

import math
import os
import statistics

from experiments.analysis import plots
from experiments.analysis.fits import (batch_size_where_doubling_saves, fit_power_law,
                                       fit_steps_to_result)
from experiments.analysis.steps_to_result import best_per_batch_size, finished, run_steps

FIGURES = {
    "steps_to_result": "steps_to_result.png",
    "final_metric": "final_metric.png",
    "generalization_gap": "generalization_gap.png",
    "best_lr": "best_lr.png",
    "throughput": "throughput.png",
}
# "What batch size should I pick?" is answered as: above which B does doubling save less than this?
DOUBLING_FRACTION = 0.3
# A relative change in the final metric below this is reported as "about the same".
NEGLIGIBLE_CHANGE = 0.005


def gap_key(metric):
    """The record's "final" key of the generalization gap that goes with ``metric``."""
    return "gap_" + (metric[len("val_"):] if metric.startswith("val_") else metric)


def _better(a, b, mode):
    """Whether metric value ``a`` is strictly better than ``b``."""
    return a > b if mode == "max" else a < b


def _default_target(done, mode, metric):
    """The best value that every batch size reached, so that every batch size gets a step count.

    Each batch size's best run defines what that batch size can reach; the hardest common target
    is the worst of these.
    """
    reach = {}
    for record in done:
        values = [v for _, v in (record.get("curve") or {}).get(metric) or ()
                  if v is not None and not math.isnan(v)]
        if values:
            best = max(values) if mode == "max" else min(values)
            previous = reach.get(record["batch_size"])
            if previous is None or _better(best, previous, mode):
                reach[record["batch_size"]] = best
    if not reach:
        return None
    return min(reach.values()) if mode == "max" else max(reach.values())


def _fit_steps(best, target, metric, mode):
    """The S(B) fit over batch sizes that reached the target, or (None, why not)."""
    if target is None:
        return None, f"no finished run has a {metric} curve, so there is no target to reach"
    relation = ">=" if mode == "max" else "<="
    points = [(b, v["steps"]) for b, v in best.items() if v["steps"] is not None]
    if not points:
        return None, f"no run reached the target {metric} {relation} {_metric(target)}"
    if len(points) < 3:
        return None, (f"only {len(points)} batch size(s) reached the target {metric} {relation} "
                      f"{_metric(target)}; fitting S(B) needs at least 3")
    sizes, steps = zip(*points)
    return fit_steps_to_result(sizes, steps), None


def _lr_or_inf(record):
    """Sort key that puts the lower learning rate first and runs without one last."""
    lr = record.get("learning_rate")
    return math.inf if lr is None else lr


def _best_final_per_batch(done, metric, mode):
    """Per batch size, the finished run with the best final ``metric`` (ties: lower lr).

    This is the tuned comparison: each batch size judged by its best learning rate or rule.
    """
    candidates = {}
    for record in done:
        value = (record.get("final") or {}).get(metric)
        if value is not None and not math.isnan(value):
            candidates.setdefault(record["batch_size"], []).append((value, record))
    sign = -1.0 if mode == "max" else 1.0
    per_batch = {}
    for batch_size in sorted(candidates):
        value, record = min(candidates[batch_size], key=lambda c: (sign * c[0], _lr_or_inf(c[1])))
        per_batch[batch_size] = {
            "final": value, "gap": (record.get("final") or {}).get(gap_key(metric)),
            "learning_rate": record.get("learning_rate"), "rule": record.get("rule"),
            "run": record.get("name")}
    return per_batch


def _learning_rates_tried(done):
    """{batch size: sorted distinct learning rates}, and whether any B compared >= 2 settings."""
    tried, settings = {}, {}
    for record in done:
        batch_size, lr = record["batch_size"], record.get("learning_rate")
        settings.setdefault(batch_size, set()).add((lr, record.get("rule")))
        if lr is not None:
            tried.setdefault(batch_size, set()).add(lr)
    searched = any(len(s) >= 2 for s in settings.values())
    return {b: sorted(lrs) for b, lrs in tried.items()}, searched


def _fit_best_lr(per_batch):
    """Power law of the best learning rate over B, or (None, why not)."""
    points = [(b, v["learning_rate"]) for b, v in per_batch.items()
              if v["learning_rate"] is not None and v["learning_rate"] > 0]
    if len(points) < 2:
        return None, (f"only {len(points)} batch size(s) have a finished run with a learning "
                      "rate and a final metric; the fit needs 2")
    return fit_power_law(*zip(*points)), None


def _throughput_per_batch(done):
    """{batch size: mean examples per second} over finished runs that report it."""
    rates = {}
    for record in done:
        if record.get("examples_per_sec") is not None:
            rates.setdefault(record["batch_size"], []).append(record["examples_per_sec"])
    return {b: statistics.fmean(rates[b]) for b in sorted(rates)}


def summarize(records, target=None, mode="max", metric="val_accuracy"):
    """Everything the report states about a study, as a dict (see the keys below).

    ``target`` is the value of ``metric`` that defines steps to result; None picks the best value
    that every batch size reached. ``mode`` says whether higher ("max") or lower ("min") values
    of ``metric`` are better, for the target and for choosing the best run.
    """
    done = finished(records)
    target_source = "given"
    if target is None:
        target = _default_target(done, mode, metric)
        target_source = "the best value that every batch size reached"
    best = best_per_batch_size(records, target, mode, metric) if target is not None else {}
    steps_fit, steps_fit_reason = _fit_steps(best, target, metric, mode)
    b_simples = [r["b_simple"] for r in done if r.get("b_simple") is not None]
    b_simple = statistics.median(b_simples) if b_simples else None
    per_batch = _best_final_per_batch(done, metric, mode)
    lr_fit, lr_fit_reason = _fit_best_lr(per_batch)
    lrs_tried, lr_searched = _learning_rates_tried(done)
    return {
        "metric": metric, "mode": mode, "gap_key": gap_key(metric),
        "target": target, "target_source": target_source,
        "batch_sizes": sorted({r["batch_size"] for r in records if r.get("batch_size")}),
        "num_runs": len(records), "num_finished": len(done),
        "best": best, "steps_fit": steps_fit, "steps_fit_reason": steps_fit_reason,
        "b_simple": b_simple, "num_b_simple": len(b_simples),
        "b_noise_over_b_simple": (steps_fit.b_noise / b_simple
                                  if steps_fit is not None and b_simple else None),
        "per_batch": per_batch, "lr_fit": lr_fit, "lr_fit_reason": lr_fit_reason,
        "lrs_tried": lrs_tried, "lr_searched": lr_searched,
        "throughput": _throughput_per_batch(done),
        "failed": [{"name": r.get("name"), "batch_size": r.get("batch_size"),
                    "error": r.get("error")} for r in records if r.get("status") == "failed"],
    }


# ---- sentences ------------------------------------------------------------------------------


def _num(x):
    """Batch sizes and step counts: whole numbers from 100 up, else 3 significant digits."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _metric(x):
    return f"{x:.4g}"


def _cite(text, figure):
    return f"{text} (figure: {FIGURES[figure]})"


def _hurt_sentence(s):
    """Does my batch size hurt my model? Best final metric at the smallest vs the largest B."""
    per_batch, metric = s["per_batch"], s["metric"]
    if not per_batch:
        return _cite(f"Whether batch size hurts the model cannot be determined: no finished run "
                     f"has a final {metric}", "final_metric")
    if len(per_batch) == 1:
        (b, v), = per_batch.items()
        return _cite(f"Whether batch size hurts the model cannot be determined: only one batch "
                     f"size (B = {_num(b)}) finished, with final {metric} {_metric(v['final'])}",
                     "final_metric")
    small, large = min(per_batch), max(per_batch)
    a, z = per_batch[small]["final"], per_batch[large]["final"]
    change = abs(z - a) / abs(a) if a else (0.0 if z == a else math.inf)
    tuned = "with the best learning rate tried at each batch size, " if s["lr_searched"] else ""
    numbers = (f"{tuned}final {metric} is {_metric(z)} at B = {_num(large)} against "
               f"{_metric(a)} at B = {_num(small)}")
    if change < NEGLIGIBLE_CHANGE:
        verdict = f"No, batch size does not hurt the model here: {numbers}, about the same"
    elif _better(a, z, s["mode"]):
        verdict = (f"Yes, the largest batch size hurts the model: {numbers}, "
                   f"{_metric(abs(z - a))} worse ({change:.1%})")
    else:
        verdict = (f"No, the largest batch size does not hurt the model: {numbers}, "
                   f"{_metric(abs(z - a))} better ({change:.1%})")
    return _cite(verdict, "final_metric")


def _gap_sentence(s):
    """How the generalization gap of the best run changes from the smallest to the largest B."""
    points = {b: v["gap"] for b, v in s["per_batch"].items() if v["gap"] is not None}
    key = s["gap_key"]
    if len(points) < 2:
        return _cite(f"The generalization gap ({key}) cannot be compared across batch sizes: "
                     f"{len(points)} batch size(s) report it", "generalization_gap")
    small, large = min(points), max(points)
    trend = "grows" if abs(points[large]) > abs(points[small]) else "does not grow"
    return _cite(f"The generalization gap ({key}) of the best run {trend} with batch size: "
                 f"{_metric(points[small])} at B = {_num(small)}, {_metric(points[large])} at "
                 f"B = {_num(large)}", "generalization_gap")


def _lr_edges(s):
    """Batch sizes whose best learning rate is the smallest or largest one tried there."""
    edges = []
    for b, v in s["per_batch"].items():
        tried = s["lrs_tried"].get(b, [])
        if len(tried) >= 2 and v["learning_rate"] in (tried[0], tried[-1]):
            edges.append(b)
    return edges


def _lr_sentence(s):
    """How should the learning rate follow the batch size? The fitted exponent, named."""
    fit = s["lr_fit"]
    if fit is None:
        return _cite("How the learning rate should follow the batch size cannot be determined: "
                     + s["lr_fit_reason"], "best_lr")
    names = {0.0: "no scaling (0)", 0.5: "square-root scaling (0.5)", 1.0: "linear scaling (1)"}
    nearest = min(names, key=lambda p: abs(fit.exponent - p))
    others = " or ".join(n for p, n in names.items() if p != nearest)
    stderr = "" if math.isnan(fit.exponent_stderr) else f" ± {fit.exponent_stderr:.2f}"
    text = (f"The best learning rate follows B^{fit.exponent:.2f}{stderr} (power law over "
            f"{fit.num_points} batch sizes): closer to {names[nearest]} than to {others}")
    if not s["lr_searched"]:
        text += ("; but each batch size tried only one learning rate and rule, so this exponent "
                 "is the configured rule, not a measured optimum")
    edges = _lr_edges(s)
    if edges and s["lr_searched"]:
        text += (f"; at B = {', '.join(_num(b) for b in edges)} the best learning rate is at the "
                 "edge of those tried, so the optimum may lie outside the grid")
    return _cite(text, "best_lr")


def _pick_sentence(s):
    """What batch size should I pick? Where doubling B stops paying, from the S(B) fit."""
    fit = s["steps_fit"]
    if fit is None:
        return _cite("What batch size to pick cannot be read from steps to result: "
                     + s["steps_fit_reason"], "steps_to_result")
    relation = ">=" if s["mode"] == "max" else "<="
    threshold = batch_size_where_doubling_saves(fit, DOUBLING_FRACTION)
    text = (f"Above B ≈ {_num(threshold)} doubling the batch saves less than "
            f"{DOUBLING_FRACTION:.0%} of the updates (fit S(B) = S_min (1 + B_noise / B) to the "
            f"updates to reach {s['metric']} {relation} {_metric(s['target'])}: "
            f"S_min ≈ {_num(fit.s_min)}, B_noise ≈ {_num(fit.b_noise)}); at B ≈ B_noise a run "
            "needs twice the minimum updates and twice the minimum examples, the usual compromise")
    measured = [b for b, v in s["best"].items() if v["steps"] is not None]
    if not min(measured) <= threshold <= max(measured):
        text += (f" (B ≈ {_num(threshold)} is an extrapolation: the measured batch sizes span "
                 f"{_num(min(measured))} to {_num(max(measured))})")
    return _cite(text, "steps_to_result")


def _noise_sentence(s):
    """Does the fitted B_noise agree with the gradient noise scale B_simple measured in training?"""
    fit, b_simple = s["steps_fit"], s["b_simple"]
    if b_simple is None:
        missing = "no finished run measured B_simple (turn on the gradient noise scale measurement)"
        have = f"the fitted B_noise ≈ {_num(fit.b_noise)}" if fit else "B_noise"
        return _cite(f"{have[0].upper()}{have[1:]} cannot be compared with the measured gradient "
                     f"noise scale: {missing}", "steps_to_result")
    measured = f"the measured B_simple ≈ {_num(b_simple)} (median of {s['num_b_simple']} runs)"
    if fit is None:
        return _cite(f"The fitted B_noise is not available to compare with {measured}: "
                     + s["steps_fit_reason"], "steps_to_result")
    ratio = s["b_noise_over_b_simple"]
    factor = max(ratio, 1.0 / ratio)
    if factor <= 2:
        verdict = "they agree within a factor of 2"
    elif factor <= 10:
        verdict = ("they agree within an order of magnitude, as McCandlish et al. (2018) expect "
                   "of B_simple as an estimate of the critical batch size")
    else:
        verdict = ("they differ by more than 10×, so B_simple is a poor predictor of the critical "
                   "batch size here")
    return _cite(f"The fitted B_noise ≈ {_num(fit.b_noise)} is {ratio:.2g}× {measured}: {verdict}",
                 "steps_to_result")


def _throughput_sentence(s):
    """Does a larger batch use the hardware better? Examples per second, smallest vs largest B."""
    sizes, rates = list(s["throughput"]), list(s["throughput"].values())
    if not sizes:
        return _cite("Throughput cannot be compared: no finished run reports examples per second",
                     "throughput")
    if len(sizes) == 1:
        return _cite(f"Only B = {_num(sizes[0])} reports throughput: {_num(rates[0])} examples/s",
                     "throughput")
    return _cite(f"Throughput goes from {_num(rates[0])} examples/s at B = {_num(sizes[0])} to "
                 f"{_num(rates[-1])} at B = {_num(sizes[-1])} ({rates[-1] / rates[0]:.2g}×)",
                 "throughput")


def _first_line(error, limit=120):
    """The first line of an error message, cut to ``limit`` characters, for running text."""
    lines = (error or "").strip().splitlines()
    if not lines:
        return "no error recorded"
    return lines[0] if len(lines[0]) <= limit else lines[0][:limit - 3] + "..."


def _failed_sentence(s):
    """Which runs failed and why: their absence from the figures must not go unnoticed."""
    runs = "; ".join(f"{f['name']} ({_first_line(f['error'])})" for f in s["failed"])
    return (f"{len(s['failed'])} run(s) failed and are left out of every figure: {runs} "
            "(table: all runs)")


def sentences(summary):
    """Plain-language answers to the study's questions, each ending with the figure it rests on."""
    out = [_hurt_sentence(summary), _gap_sentence(summary), _lr_sentence(summary),
           _pick_sentence(summary), _noise_sentence(summary), _throughput_sentence(summary)]
    if summary["failed"]:
        out.append(_failed_sentence(summary))
    return out


# ---- report.md ------------------------------------------------------------------------------

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
    best_lr = {b: v["learning_rate"] for b, v in summary["per_batch"].items()}
    return {
        "steps_to_result": plots.plot_steps_to_result(
            summary["best"], summary["steps_fit"], path("steps_to_result"), summary["b_simple"]),
        "final_metric": plots.plot_metric_vs_batch(
            records, metric, path("final_metric"), group, ylabel=metric, mode=summary["mode"]),
        "generalization_gap": plots.plot_metric_vs_batch(
            records, gap, path("generalization_gap"), group, ylabel=f"generalization gap ({gap})"),
        "best_lr": plots.plot_best_lr(
            list(best_lr), list(best_lr.values()), summary["lr_fit"], path("best_lr")),
        "throughput": plots.plot_throughput(records, path("throughput")),
    }


def _cell(value):
    """One markdown table cell: numbers short, text on one line with pipes escaped."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return " ".join(str(value).split()).replace("|", "\\|")


def _run_order(record):
    return (record.get("batch_size") or 0, _lr_or_inf(record), record.get("seed") or 0,
            str(record.get("name")))


def _runs_table(records, summary):
    """Markdown table of every run, failed and running ones included, with their errors."""
    metric, target, mode = summary["metric"], summary["target"], summary["mode"]
    header = ["run", "B", "b", "lr", "rule", "seed", "status", "steps to target",
              f"final {metric}", summary["gap_key"], "examples/s", "wall time (s)", "error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(records, key=_run_order):
        final = r.get("final") or {}
        steps = run_steps(r, target, mode, metric) if target is not None else None
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
                 f"{_metric(summary['target'])} ({summary['target_source']}).")
    return text


def write_report(study_dir, records, study_name, target=None, mode="max", metric="val_accuracy"):
    """Write ``report.md`` and its figures into ``study_dir``.

    Returns {"report": path, "figures": {name: path}, "summary": summary}. The answers come
    first because they are what a reader came for; figures and the full run table back them up.
    """
    os.makedirs(study_dir, exist_ok=True)
    summary = summarize(records, target=target, mode=mode, metric=metric)
    figures = _write_figures(study_dir, records, summary)
    lines = [f"# Batch-size study: {study_name}", "", _overview(records, summary), "",
             "## Answers", ""]
    lines += [f"- {sentence}" for sentence in sentences(summary)]
    lines += ["", "## Figures", ""]
    for name, path in figures.items():
        lines += [f"### {_FIGURE_TITLES[name]}", "",
                  f"![{_FIGURE_TITLES[name]}]({os.path.basename(path)})", ""]
    lines += ["## Runs", ""] + _runs_table(records, summary) + [""]
    report = os.path.join(study_dir, "report.md")
    with open(report, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return {"report": report, "figures": figures, "summary": summary}
