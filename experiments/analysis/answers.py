"""Plain-language answers of a study report, each citing the figure it rests on.

``sentences(summary)`` answers the project's questions for one study (does my batch size hurt my
model? how should the learning rate follow the batch size? what batch size should I pick? does
the measured noise scale predict where larger batches stop paying?) from a
``study_report.summarize`` dict. Each answer that cannot be given says why. Every number a
sentence states comes with its 90% interval (or its seeds' range) and the number of runs behind it.
"""

import math

from experiments.analysis.fits import batch_size_where_doubling_saves

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


def better(a, b, mode):
    """Whether metric value ``a`` is strictly better than ``b``."""
    return a > b if mode == "max" else a < b


def _num(x):
    """Batch sizes and step counts: whole numbers from 100 up, else 3 significant digits."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def metric_name(x):
    return f"{x:.4g}"


def _cite(text, figure):
    return f"{text} (figure: {FIGURES[figure]})"


def _interval_text(pair, fmt=None):
    """" [lo, hi]" for a 90% interval, "" when there is none; an unbounded upper end reads
    "more than the budget"."""
    fmt = fmt or _num
    if pair is None:
        return ""
    lo, hi = pair
    if hi is None or not math.isfinite(hi):
        return f" [90% interval: {fmt(lo)} to more than the budget]"
    return f" [90% interval {fmt(lo)} to {fmt(hi)}]"


def _range_text(pair, n):
    """"(median of n seeds, range lo to hi)" or "(1 seed, no spread measured)"."""
    if n <= 1 or pair is None:
        return "(1 seed, no spread measured)"
    return f"(median of {n} seeds, range {metric_name(pair[0])} to {metric_name(pair[1])})"


def _hurt_sentence(s):
    """Does my batch size hurt my model? Best setting's median final metric, smallest vs largest
    B, with the seeds' range."""
    per_batch, metric = s["per_batch"], s["metric"]
    if not per_batch:
        return _cite(f"Whether batch size hurts the model cannot be determined: no finished run "
                     f"has a final {metric}", "final_metric")
    if len(per_batch) == 1:
        (b, v), = per_batch.items()
        return _cite(f"Whether batch size hurts the model cannot be determined: only one batch "
                     f"size (B = {_num(b)}) finished, with final {metric} {metric_name(v['final'])} "
                     f"{_range_text(v['final_range'], v['num_seeds'])}", "final_metric")
    small, large = min(per_batch), max(per_batch)
    a, z = per_batch[small]["final"], per_batch[large]["final"]
    change = abs(z - a) / abs(a) if a else (0.0 if z == a else math.inf)
    tuned = "with the best learning rate tried at each batch size, " if s["lr_searched"] else ""
    numbers = (f"{tuned}final {metric} is {metric_name(z)} at B = {_num(large)} "
               f"{_range_text(per_batch[large]['final_range'], per_batch[large]['num_seeds'])} "
               f"against {metric_name(a)} at B = {_num(small)} "
               f"{_range_text(per_batch[small]['final_range'], per_batch[small]['num_seeds'])}")
    ranges = [per_batch[b]["final_range"] for b in (small, large)]
    overlap = all(r is not None for r in ranges) and not (
        ranges[0][1] < ranges[1][0] or ranges[1][1] < ranges[0][0])
    if change < NEGLIGIBLE_CHANGE:
        verdict = f"No, batch size does not hurt the model here: {numbers}, about the same"
    elif better(a, z, s["mode"]):
        verdict = (f"Yes, the largest batch size hurts the model: {numbers}, "
                   f"{metric_name(abs(z - a))} worse ({change:.1%})")
    else:
        verdict = (f"No, the largest batch size does not hurt the model: {numbers}, "
                   f"{metric_name(abs(z - a))} better ({change:.1%})")
    if overlap:
        verdict += "; but the seeds' ranges overlap, so the difference is within seed noise"
    return _cite(verdict, "final_metric")


def _gap_sentence(s):
    """How the generalization gap of the best setting changes from the smallest to the largest B.

    The gap is validation minus training (``gap_<m>`` = val_<m> - <m>, measured by the gap
    callback in inference mode when it ran). For a metric where higher is better (accuracy) a
    more negative gap is a larger one; for a loss a more positive one."""
    points = {b: v for b, v in s["per_batch"].items() if v["gap"] is not None}
    key = s["gap_key"]
    worse = "below" if s["mode"] == "max" else "above"
    convention = (f"{key} = validation - training; {'negative' if s['mode'] == 'max' else 'positive'}"
                  f" means validation {worse} training")
    if len(points) < 2:
        return _cite(f"The generalization gap ({convention}) cannot be compared across batch "
                     f"sizes: {len(points)} batch size(s) report it", "generalization_gap")
    small, large = min(points), max(points)
    sign = -1.0 if s["mode"] == "max" else 1.0
    size = {b: sign * points[b]["gap"] for b in (small, large)}
    trend = "grows" if size[large] > size[small] else "does not grow"

    def one(b):
        v = points[b]
        return (f"{metric_name(v['gap'])} at B = {_num(b)} "
                f"{_range_text(v['gap_range'], v['num_seeds'])}")

    return _cite(f"The generalization gap ({convention}) of the best setting {trend} with batch "
                 f"size: {one(small)}, {one(large)}", "generalization_gap")


def _edge_text(s):
    edges = s.get("edge_warnings") or []
    if not edges or not s["lr_searched"]:
        return ""
    parts = ", ".join(f"B = {_num(e['batch_size'])} ({e['edge']} edge, lr {e['learning_rate']:g})"
                      for e in edges)
    decides = {e["decides"] for e in edges}
    extended = (s.get("extensions") or {}).get("enabled")
    rules = any(v.get("rule") is not None for v in list(s["best"].values())
                + list(s["per_batch"].values()))
    if extended:
        advice = "study.extend_learning_rates stopped there (see the grid extension)"
    elif rules:
        advice = "add learning rates beyond that edge (a grid of study.learning_rates)"
    else:
        advice = ("add the next rates beyond that edge, or relaunch with "
                  "study.extend_learning_rates = True")
    return (f"; the learning rate that decides {' / '.join(sorted(decides))} is at the edge of "
            f"those tried at {parts}, so the optimum may lie outside the grid: {advice}")


_STOPS = {"limit": "the limit study.max_extensions = {limit} was reached",
          "tried": "the rate beyond it was tried already and failed"}


def _extension_sentence(s):
    """What ``study.extend_learning_rates`` added beyond the grid's edge, and where each extended
    batch size's best learning rate ended up; None when the extension was off and added none."""
    info = s.get("extensions")
    if not info:
        return None
    edges = {e["batch_size"]: e for e in s.get("edge_warnings") or ()}
    added = {}
    for entry in info.get("added") or ():
        added.setdefault(entry["batch_size"], []).append(entry)
    stopped = {int(b): why for b, why in (info.get("stopped") or {}).items()}
    if not added:
        text = "Grid extension (study.extend_learning_rates): no learning rate was added"
        if not edges:
            return _cite(text + ": no batch size's best learning rate was at the grid's edge",
                         "best_lr")
        limit = info.get("max_extensions")
        still = ", ".join(
            f"B = {_num(b)} ({_STOPS.get(stopped.get(b), 'not extended').format(limit=limit)})"
            for b in sorted(edges))
        return _cite(f"{text}; at the edge: {still}", "best_lr")
    parts = []
    for b in sorted(added):
        rates = ", ".join(f"{e['learning_rate']:g}" for e in added[b])
        first = added[b][0]
        where = s["best"].get(b) or {}
        best_lr = where.get("learning_rate")
        if best_lr is None:
            best_lr = (s["per_batch"].get(b) or {}).get("learning_rate")
        if b in edges:
            why = _STOPS.get(stopped.get(b), "extension off on the last launch").format(
                limit=info.get("max_extensions"))
            outcome = (f"best {edges[b]['learning_rate']:g}, still at the {edges[b]['edge']} "
                       f"edge ({why})")
        else:
            outcome = (f"best {best_lr:g}, now inside the rates tried" if best_lr is not None
                       else "best now inside the rates tried")
        parts.append(f"B = {_num(b)}: {first['edge']} edge at {first['from']:g}, added "
                     f"{rates}; {outcome}")
    total = sum(len(v) for v in added.values())
    return _cite(f"Grid extension (study.extend_learning_rates, at most "
                 f"{info.get('max_extensions')} per batch size): {total} learning rate(s) added "
                 f"beyond the grid's edge: " + "; ".join(parts), "best_lr")


def _lr_sentence(s):
    """How should the learning rate follow the batch size? The fitted exponent, named."""
    fit = s["lr_fit"]
    if fit is None:
        return _cite("How the learning rate should follow the batch size cannot be determined: "
                     + s["lr_fit_reason"], "best_lr")
    names = {0.0: "no scaling (0)", 0.5: "square-root scaling (0.5)", 1.0: "linear scaling (1)"}
    nearest = min(names, key=lambda p: abs(fit.exponent - p))
    others = " or ".join(n for p, n in names.items() if p != nearest)
    interval = s.get("lr_fit_interval")
    spread = (f" [90% interval {interval[0]:.2f} to {interval[1]:.2f}]" if interval
              else " (no interval: two points fix the line)")
    inside = [n for p, n in names.items() if interval and interval[0] <= p <= interval[1]]
    text = (f"The best learning rate (the one that "
            f"{'reaches the target in the fewest updates' if s['lr_fit_source'] == 'steps to target' else 'gives the best final metric'}"
            f") follows B^{fit.exponent:.2f}{spread} (power law over {fit.num_points} batch "
            f"sizes): closest to {names[nearest]}, over {others}")
    if interval:
        text += (f"; the interval holds {' and '.join(inside)}" if inside
                 else "; the interval holds none of the three rules")
    if not s["lr_searched"]:
        text += ("; but each batch size tried only one learning rate and rule, so this exponent "
                 "is the configured rule, not a measured optimum")
    return _cite(text + _edge_text(s), "best_lr")


def _steps_runs(s):
    return f"{s['num_steps_runs']} runs on {len(s['best'])} batch sizes"


def _pick_sentence(s):
    """What batch size should I pick? Where doubling B stops paying, from the S(B) fit."""
    fit, intervals = s["steps_fit"], s["steps_intervals"]
    if fit is None:
        return _cite("What batch size to pick cannot be read from steps to result: "
                     + s["steps_fit_reason"], "steps_to_result")
    relation = ">=" if s["mode"] == "max" else "<="
    threshold = batch_size_where_doubling_saves(fit, DOUBLING_FRACTION)
    scale = threshold / fit.b_crit if fit.b_crit else 0.0
    threshold_interval = (None if intervals is None
                          else (intervals.b_crit[0] * scale, intervals.b_crit[1] * scale))
    censored = [b for b, v in s["best"].items() if v["censored"]]
    text = (f"Above B ≈ {_num(threshold)}{_interval_text(threshold_interval)} doubling the batch "
            f"saves less than {DOUBLING_FRACTION:.0%} of the updates (fit S(B) = S_min (1 + "
            f"B_crit / B) to the median over seeds of the best learning rate's updates to reach "
            f"{s['metric']} {relation} {metric_name(s['target'])}, {_steps_runs(s)}: "
            f"S_min ≈ {_num(fit.s_min)}{_interval_text(intervals and intervals.s_min)}, "
            f"B_crit ≈ {_num(fit.b_crit)}{_interval_text(intervals and intervals.b_crit)}, "
            "bootstrap over the fit's residuals); at B ≈ B_crit a run needs twice the minimum "
            "updates and twice the minimum examples, the usual compromise")
    if censored:
        text += (f"; B = {', '.join(_num(b) for b in censored)} never reached the target within "
                 "the budget and enter the fit as \"more than the budget\"")
    measured = [b for b, v in s["best"].items() if v["steps"] is not None]
    if not min(measured) <= threshold <= max(measured):
        text += (f" (B ≈ {_num(threshold)} is an extrapolation: the measured batch sizes span "
                 f"{_num(min(measured))} to {_num(max(measured))})")
    return _cite(text, "steps_to_result")


def _noise_sentence(s):
    """Does the fitted B_crit agree with the gradient noise scale B_simple measured in training?
    A ratio with an interval."""
    fit, b_simple = s["steps_fit"], s["b_simple"]
    info = s.get("b_simple_info") or {}
    if b_simple is None:
        missing = info.get("note") or ("no finished run measured B_simple (turn on the gradient "
                                       "noise scale measurement)")
        have = f"the fitted B_crit ≈ {_num(fit.b_crit)}" if fit else "B_crit"
        return _cite(f"{have[0].upper()}{have[1:]} cannot be compared with the measured gradient "
                     f"noise scale: {missing}", "steps_to_result")
    measured = (f"B_simple ≈ {_num(b_simple)}{_interval_text(s.get('b_simple_interval'))} near "
                f"the target ({info.get('num_runs', s.get('num_b_simple'))} runs; "
                f"{info.get('note') or info.get('source', '')})")
    if fit is None:
        return _cite(f"The fitted B_crit is not available to compare with {measured}: "
                     + s["steps_fit_reason"], "steps_to_result")
    ratio, interval = s["b_crit_over_b_simple"], s.get("b_crit_over_b_simple_interval")
    ratio_text = f"{ratio:.2g}"
    if interval:
        ratio_text += f" [90% interval {interval[0]:.2g} to {interval[1]:.2g}, conservative]"
        if interval[0] <= 1.0 <= interval[1]:
            verdict = "the interval holds 1, so the data do not tell them apart"
        elif interval[1] <= 2.0 and interval[0] >= 0.5:
            verdict = "they differ, but within a factor of 2 across the whole interval"
        else:
            verdict = (f"they differ: the interval excludes 1"
                       f"{' and reaches beyond a factor of 2' if interval[0] < 0.5 or interval[1] > 2 else ''}")
    else:
        verdict = "no interval (one of the two has none), so no agreement can be claimed"
    return _cite(f"B_crit / B_simple = {ratio_text} (fitted B_crit ≈ {_num(fit.b_crit)}, "
                 f"{measured}): {verdict}. B_crit ≈ B_simple only when the Hessian is well "
                 "conditioned (McCandlish et al. 2018)", "steps_to_result")


def _throughput_sentence(s):
    """Does a larger batch use the hardware better? Examples per second, smallest vs largest B."""
    sizes = list(s["throughput"])
    if not sizes:
        return _cite("Throughput cannot be compared: no finished run reports examples per second",
                     "throughput")

    def one(b):
        v = s["throughput"][b]
        spread = (f"median of {v['num_runs']} runs, range {_num(v['range'][0])} to "
                  f"{_num(v['range'][1])}" if v["range"] else "1 run")
        return f"{_num(v['median'])} examples/s at B = {_num(b)} ({spread})"

    if len(sizes) == 1:
        return _cite(f"Only B = {_num(sizes[0])} reports throughput: {one(sizes[0])}",
                     "throughput")
    first, last = s["throughput"][sizes[0]]["median"], s["throughput"][sizes[-1]]["median"]
    return _cite(f"Throughput goes from {one(sizes[0])} to {one(sizes[-1])} "
                 f"({last / first:.2g}×; wall-clock numbers depend on what else ran on the "
                 "machine)", "throughput")


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
    extension = _extension_sentence(summary)
    if extension:
        out.insert(3, extension)
    if summary["failed"]:
        out.append(_failed_sentence(summary))
    return out


# ---- report.md ------------------------------------------------------------------------------
