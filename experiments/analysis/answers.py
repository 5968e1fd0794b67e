"""Plain-language answers of a study report, each citing the figure it rests on.

``sentences(summary)`` answers the project's questions for one study (does my batch size hurt my
model? how should the learning rate follow the batch size? what batch size should I pick? does
the measured noise scale predict where larger batches stop paying?) from a
``study_report.summarize`` dict. Each answer that cannot be given says why.
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


def _hurt_sentence(s):
    """Does my batch size hurt my model? Best final metric at the smallest vs the largest B."""
    per_batch, metric = s["per_batch"], s["metric"]
    if not per_batch:
        return _cite(f"Whether batch size hurts the model cannot be determined: no finished run "
                     f"has a final {metric}", "final_metric")
    if len(per_batch) == 1:
        (b, v), = per_batch.items()
        return _cite(f"Whether batch size hurts the model cannot be determined: only one batch "
                     f"size (B = {_num(b)}) finished, with final {metric} {metric_name(v['final'])}",
                     "final_metric")
    small, large = min(per_batch), max(per_batch)
    a, z = per_batch[small]["final"], per_batch[large]["final"]
    change = abs(z - a) / abs(a) if a else (0.0 if z == a else math.inf)
    tuned = "with the best learning rate tried at each batch size, " if s["lr_searched"] else ""
    numbers = (f"{tuned}final {metric} is {metric_name(z)} at B = {_num(large)} against "
               f"{metric_name(a)} at B = {_num(small)}")
    if change < NEGLIGIBLE_CHANGE:
        verdict = f"No, batch size does not hurt the model here: {numbers}, about the same"
    elif better(a, z, s["mode"]):
        verdict = (f"Yes, the largest batch size hurts the model: {numbers}, "
                   f"{metric_name(abs(z - a))} worse ({change:.1%})")
    else:
        verdict = (f"No, the largest batch size does not hurt the model: {numbers}, "
                   f"{metric_name(abs(z - a))} better ({change:.1%})")
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
                 f"{metric_name(points[small])} at B = {_num(small)}, {metric_name(points[large])} at "
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
            f"updates to reach {s['metric']} {relation} {metric_name(s['target'])}: "
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
    when = s.get("b_simple_when", "at the end of training")
    measured = (f"the measured B_simple ≈ {_num(b_simple)} (median of {s['num_b_simple']} "
                f"runs, {when})")
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
