"""Plain-language answers of a study report, each citing the figure it rests on.

``sentences(summary)`` answers the project's questions for one study (does my batch size hurt my
model? how should the learning rate follow the batch size? what batch size should I pick? does
the measured noise scale predict where larger batches stop paying?) from a
``study_report.summarize`` dict. Each answer that cannot be given says why. Every number a
sentence states comes with its interval, at the level it really has (90% where the data allow
it), or its seeds' range, and the number of runs behind it. A verdict inside seed noise, or
resting on single seeds, is "Cannot tell"; a B_crit the data do not pin down is a bound.
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
BEND_P = 0.05  # a best learning rate whose log-log points bend more surely than this: no one law
# The S(B) fit is not an answer when it misses its points by more than this RMS in log steps
# (0.2: 22%, twice the 10% run-to-run noise of steps the coverage checks assume), ...
MISFIT_LIMIT = 0.2
# ... or when a curve that may rise with B fits better at this p-value (fits.rise_p_value):
# measured false alarms at p < 0.05 on synthetic falling curves with 10-15% noise: 2.7-3.7% of
# 300 (7 sizes), 1.5% of 200 (4 sizes), 2% of 200 (8 sizes); the U-shaped [2000 ... 260 ...
# 1200] over B = 8 ... 512 gives p = 0.0025.
RISE_P = 0.05
# ... and only where the measured S climbs above its lowest value by more than twice the fit's
# RMS misfit and at least this much (log steps, about 5%): a rise in the data, not in the model.
MIN_RISE = 0.05
# What an unbounded upper end of an interval means, per quantity.
OPEN_END = {"steps": "more than the budget",
            "b_simple": "unbounded (|G|² not distinguishable from 0)",
            "b_crit": "unbounded"}


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


def _level_text(level):
    """0.9 -> "90%", 0.875 -> "87.5%"."""
    return f"{100.0 * level:.1f}".rstrip("0").rstrip(".") + "%"


def _interval_text(pair, fmt=None, open_end="more than the budget", level=0.9):
    """" [90% interval lo to hi]" ("" when there is none). An infinite upper end reads
    ``open_end``, which depends on the quantity (``OPEN_END``: for steps "more than the budget",
    for B_simple "|G|² not distinguishable from 0"); an infinite lower end "unbounded"."""
    fmt = fmt or _num
    if pair is None:
        return ""
    lo, hi = pair
    low = fmt(lo) if lo is not None and math.isfinite(lo) else "unbounded"
    if hi is None or not math.isfinite(hi):
        return f" [{_level_text(level)} interval: {low} to {open_end}]"
    return f" [{_level_text(level)} interval {low} to {fmt(hi)}]"


def _range_text(pair, n):
    """"(median of n seeds, range lo to hi)" or "(1 seed, no spread measured)"."""
    if n <= 1 or pair is None:
        return "(1 seed, no spread measured)"
    return f"(median of {n} seeds, range {metric_name(pair[0])} to {metric_name(pair[1])})"


SEPARATION_P = 0.05  # the chance, with no real difference, of a verdict on seeds' ranges


def separation_p_value(n, m):
    """Probability that the ranges of n and m seeds do not overlap, either way round, when both
    come from one distribution: 2 n! m! / (n + m)! (every order of the n + m values is equally
    likely, and 2 of the C(n + m, n) ways to split the ranks keep the groups apart). 1/3 with 2
    seeds each, 1/10 with 3, 1/35 with 4."""
    return min(1.0, 2.0 / math.comb(n + m, n))


def _seed_doubt(entries, range_key):
    """Why two batch sizes' medians cannot be told apart, or None: a single seed at either (no
    spread measured), seeds' ranges that overlap (the difference is within seed noise), or
    ranges apart but with too few seeds for that to mean much (``separation_p_value`` above
    ``SEPARATION_P``: with 2 seeds each a third of all comparisons without any real difference
    would give a verdict)."""
    single = [b for b, v in entries.items() if v["num_seeds"] <= 1 or v[range_key] is None]
    if single:
        return (f"not measured with several seeds (1 seed at B = "
                f"{', '.join(_num(b) for b in single)}; set study.seeds)")
    (lo_a, hi_a), (lo_b, hi_b) = (v[range_key] for v in entries.values())
    if not (hi_a < lo_b or hi_b < lo_a):
        return "within seed noise (the seeds' ranges overlap)"
    n, m = (v["num_seeds"] for v in entries.values())
    p = separation_p_value(n, m)
    if p > SEPARATION_P:
        return (f"the seeds' ranges do not overlap, but with {n} and {m} seeds that happens "
                f"without any real difference with probability {p:.2g} (4 seeds at each make it "
                f"{separation_p_value(4, 4):.2g}; set study.seeds)")
    return None


def _hurt_sentence(s):
    """Does my batch size hurt my model? Best setting's median final metric, smallest vs largest
    B, with the seeds' range; "Cannot tell" unless both have enough seeds whose ranges do not
    overlap (``_seed_doubt``: a verdict inside seed noise would be a coin flip stated as a
    finding)."""
    per_batch, metric = s["per_batch"], s["metric"]
    diverged = s.get("diverged") or {}
    left_out = _diverged_text(diverged, metric)
    if not per_batch:
        return _cite(f"Whether batch size hurts the model cannot be determined: no finished run "
                     f"has a finite final {metric}{left_out}", "final_metric")
    if diverged and max(diverged) > max(per_batch):
        large, small = max(diverged), min(per_batch)
        v = per_batch[small]
        return _cite(f"Yes, the largest batch size hurts the model: every finished run at "
                     f"B = {_num(large)} diverged ({diverged[large]} run(s), final {metric} not "
                     f"finite), against final {metric} {metric_name(v['final'])} at "
                     f"B = {_num(small)} {_range_text(v['final_range'], v['num_seeds'])}"
                     f"{left_out}", "final_metric")
    if len(per_batch) == 1:
        (b, v), = per_batch.items()
        return _cite(f"Whether batch size hurts the model cannot be determined: only one batch "
                     f"size (B = {_num(b)}) finished, with final {metric} {metric_name(v['final'])} "
                     f"{_range_text(v['final_range'], v['num_seeds'])}{left_out}", "final_metric")
    small, large = min(per_batch), max(per_batch)
    a, z = per_batch[small]["final"], per_batch[large]["final"]
    change = abs(z - a) / abs(a) if a else (0.0 if z == a else math.inf)
    tuned = "with the best learning rate tried at each batch size, " \
        if s.get("lr_compared", s["lr_searched"]) else ""
    numbers = (f"{tuned}final {metric} is {metric_name(z)} at B = {_num(large)} "
               f"{_range_text(per_batch[large]['final_range'], per_batch[large]['num_seeds'])} "
               f"against {metric_name(a)} at B = {_num(small)} "
               f"{_range_text(per_batch[small]['final_range'], per_batch[small]['num_seeds'])}")
    direction = "worse" if better(a, z, s["mode"]) else "better"
    difference = (f"{metric_name(abs(z - a))} {direction} ({change:.1%})" if z != a
                  else "the same")
    doubt = _seed_doubt({b: per_batch[b] for b in (small, large)}, "final_range")
    if doubt:
        verdict = (f"Cannot tell whether the largest batch size hurts the model: {numbers}, "
                   f"{difference}, {doubt}")
    elif change < NEGLIGIBLE_CHANGE:
        # the seeds tell the two apart, but by less than what the report counts as a change:
        # said as measured, with the threshold, not as "the same"
        verdict = (f"No, batch size does not hurt the model here beyond "
                   f"{NEGLIGIBLE_CHANGE:.1%}: {numbers}, {difference}, a difference the seeds "
                   f"resolve but below the {NEGLIGIBLE_CHANGE:.1%} this report counts as a "
                   f"change")
    elif direction == "worse":
        verdict = f"Yes, the largest batch size hurts the model: {numbers}, {difference}"
    else:
        verdict = f"No, the largest batch size does not hurt the model: {numbers}, {difference}"
    return _cite(verdict + left_out, "final_metric")


def _diverged_text(diverged, metric):
    """"; left out ...: k run(s) at B = x" for the runs whose final metric is not finite ("" when
    none): they are in no median, and a reader must not take the medians for every run."""
    if not diverged:
        return ""
    parts = ", ".join(f"{n} run(s) at B = {_num(b)}" for b, n in sorted(diverged.items()))
    return f"; left out because they diverged (final {metric} not finite): {parts}"


def _gap_sentence(s):
    """How the generalization gap of the best setting changes from the smallest to the largest B.

    The gap is validation minus training as the gap callback measures it (``gap_<m>``, both
    sides in inference mode; ``hparams.final_metrics``): runs without that callback have none.
    For a metric where higher is better (accuracy) a more negative gap is a larger one; for a
    loss a more positive one. A trend is only stated when both batch sizes have enough seeds
    whose ranges do not overlap (``_seed_doubt``)."""
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

    doubt = _seed_doubt({b: points[b] for b in (small, large)}, "gap_range")
    if doubt:
        return _cite(f"Whether the generalization gap ({convention}) of the best setting grows "
                     f"with batch size cannot be told: {one(small)}, {one(large)}, {doubt}",
                     "generalization_gap")
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
# Why a launch with the switch on extended nothing (study.json's extension_settings "held").
_HELD = {"shard": "not extended under --shard: once every shard is done, relaunch without "
                  "--shard (the same --run_name) to extend",
         "running": "not extended while runs were live in another launch: relaunch once they "
                    "are done to extend"}


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
    held = _HELD.get(info.get("held"), "not extended")
    if not added:
        text = "Grid extension (study.extend_learning_rates): no learning rate was added"
        if not edges:
            return _cite(text + ": no batch size's best learning rate was at the grid's edge",
                         "best_lr")
        limit = info.get("max_extensions")
        still = ", ".join(
            f"B = {_num(b)} ({_STOPS.get(stopped.get(b), held).format(limit=limit)})"
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
            why = _STOPS.get(stopped.get(b), _HELD.get(
                info.get("held"), "extension off on the last launch")).format(
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
    spread = (f" [90% interval {_exponent_text(interval[0])} to "
              f"{_exponent_text(interval[1])}]" if interval
              else " (no interval: two points fix the line)")
    inside = [n for p, n in names.items() if interval and interval[0] <= p <= interval[1]]
    chosen = ('reaches the target in the fewest updates' if s['lr_fit_source'] == 'steps to target'
              else 'gives the best final metric')
    exponent = f"B^{_exponent_text(fit.exponent)}"
    misfit = (f"; RMS misfit {fit.residual_rms:.2f} in log learning rate"
              if fit.num_points > 2 else "")
    if fit.curvature_p is not None and fit.curvature_p < BEND_P:
        sizes = sorted(s["best"] if s["lr_fit_source"] == "steps to target" else s["per_batch"])
        text = (f"The best learning rate (the one that {chosen}) does not follow one power law "
                f"over B = {_num(sizes[0])}–{_num(sizes[-1])}: its exponent changes along the "
                f"range (p = {fit.curvature_p:.2g} for a bend in log-log{misfit}), so the "
                f"one exponent fitted over it ({_exponent_text(fit.exponent)}) names no rule; "
                "read the figure for where it changes")
        text += _one_setting_text(s, "")
        return _cite(text + _edge_text(s), "best_lr")
    if not interval and fit.num_points <= 2:
        # Two points fix any line: with no interval, every exponent near this one fits as well.
        text = (f"The best learning rate (the one that {chosen}) goes as {exponent} between the "
                f"two batch sizes that give it; two points fix the line, so it has no interval "
                f"and names no rule (add batch sizes for one)")
        text += _one_setting_text(s, "")
        return _cite(text + _edge_text(s), "best_lr")
    text = (f"The best learning rate (the one that {chosen}) follows {exponent}{spread} (power "
            f"law over {fit.num_points} batch sizes{misfit}): closest to {names[nearest]}, over "
            f"{others}")
    if interval:
        text += (f"; the interval holds {' and '.join(inside)}" if inside
                 else "; the interval holds none of the three rules")
    text += _one_setting_text(s, ", so this exponent is the configured rule, not a measured "
                                 "optimum")
    return _cite(text + _edge_text(s), "best_lr")


def _one_setting_text(s, consequence):
    """"; but each batch size tried only one learning rate and rule" (with ``consequence``),
    or, where it tried several but only one finished, that the others failed; "" otherwise."""
    if not s["lr_searched"]:
        return f"; but each batch size tried only one learning rate and rule{consequence}"
    if not s.get("lr_compared", True):
        return ("; but at no batch size did more than one learning rate and rule finish (the "
                f"runs at the others failed){consequence}")
    return ""


def _exponent_text(value):
    """Two decimals, without a sign on a zero ("0.00", never "-0.00")."""
    text = f"{value:.2f}"
    return text[1:] if text == "-0.00" else text


def _steps_runs(s):
    return f"{s['num_steps_runs']} runs on {len(s['best'])} batch sizes"


def _fit_basis(s):
    """What the S(B) fit rests on, and how far it misses its points."""
    relation = ">=" if s["mode"] == "max" else "<="
    rms = s["steps_fit"].residual_rms
    return (f"fit S(B) = S_min (1 + B_crit / B) to the median over seeds of the best learning "
            f"rate's updates to reach {s['metric']} {relation} {metric_name(s['target'])}, "
            f"{_steps_runs(s)}; RMS misfit {rms:.3f} in log steps, about {math.expm1(rms):.0%}")


def _doubling_scale(fit):
    """The batch size where doubling stops paying, per unit of B_crit (a constant: 2/3 at 30%)."""
    return batch_size_where_doubling_saves(fit, DOUBLING_FRACTION) / fit.b_crit if fit.b_crit \
        else 0.0


def _measured_span(s):
    measured = [b for b, v in s["best"].items() if v["steps"] is not None]
    return min(measured), max(measured)


def _measured_rise(s, lowest):
    """How far (log steps) the measured S climbs above its fewest updates at larger B; 0 when no
    larger B was measured. The rise test alone also fires on a floor the model misses
    systematically (the NQM's S(B) levels off at 10.1 where the fit says 9.4), which is no
    rise."""
    floor = s["best"][lowest]["steps"]
    above = [v["steps"] for b, v in s["best"].items() if b > lowest and v["steps"] is not None]
    return max((math.log(v / floor) for v in above), default=0.0)


def _never_reached_above(s, lowest, beyond):
    """(B, budget) of a batch size larger than ``lowest`` that never reached the target within a
    budget above ``beyond`` updates, or None: its S is more than that budget, so S rises
    (the fit and the rise test see only the batch sizes that reached the target)."""
    for b, v in sorted(s["best"].items()):
        if b > lowest and v.get("steps") is None and v.get("censored") \
                and (v.get("budget") or 0) > beyond:
            return b, v["budget"]
    return None


def _fit_not_an_answer(s):
    """Why the fitted B_crit is no answer at all, or None: S rises with B (the model only
    falls) or the fit misses its points by more than ``MISFIT_LIMIT``."""
    checks, fit = s.get("steps_fit_checks"), s["steps_fit"]
    if fit is None or checks is None:
        return None
    rise_p, lowest = checks["rise_p"], checks["lowest_at"]
    floor = s["best"][lowest]["steps"]
    least_rise = max(2 * fit.residual_rms, MIN_RISE)
    never = _never_reached_above(s, lowest, floor * math.exp(least_rise))
    if never:
        evidence = f"B = {_num(never[0])} did not reach the target in {_num(never[1])} updates"
    elif rise_p is not None and rise_p < RISE_P and _measured_rise(s, lowest) > least_rise:
        evidence = f"p = {rise_p:.2g} against a curve that only falls"
    else:
        evidence = None
    if evidence:
        return (f"S(B) rises above B = {_num(lowest)} (the fewest updates, {_num(floor)}, were "
                f"measured there; {evidence}): the model S_min (1 + B_crit / B) does not hold "
                "here; B_crit is not reported as an answer")
    if fit.residual_rms > MISFIT_LIMIT:
        return (f"the fit misses the measured points by {fit.residual_rms:.3f} RMS in log steps "
                f"(more than {MISFIT_LIMIT}): the model S_min (1 + B_crit / B) does not describe "
                "these S(B); B_crit is not reported as an answer")
    return None


def _beyond_text(s):
    """The answer when the data do not rule out a B_crit beyond the measured range (profile test,
    ``fits.b_crit_limits``): a bound instead of a number; None when they do."""
    checks = s.get("steps_fit_checks")
    if checks is None:
        return None
    limits = checks["limits"]
    low, high = _measured_span(s)
    span, level = f"B = {_num(low)}–{_num(high)}", _level_text(limits.level)
    scale = _doubling_scale(s["steps_fit"])
    if limits.above and limits.below:
        return (f"S(B) does not determine B_crit within {span}: both no bend (S ∝ 1/B) and no "
                f"scaling (S flat) fit as well as the best fit at {level}; B_crit is not reported")
    if limits.above:
        return (f"No bend within {span}: B_crit above ~{_num(limits.low)} (every larger B_crit, "
                f"and S ∝ 1/B with none, fits at {level}), so doubling the batch still saves at "
                f"least {DOUBLING_FRACTION:.0%} of the updates up to B ≈ "
                f"{_num(scale * limits.low)} or beyond; S_min is not determined (only "
                "S_min · B_crit is)")
    if limits.below:
        intervals = s["steps_intervals"]
        where = (f"everywhere in {span}" if scale * limits.high <= low
                 else f"above B ≈ {_num(scale * limits.high)} at most")
        return (f"S(B) flat within {span}: B_crit below ~{_num(limits.high)} (every smaller "
                f"B_crit, and none, fits at {level}), so doubling the batch saves less than "
                f"{DOUBLING_FRACTION:.0%} of the updates {where}; S_min ≈ "
                f"{_num(s['steps_fit'].s_min)}"
                f"{_interval_text(intervals and intervals.s_min, level=intervals.level)}")
    return None


def _seed_interval_text(s):
    """What the per-B points' intervals are: the seeds' order statistics, at the level that
    their number of seeds gives (``study_statistics.median_interval``)."""
    levels = sorted({(v["num_seeds"], v.get("steps_interval_level")) for v in s["best"].values()
                     if v.get("steps_interval") is not None and v.get("steps_interval_level")})
    if not levels:
        seeds = [v.get("num_seeds") or 1 for v in s["best"].values()]
        if seeds and max(seeds) <= 1:
            return ("; each batch size's point is one seed of its best setting, with no "
                    "interval (set study.seeds for one)")
        return ""
    parts = ", ".join(f"{_level_text(level)} with {n} seeds" for n, level in levels)
    chosen = (" (of the chosen setting's seeds: picking the best of several settings on the "
              "same seeds is not accounted for)") if s.get("lr_compared") else ""
    return (f"; each batch size's interval over its seeds (figure bars) is an order-statistic "
            f"interval of the median that holds it with probability {parts}{chosen}")


def _b_crit_numbers(s):
    """The fitted S_min, B_crit and the doubling threshold with their intervals."""
    fit, intervals = s["steps_fit"], s["steps_intervals"]
    level = intervals.level if intervals else 0.9

    def interval(pair):
        return _interval_text(pair, open_end=OPEN_END["b_crit"], level=level)

    threshold, scale = batch_size_where_doubling_saves(fit, DOUBLING_FRACTION), _doubling_scale(fit)
    text = (f"Above B ≈ {_num(threshold)}"
            f"{interval(intervals and tuple(scale * x for x in intervals.b_crit))} doubling the "
            f"batch saves less than {DOUBLING_FRACTION:.0%} of the updates: S_min ≈ "
            f"{_num(fit.s_min)}{interval(intervals and intervals.s_min)}, B_crit ≈ "
            f"{_num(fit.b_crit)}{interval(intervals and intervals.b_crit)} (t intervals in log "
            "space); at B ≈ B_crit the fitted model needs twice the minimum updates and twice "
            "the minimum examples, the usual compromise (the interval is the fitted parameter's: "
            "where the model misses the measured curve, the real doubling point can lie outside "
            "it)")
    low, high = _measured_span(s)
    if not low <= threshold <= high:
        text += (f" (B ≈ {_num(threshold)} is an extrapolation: the measured batch sizes span "
                 f"{_num(low)} to {_num(high)})")
    return text


def _pick_sentence(s):
    """What batch size should I pick? Where doubling B stops paying, from the S(B) fit; a bound
    instead of a number when B_crit lies beyond the sizes tried, and no B_crit at all when the
    model does not hold (S rises with B, or the fit misses its points)."""
    censored = sorted(b for b, v in s["best"].items() if v["censored"])
    not_reached = ""
    if censored:
        budgets = [s["best"][b].get("budget") for b in censored]
        budget_text = (f" ({', '.join('?' if u is None else _num(u) for u in budgets)} "
                       "updates)") if any(u is not None for u in budgets) else ""
        not_reached = (f"; at B = {', '.join(_num(b) for b in censored)} the median seed did not "
                       f"reach the target within the budget{budget_text}")
    if s["steps_fit"] is None:
        return _cite("What batch size to pick cannot be read from steps to result: "
                     + s["steps_fit_reason"] + not_reached + _seed_interval_text(s),
                     "steps_to_result")
    problem = _fit_not_an_answer(s)
    answer = (f"What batch size to pick cannot be read from the S(B) fit: {problem}" if problem
              else _beyond_text(s) or _b_crit_numbers(s))
    text = f"{answer} ({_fit_basis(s)}){_seed_interval_text(s)}"
    if censored:
        text += (f"{not_reached}, so {'it enters' if len(censored) == 1 else 'they enter'} the "
                 "fit as \"more than the budget\"")
    return _cite(text, "steps_to_result")


def b_crit_withheld(s):
    """True when the report states no number for B_crit (a bound or nothing instead)."""
    return s["steps_fit"] is not None and bool(_fit_not_an_answer(s) or _beyond_text(s))


def _noise_sentence(s):
    """Does the fitted B_crit agree with the gradient noise scale B_simple measured in training?
    A ratio with an interval."""
    fit, b_simple = s["steps_fit"], s["b_simple"]
    info = s.get("b_simple_info") or {}
    if b_simple is None:
        missing = info.get("note") or ("no finished run measured B_simple (turn on the gradient "
                                       "noise scale measurement)")
        have = f"the fitted B_crit ≈ {_num(fit.b_crit)}" if fit and not b_crit_withheld(s) \
            else "B_crit"
        return _cite(f"{have[0].upper()}{have[1:]} cannot be compared with the measured gradient "
                     f"noise scale: {missing}", "steps_to_result")
    interval = _interval_text(s.get("b_simple_interval"), open_end=OPEN_END["b_simple"],
                              level=info.get("interval_level") or s.get("level", 0.9))
    measured = (f"B_simple ≈ {_num(b_simple)}{interval} near "
                f"the target ({info.get('num_runs', s.get('num_b_simple'))} runs; "
                f"{info.get('note') or info.get('source', '')})")
    if fit is None:
        return _cite(f"The fitted B_crit is not available to compare with {measured}: "
                     + s["steps_fit_reason"], "steps_to_result")
    if b_crit_withheld(s):
        return _cite(f"The fitted B_crit is not an answer here (see what batch size to pick), so "
                     f"it is not compared with {measured}", "steps_to_result")
    ratio, interval = s["b_crit_over_b_simple"], s.get("b_crit_over_b_simple_interval")
    if ratio is None:  # B_simple is 0: the runs' tr(Sigma) estimates did not resolve the noise
        return _cite(f"B_crit / B_simple cannot be formed (fitted B_crit ≈ {_num(fit.b_crit)}, "
                     f"{measured}): the measured noise is not told from 0, so the data say "
                     "nothing about their agreement", "steps_to_result")
    ratio_text = f"{ratio:.2g}"
    if interval:
        upper = f"{interval[1]:.2g}" if math.isfinite(interval[1]) else "unbounded"
        level = ratio_level(s)
        ratio_text += (f" [interval {interval[0]:.2g} to {upper}, covering at least "
                       f"{_level_text(level)}: its ends combine the two intervals]")
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


def ratio_level(s):
    """The level B_crit / B_simple's interval holds at least: it divides the ends of B_crit's
    and B_simple's intervals, so it holds whenever both do, with probability at least
    1 - (1 - l_crit) - (1 - l_simple) (Bonferroni): 80% from two 90% intervals."""
    info = s.get("b_simple_info") or {}
    simple = info.get("interval_level") or info.get("level") or s.get("level", 0.9)
    crit = (s.get("steps_intervals").level if s.get("steps_intervals") is not None
            else s.get("level", 0.9))
    return max(0.0, 1.0 - (1.0 - crit) - (1.0 - simple))


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
                 f"({last / first:.2g}×; examples over each run's whole training time, its "
                 "first epoch's tracing and every evaluation included, so short runs read low "
                 "(the throughput measurement's own examples/s, per epoch, reads higher); "
                 "wall-clock numbers depend on what else ran on the machine)", "throughput")


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
    if summary.get("batch_norm_stale"):
        out.append(_batch_norm_sentence(summary))
    if summary["failed"]:
        out.append(_failed_sentence(summary))
    return out


def _batch_norm_sentence(s):
    """Where BatchNormalization's moving averages were still near their initial values: the
    inference-mode numbers there (validation, the target's crossing) are BatchNormalization's
    doing as much as the batch size's (``experiments.run.batch_norm_statistics``)."""
    stale = s["batch_norm_stale"]
    sizes = ", ".join(f"{b} ({100 * w:.0f}%)" for b, w in stale.items())
    return (f"BatchNormalization's moving averages were stale at the end of the runs at B = "
            f"{sizes}: their initial values still weighed that much, since a large batch makes "
            "few updates of them. Those runs' validation numbers normalise with statistics far "
            "from the ones training used, so a worse result there may be BatchNormalization's "
            "rather than the batch size's; lower the momentum (mlp.batch_norm_momentum) or "
            "split the batch into micro-batches, and re-run (each run's log has the numbers)")


# ---- report.md ------------------------------------------------------------------------------
