"""One adaptive run instead of a study: arms (fixed batch sizes, adaptive batches) over seeds,
compared on what reaching a target cost.

A comparison is a sweep whose variants are *arms* (``fixed_b64``: B = 64 at its best learning
rate; ``adaptive_adascale``: ``train.batch_size_schedule = @adaptive_batch_size()`` with
AdaScale), each trained with several seeds. Per run (``run_measures``):

- **updates to the target**: the interpolated crossing of its validation curve
  (``study_statistics.crossing``, as a study reads S(B)); a run that never reaches the target is
  censored at its last evaluated update;
- **examples to the target**: the rows of every update up to that crossing (``update_sizes``:
  B per update, the last update of every epoch whatever rows remain, and for a run whose B
  changed, the B of each stage of ``batch_size_stages`` from its update on), interpolated within
  the update the crossing falls in;
- **seconds to the target**: the run's training seconds at the crossing, interpolated between
  the curve's points (``curve_seconds``, recorded by ``callbacks.periodic_evaluation``), less
  its start-up (``startup_seconds``: the clock before the first update, mostly tracing the train
  step, a fixed cost of the process and not of the batch-size policy);
- **final metric**: the metric at the end of the run's budget.

Per arm, each quantity over its seeds: mean, sample standard deviation, min, max and n
(``spread``); the quantities to the target count only the seeds that reached it (how many did
is stated), the final metric every finished seed. The
verdict (``verdict``) compares an arm with the reference arm on each quantity: *matched* when
the means differ by at most ``tolerance`` of the reference's mean; *beat* or *lost* by which
mean is better when they differ by more, the seeds' ranges do not overlap and Welch's t-test
says so; *undecided* otherwise (overlapping ranges only say that the seeds cannot tell the arms
apart, not that they are equal). Where the arms' seeds reached the target unequally often,
Fisher's exact test decides on the quantities to the target.

``plot_batch_vs_b_simple`` draws B(t) against c * B_simple(t) of the adaptive runs from their
``adaptive_batch_size/decisions``. Pure functions over finished runs' result dicts; the launch
layer (``experiments.launch.comparison``) reads the runs and writes the files.
"""

import math
import os
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from experiments.analysis import plots  # noqa: E402
from experiments.analysis.steps_to_result import _check_mode  # noqa: E402
from experiments.analysis.study_statistics import crossing  # noqa: E402

# (key, title): the costs an arm is judged on besides its final metric; fewer is better.
COSTS = (("updates", "updates to target"), ("examples", "examples to target"),
         ("seconds", "seconds to target"))
DECISIONS = "adaptive_batch_size/decisions"


# ---- one run ---------------------------------------------------------------------------------

def update_sizes(result):
    """The rows of each of a finished run's updates, in order (a list of ints), or None when
    they cannot be known (stream data, no update count).

    Every epoch holds ``examples_per_epoch`` rows, cut into updates of the B in effect at each
    update (``batch_size_stages``: stage ``i`` has B = ``batch_size`` from 0-based update
    ``update`` on; without stages, ``batch_size`` throughout); the last update of an epoch takes
    whatever rows remain (a ragged last batch, as the pipelines cut arrays). Raises ValueError
    when the stages disagree with that layout (a stage starting in another epoch than its own
    ``epoch`` says)."""
    if result.get("window_length") or result.get("num_streams"):
        return None
    rows = result.get("examples_per_epoch") or result.get("num_train_examples")
    total = result.get("updates")
    if not rows or total is None:
        return None
    stages = sorted(result.get("batch_size_stages") or
                    [{"update": 0, "batch_size": result["batch_size"], "epoch": 0}],
                    key=lambda stage: stage["update"])
    starts = [int(stage["update"]) for stage in stages]
    sizes, epoch_of_update, update, epoch = [], {}, 0, 0
    index = 0
    while update < total:
        left = int(rows)
        while left > 0 and update < total:
            while index + 1 < len(starts) and starts[index + 1] <= update:
                index += 1
            epoch_of_update[update] = epoch
            size = min(int(stages[index]["batch_size"]), left)
            sizes.append(size)
            left -= size
            update += 1
        epoch += 1
    for stage in stages:
        at = int(stage["update"])
        if "epoch" in stage and at in epoch_of_update and epoch_of_update[at] != stage["epoch"]:
            raise ValueError(f"batch_size_stages: the stage from update {at} says epoch "
                             f"{stage['epoch']}, but {rows} rows per epoch put that update in "
                             f"epoch {epoch_of_update[at]}.")
    return sizes


def examples_at(sizes, update):
    """Rows used by the first ``update`` updates (fractional: the crossing's share of the update
    it falls in); None when ``update`` or ``sizes`` is None or ``update`` lies past the sizes."""
    if update is None or sizes is None or update > len(sizes):
        return None
    whole = int(math.floor(update))
    done = float(sum(sizes[:whole]))
    if update > whole and whole < len(sizes):
        done += (update - whole) * sizes[whole]
    return done


def _points(curve):
    return sorted((float(u), float(s)) for u, s in (curve or ()) if s is not None)


def startup_seconds(curve_seconds):
    """The clock's value before the first update (mostly tracing the train step): the first
    point's seconds less its updates at the pace between the first two points; 0 with fewer
    than two points. Clipped to [0, first point's seconds]."""
    points = _points(curve_seconds)
    if len(points) < 2:
        return 0.0
    (u1, s1), (u2, s2) = points[:2]
    if u2 <= u1 or u1 <= 0:
        return 0.0
    return min(max(s1 - u1 * (s2 - s1) / (u2 - u1), 0.0), s1)


def seconds_at(curve_seconds, update):
    """The clock at ``update`` (fractional), linear between the curve's points (before the first
    point: from the start-up value at update 0); None past the last point or without points."""
    points = _points(curve_seconds)
    if update is None or not points:
        return None
    previous = (0.0, startup_seconds(curve_seconds))
    for u, s in points:
        if update <= u:
            u0, s0 = previous
            return s if u == u0 else s0 + (s - s0) * (update - u0) / (u - u0)
        previous = (u, s)
    return None


def final_value(result, metric):
    """The run's ``metric`` at the end of its budget: ``final_validation`` (``val_x`` -> ``x``),
    else ``final_epoch``, else the curve's last point."""
    name = metric[len("val_"):] if metric.startswith("val_") else metric
    for source, key in (("final_validation", name), ("final_epoch", metric)):
        value = (result.get(source) or {}).get(key)
        if value is not None:
            return float(value)
    curve = ((result.get("measurements") or {}).get("curve") or {}).get(metric)
    return float(sorted(curve)[-1][1]) if curve else None


def run_measures(result, metric, target, mode="max"):
    """What reaching ``target`` on ``curve[metric]`` cost one finished run: {updates, examples,
    seconds (after start-up), seconds_with_startup, startup, censored_at, final, budget_updates,
    budget_examples, train_seconds, seed, batch_size_range}."""
    _check_mode(mode)
    measured = result.get("measurements") or {}
    steps, censored_at = crossing((measured.get("curve") or {}).get(metric), target, mode)
    if steps is None and censored_at is None:
        censored_at = result.get("updates")
    sizes = update_sizes(result)
    clock = measured.get("curve_seconds")
    startup = startup_seconds(clock) if clock else None
    with_startup = seconds_at(clock, steps) if clock else None
    staged = [stage["batch_size"] for stage in result.get("batch_size_stages") or ()] \
        or [result.get("batch_size")]
    return {
        "updates": steps,
        "examples": examples_at(sizes, steps),
        "seconds": None if with_startup is None else with_startup - (startup or 0.0),
        "seconds_with_startup": with_startup,
        "startup": startup,
        "censored_at": None if steps is not None else censored_at,
        "final": final_value(result, metric),
        "budget_updates": result.get("updates"),
        "budget_examples": None if sizes is None else float(sum(sizes)),
        "train_seconds": result.get("train_time_s"),
        "seed": result.get("seed"),
        "batch_size_range": None if None in staged else [min(staged), max(staged)],
    }


# ---- arms ------------------------------------------------------------------------------------

def spread(values):
    """{n, mean, sd (sample, None for one value), min, max} of the values that are not None;
    n = 0 (and the rest None) when there are none."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    return {"n": len(present), "mean": float(np.mean(present)),
            "sd": float(np.std(present, ddof=1)) if len(present) > 1 else None,
            "min": min(present), "max": max(present)}


def is_adaptive(result):
    """Whether a run decided its batch while training (``@adaptive_batch_size()``)."""
    return bool(result.get(DECISIONS)) or bool((result.get("batch_size_schedule") or {}).get(
        "max_batch_size"))


def describe_arm(results):
    """How an arm trained, from its first run: adaptive or fixed, B (or the start and B_max),
    b, the optimizer's base learning rate, AdaScale, c."""
    if not results:
        return {}
    first = results[0]
    schedule = first.get("batch_size_schedule") or {}
    out = {"adaptive": is_adaptive(first), "batch_size": first.get("batch_size"),
           "micro_batch_size": first.get("micro_batch_size"),
           "adascale": "adascale/mean_gain" in first or "adascale/progress" in first}
    if out["adaptive"]:
        out.update(scale=schedule.get("scale"), max_batch_size=schedule.get("max_batch_size"),
                   every_n_updates=schedule.get("every_n_updates"))
    return out


def summarize_arm(results, metric, target, mode="max", num_failed=0):
    """One arm over its seeds: {runs: [run_measures], num_runs, num_failed, num_reached,
    censored_at (the largest budget of a run that did not reach), updates/examples/seconds/
    seconds_with_startup/startup/final/train_seconds/budget_examples: spread, batch_size_range,
    description}. ``num_failed``: the arm's runs that failed (a NaN loss): seeds that did not
    reach the target, counted in ``num_runs``."""
    runs = [run_measures(r, metric, target, mode) for r in results]
    out = {"runs": runs, "num_runs": len(runs) + int(num_failed), "num_failed": int(num_failed),
           "num_reached": sum(r["updates"] is not None for r in runs),
           "censored_at": max((r["censored_at"] for r in runs
                               if r["censored_at"] is not None), default=None),
           "description": describe_arm(results)}
    for key in ("updates", "examples", "seconds", "seconds_with_startup", "startup", "final",
                "train_seconds", "budget_examples", "budget_updates"):
        out[key] = spread([r[key] for r in runs])
    ranges = [r["batch_size_range"] for r in runs if r["batch_size_range"]]
    out["batch_size_range"] = [min(lo for lo, _ in ranges), max(hi for _, hi in ranges)] \
        if ranges else None
    return out


VERDICT_P = 0.05  # the chance, with no real difference, of a beat or lost verdict


def verdict(arm, reference, key, lower_is_better=True, tolerance=0.1):
    """'beat', 'matched', 'lost' or 'undecided': ``arm`` against ``reference`` (each a
    ``summarize_arm``) on ``key``, with the reason in words.

    On the quantities to the target (``COSTS``), when the arms' seeds reached the target
    unequally often: beat or lost when Fisher's exact test puts the difference at p <=
    ``VERDICT_P`` (with 3 seeds each not even 0 of 3 against 3 of 3 does: p = 0.1), else
    undecided; where neither reached it, undecided. Otherwise matched when the means differ by
    at most ``tolerance`` x |reference mean|; undecided when they differ by more but the
    min-max ranges over seeds overlap (the seeds do not tell the arms apart, which does not
    make them equal); else beat or lost by the better mean when Welch's t-test (on the
    logarithms of the costs, whose seed noise is multiplicative; on the final metric itself)
    gives p <= ``VERDICT_P``, and undecided when it does not or an arm has a single seed:
    ranges that do not overlap happen without any real difference in 64% of comparisons of one
    seed each, 28% with two, 9% with three."""
    if key in dict(COSTS):
        ours, theirs = arm["num_reached"], reference["num_reached"]
        if ours == 0 and theirs == 0:
            return "undecided", "neither reached the target"
        if ours * reference["num_runs"] != theirs * arm["num_runs"]:  # unequal reach rates
            words = (f"{ours} of {arm['num_runs']} seeds reached the target, against "
                     f"{theirs} of {reference['num_runs']}")
            p = _reached_p_value(ours, arm["num_runs"], theirs, reference["num_runs"])
            if p > VERDICT_P:
                return "undecided", (f"{words}: with so few seeds that happens without any "
                                     f"real difference (Fisher's exact test p = {p:.2g})")
            return ("lost" if ours < theirs else "beat"), f"{words} (p = {p:.2g})"
    a, r = arm[key], reference[key]
    if key == "final" and bool(a["n"]) != bool(r["n"]):
        failed = arm if not a["n"] else reference
        if failed.get("num_runs") and failed.get("num_failed") == failed["num_runs"]:
            words = f"every run of the {'arm' if failed is arm else 'reference'} failed"
            return ("lost" if failed is arm else "beat"), words
    if not a["n"] or not r["n"]:
        return "undecided", "no value to compare"
    difference = a["mean"] - r["mean"]
    relative = 0.0 if difference == 0 else (
        difference / abs(r["mean"]) if r["mean"] else math.inf)
    overlap = a["min"] <= r["max"] and r["min"] <= a["max"]
    words = f"mean {_number(a['mean'])} vs {_number(r['mean'])} ({relative:+.0%})"
    if abs(relative) <= tolerance:
        return "matched", f"{words}; within {tolerance:.0%}"
    if overlap:
        return "undecided", (f"{words}; the seeds' ranges overlap: {a['n']} and {r['n']} seeds "
                             "do not tell the arms apart")
    if a["n"] < 2 or r["n"] < 2:
        return "undecided", (f"{words}; the seeds' ranges do not overlap, but one seed measures "
                             "no spread (set sweep.seeds)")
    p = _welch_p_value(_values(arm, key), _values(reference, key), log=key in dict(COSTS))
    if p > VERDICT_P:
        return "undecided", (f"{words}; the seeds' ranges do not overlap, but with "
                             f"{a['n']} and {r['n']} seeds Welch's t-test gives p = {p:.2g}")
    better = difference < 0 if lower_is_better else difference > 0
    return ("beat" if better else "lost"), (f"{words}; the seeds' ranges do not overlap, "
                                            f"Welch's t-test p = {p:.2g}")


def _values(arm, key):
    return [float(run[key]) for run in arm["runs"] if run.get(key) is not None]


def _welch_p_value(ours, theirs, log):
    """Two-sided p of Welch's t-test (on the logarithms when ``log``); 0 when neither group
    varies (every seed gave the same value: the difference is not noise)."""
    from scipy import stats  # noqa: PLC0415  (imported when a comparison is written)
    a, b = (np.log(ours), np.log(theirs)) if log else (np.asarray(ours), np.asarray(theirs))
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 0.0 if a[0] != b[0] else 1.0
    with warnings.catch_warnings():  # nearly equal seeds: SciPy warns of lost precision
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _reached_p_value(ours, n_ours, theirs, n_theirs):
    """Two-sided p of Fisher's exact test on reached / not reached."""
    from scipy import stats  # noqa: PLC0415
    table = [[ours, n_ours - ours], [theirs, n_theirs - theirs]]
    return float(stats.fisher_exact(table).pvalue)


def compare(arms, reference, metric, target, mode="max", cost_tolerance=0.1,
            metric_tolerance=0.01, failed=None):
    """The whole comparison: {arms: {name: summarize_arm}, order, reference, adaptive (names),
    fixed (names, by B), verdicts: {arm: {key: (verdict, reason)}}, target, metric, mode,
    tolerances}. ``arms``: {name: [finished runs' result dicts]} in the order to report them;
    ``reference``: the arm the others are judged against (the best fixed B); ``failed``:
    {name: runs of the arm that failed}, seeds that did not reach the target (a run stopped by a
    NaN loss lost, it was not left out)."""
    _check_mode(mode)
    if reference not in arms:
        raise ValueError(f"The reference arm {reference!r} is not among the arms "
                         f"{sorted(arms)}.")
    summaries = {name: summarize_arm(results, metric, target, mode,
                                     (failed or {}).get(name, 0))
                 for name, results in arms.items()}
    adaptive = [n for n, s in summaries.items() if s["description"].get("adaptive")]
    fixed = sorted((n for n, s in summaries.items()
                    if s["num_runs"] and not s["description"].get("adaptive")),
                   key=lambda n: summaries[n]["description"].get("batch_size") or 0)
    verdicts = {}
    for name in arms:
        if name == reference:
            continue
        verdicts[name] = {key: verdict(summaries[name], summaries[reference], key, True,
                                       cost_tolerance) for key, _ in COSTS}
        verdicts[name]["final"] = verdict(summaries[name], summaries[reference], "final",
                                          mode == "min", metric_tolerance)
    return {"arms": summaries, "order": list(arms), "reference": reference,
            "adaptive": adaptive, "fixed": fixed, "verdicts": verdicts, "target": target,
            "metric": metric, "mode": mode, "cost_tolerance": cost_tolerance,
            "metric_tolerance": metric_tolerance}


# ---- words, table, figure --------------------------------------------------------------------

def _number(value, digits=3):
    """A readable number: thousands with separators, else ``digits`` significant digits."""
    if value is None:
        return "-"
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _cell(summary, digits=3):
    """'mean ± sd [min–max]' of a ``spread`` (the value alone when every seed gave it); '-'
    when empty."""
    if not summary["n"]:
        return "-"
    text = _number(summary["mean"], digits)
    if summary["n"] > 1 and summary["max"] > summary["min"]:
        text += (f" ± {_number(summary['sd'], 2 if summary['sd'] < 100 else digits)} "
                 f"[{_number(summary['min'], digits)}–{_number(summary['max'], digits)}]")
    return text


def _arm_label(name, summary):
    d = summary["description"]
    if not d:
        return name
    if d.get("adaptive"):
        what = (f"adaptive B from {d.get('batch_size')} (b = {d.get('micro_batch_size')}, "
                f"c = {_number(d.get('scale'))}, B_max = {d.get('max_batch_size')})")
        if d.get("adascale"):
            what += ", AdaScale"
        return f"{name}: {what}"
    return f"{name}: B = {d.get('batch_size')}"


def table(summary):
    """Markdown lines: one row per arm with each quantity to the target as mean ± sd [min–max]
    over the seeds that reached it, how many did, the B range, and the final metric (over every
    finished seed)."""
    metric = summary["metric"]
    lines = [f"| arm | B | seeds reached | updates to target | examples to target | "
             f"seconds to target | final {metric} | budget (examples) | run seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in summary["order"]:
        arm = summary["arms"][name]
        low, high = arm["batch_size_range"] or (None, None)
        sizes = "-" if low is None else f"{low}" if low == high else f"{low}–{high}"
        reference = " (reference)" if name == summary["reference"] else ""
        updates = _cell(arm["updates"]) if arm["num_reached"] or arm["censored_at"] is None \
            else f"> {_number(arm['censored_at'])} (not reached)"
        lines.append(
            f"| {name}{reference} | {sizes} | {arm['num_reached']}/{arm['num_runs']} | "
            f"{updates} | {_cell(arm['examples'])} | {_cell(arm['seconds'])} | "
            f"{_cell(arm['final'], 4)} | {_cell(arm['budget_examples'])} | "
            f"{_cell(arm['train_seconds'])} |")
    return lines


_WHAT = {"updates": "updates to the target", "examples": "examples to the target",
         "seconds": "seconds to the target", "final": "the final {metric}"}


def sentences(summary):
    """The plain-language verdicts: each adaptive arm (then any other arm) against the
    reference on each quantity, and where the smallest and largest fixed B stood."""
    reference = summary["reference"]
    out = []
    names = summary["adaptive"] + [n for n in summary["verdicts"]
                                   if n not in summary["adaptive"]]
    for name in names:
        verdicts = summary["verdicts"][name]
        parts = []
        for key in ("updates", "examples", "seconds", "final"):
            word, reason = verdicts[key]
            what = _WHAT[key].format(metric=summary["metric"])
            parts.append(f"{word} on {what} ({reason})")
        out.append(f"{name} against {reference}: " + "; ".join(parts) + ".")
    fixed, arms = summary["fixed"], summary["arms"]
    if len(fixed) >= 2 and all(arms[n]["updates"]["n"] for n in (fixed[0], fixed[-1])):
        small, large = fixed[0], fixed[-1]
        out.append(
            f"The fixed arms bracket the trade-off: {large} needed "
            f"{_number(arms[large]['updates']['mean'])} updates and "
            f"{_number(arms[large]['examples']['mean'])} examples, {small} "
            f"{_number(arms[small]['updates']['mean'])} updates and "
            f"{_number(arms[small]['examples']['mean'])} examples (means over the seeds that "
            "reached the target).")
    return out


def plot_batch_vs_b_simple(adaptive_runs, path, fixed_sizes=None, crossings=None):
    """B(t) against c * B_simple(t) of adaptive runs: {arm: [result dicts]}; one panel per arm,
    one colour per seed: the batch in effect after each decision (steps) and c times the
    B_simple it was decided from (dots), log scale, with 2b, B_max and the fixed arms' B
    (``fixed_sizes``: {label: B}) as guides, and where each run reached the target
    (``crossings``: {arm: [update or None, one per run]}, a vertical line). Written
    atomically; returns the path."""
    names = [n for n, runs in adaptive_runs.items() if runs]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(5.6 * max(1, len(names)), 4.4),
                             squeeze=False)
    if not names:
        axes[0][0].text(0.5, 0.5, "no adaptive run to show", ha="center", va="center",
                        transform=axes[0][0].transAxes, color="0.35")
        return plots.save_figure(fig, path)
    for ax, name in zip(axes[0], names):
        schedule = {}
        for index, result in enumerate(adaptive_runs[name]):
            schedule = result.get("batch_size_schedule") or schedule
            scale = float(schedule.get("scale") or 1.0)
            rows = [row for row in result.get(DECISIONS) or () if row[1] is not None]
            color = f"C{index % 10}"
            stages = sorted((s["update"], s["batch_size"])
                            for s in result.get("batch_size_stages") or ())
            if stages:
                steps_u = [u for u, _ in stages] + [result.get("updates") or stages[-1][0]]
                steps_b = [b for _, b in stages] + [stages[-1][1]]
                ax.step(steps_u, steps_b, where="post", color=color, linewidth=1.6,
                        label=f"B, seed {result.get('seed')}")
            points = [(u, scale * t / g) for u, g, t, _ in rows if g and g > 0]
            if points:
                ax.plot(*zip(*points), ".", color=color, markersize=4, alpha=0.7,
                        label=f"c·B_simple, seed {result.get('seed')}")
            reached = ((crossings or {}).get(name) or [None] * (index + 1))[index]
            if reached is not None:
                ax.axvline(reached, color=color, linestyle="--", linewidth=0.9, alpha=0.8)
        micro = adaptive_runs[name][0].get("micro_batch_size")
        if schedule.get("max_batch_size"):
            ax.axhline(schedule["max_batch_size"], color="0.4", linestyle=":", linewidth=1,
                       label=f"B_max = {schedule['max_batch_size']}")
        if micro:
            ax.axhline(2 * micro, color="0.6", linestyle=":", linewidth=1,
                       label=f"2b = {2 * micro} (smallest B on one device)")
        for index, (label, size) in enumerate(sorted((fixed_sizes or {}).items(),
                                                     key=lambda item: item[1])):
            ax.axhline(size, color="0.2", linestyle="--", linewidth=0.8, alpha=0.5)
            ax.annotate(label, (0, size), xycoords=("axes fraction", "data"), fontsize=7,
                        color="0.3", va="bottom")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        title = f"{name}: B(t) and c·B_simple(t) at each decision"
        if crossings:
            title += "\n(dashed: where each seed reached the target)"
        ax.set(xlabel="update", ylabel="batch size", title=title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    return plots.save_figure(fig, path)


def markdown(summary, name, figure=None):
    """The report: the verdicts, the table, how each number is read, the figure."""
    direction = "at least" if summary["mode"] == "max" else "at most"
    lines = [f"# {name}: adaptive batch vs fixed batch sizes", "",
             f"Target: {summary['metric']} {direction} {summary['target']:g}. Reference (the "
             f"best fixed B): {summary['reference']}.", "", "## Verdicts", ""]
    lines += [f"- {s}" for s in sentences(summary)]
    lines += ["", "## Per arm (mean ± sd [min–max] over the seeds that reached the target)", ""]
    lines += table(summary)
    lines += ["", "Arms:", ""]
    lines += [f"- {_arm_label(n, summary['arms'][n])}" for n in summary["order"]]
    lines += ["", "Updates to the target: the interpolated crossing of each run's validation "
              "curve. Examples: the rows of every update up to it (ragged last batch of each "
              "epoch counted as it is). Seconds: the run's training clock at the crossing, less "
              "its start-up (the clock before the first update: tracing the train step), "
              "without the curve's own evaluations. Final: the metric at the end of the run's "
              "budget. Matched: the means differ by at most "
              f"{summary['cost_tolerance']:.0%} (costs) or "
              f"{summary['metric_tolerance']:.0%} (final metric) of the reference's. Undecided: "
              "they differ by more but the seeds' min–max ranges overlap (the seeds do not tell "
              "the arms apart). Beat or lost: the ranges apart and Welch's t-test (on the "
              "logarithms of the costs; on the final metric itself) gives p <= "
              f"{VERDICT_P}; else undecided (one seed per arm is always undecided). A different "
              "number of seeds reaching the target decides when Fisher's exact test gives p <= "
              f"{VERDICT_P}."]
    if figure:
        lines += ["", "## B(t) against c·B_simple(t)", "",
                  f"![B(t) and c·B_simple(t)]({os.path.basename(figure)})"]
    return "\n".join(lines) + "\n"
