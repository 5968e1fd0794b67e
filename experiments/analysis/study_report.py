"""The report of a batch-size study: plain-language answers, the figures they rest on, all runs.

``summarize`` gathers every number the report states (pure, no files), ``sentences`` turns a
summary into answers to the project's questions (does my batch size hurt my model? how should the
learning rate follow the batch size? what batch size should I pick?), and ``write_report`` writes
``report.md`` and its PNGs. A study with failed runs, a single batch size or no run reaching the
target still gets a report: each answer then says what could not be determined and why.
"""

import html
import math
import os
import statistics

from experiments.analysis import plots
from experiments.analysis.fits import fit_power_law, fit_steps_to_result
from experiments.analysis.steps_to_result import (best_per_batch_size, finished, run_steps,
                                                  value_at)

from experiments.analysis.answers import FIGURES, better, gap_key, metric_name, sentences


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
            if previous is None or better(best, previous, mode):
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
        return None, f"no run reached the target {metric} {relation} {metric_name(target)}"
    if len(points) < 3:
        return None, (f"only {len(points)} batch size(s) reached the target {metric} {relation} "
                      f"{metric_name(target)}; fitting S(B) needs at least 3")
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


def _b_simples(done, best):
    """(B_simple values, when they were taken). B_simple grows as the loss falls, so the critical
    batch for reaching a target is predicted by its value where the runs reach that target
    (McCandlish et al. 2018, section 3): the value on each batch size's best run's logged curve
    at the update it reached the target. Without curves: each run's final value."""
    by_name = {r.get("name"): r for r in done}
    at_target = []
    for entry in best.values():
        run = by_name.get(entry.get("run"))
        if run and entry.get("steps") is not None and run.get("b_simple_curve"):
            value = value_at(run["b_simple_curve"], entry["steps"])
            if value is not None:
                at_target.append(value)
    if at_target:
        return at_target, "where each batch size's best run reached the target"
    final = [r["b_simple"] for r in done if r.get("b_simple") is not None]
    return final, "at the end of training"


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
    b_simples, b_simple_when = _b_simples(done, best)
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
        "b_simple": b_simple, "num_b_simple": len(b_simples), "b_simple_when": b_simple_when,
        "b_noise_over_b_simple": (steps_fit.b_noise / b_simple
                                  if steps_fit is not None and b_simple else None),
        "per_batch": per_batch, "lr_fit": lr_fit, "lr_fit_reason": lr_fit_reason,
        "lrs_tried": lrs_tried, "lr_searched": lr_searched,
        "throughput": _throughput_per_batch(done),
        "failed": [{"name": r.get("name"), "batch_size": r.get("batch_size"),
                    "error": r.get("error")} for r in records if r.get("status") == "failed"],
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
                 f"{metric_name(summary['target'])} ({summary['target_source']}).")
    return text


def write_report(study_dir, records, study_name, target=None, mode="max", metric="val_accuracy"):
    """Write ``report.md`` and its figures into ``study_dir``.

    Returns {"report": path, "figures": {name: path}, "summary": summary}. The answers come
    first because they are what a reader came for; figures and the full run table back them up.
    """
    os.makedirs(study_dir, exist_ok=True)
    summary = summarize(records, target=target, mode=mode, metric=metric)
    figures = _write_figures(study_dir, records, summary)
    lines = [f"# Batch-size study: {_text(study_name)}", "", _text(_overview(records, summary)),
             "", "## Answers", ""]
    lines += [f"- {_text(sentence)}" for sentence in sentences(summary)]
    lines += ["", "## Figures", ""]
    for name, path in figures.items():
        lines += [f"### {_FIGURE_TITLES[name]}", "",
                  f"![{_FIGURE_TITLES[name]}]({os.path.basename(path)})", ""]
    lines += ["## Runs", ""] + _runs_table(records, summary) + [""]
    report = os.path.join(study_dir, "report.md")
    with open(report, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return {"report": report, "figures": figures, "summary": summary}
