"""Figures for a batch-size study: each function writes one PNG and returns its path.

The Agg backend is selected here so that reports render on machines without a display (CI,
remote GPUs) and never open a window. Every function draws a readable figure even when its data
is missing (e.g. no run reached the target), with a note saying so, so that a report can always
link the same set of figures.
"""

import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

_DPI = 110


def save_figure(fig, path):
    """Writes the PNG atomically (a temporary file renamed into place): shards of one study
    rebuild the report in the same directory, and one may read a figure while another writes
    it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    temporary = f"{path}.tmp-{os.getpid()}.png"
    try:
        fig.savefig(temporary, dpi=_DPI)
        os.replace(temporary, path)
    finally:
        plt.close(fig)
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def _note(ax, text):
    """Say on the axes why there is nothing to draw, instead of leaving a blank frame."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", wrap=True,
            fontsize=10, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def _span(values, factor=1.5):
    """A geometric grid a little wider than ``values``, for drawing fitted curves."""
    return np.geomspace(min(values) / factor, max(values) * factor, 200)


def _finished_with(records, key):
    """(batch size, value) of finished runs whose ``key`` (a top-level field) is present."""
    return [(r["batch_size"], r[key]) for r in records
            if r.get("status") == "finished" and r.get(key) is not None]


def _by_batch(points, reduce=statistics.fmean):
    """(sorted batch sizes, ``reduce`` of the values at each): one line point per batch size."""
    by_batch = {}
    for batch_size, value in points:
        by_batch.setdefault(batch_size, []).append(value)
    sizes = sorted(by_batch)
    return sizes, [reduce(by_batch[b]) for b in sizes]


def _batch_axis(ax, sizes):
    """B on a log axis in base 2 with plain tick labels (8, 16, ... not 2^3 or 1e1)."""
    from matplotlib import ticker  # noqa: PLC0415

    ax.set_xscale("log", base=2)
    sizes = sorted({int(b) for b in sizes if b})
    if sizes:
        step = max(1, len(sizes) // 8)  # at most about 8 labels: none overlap
        ax.set_xticks(sizes[::step])
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_locator(ticker.NullLocator())


def _plain_log_y(ax):
    from matplotlib import ticker  # noqa: PLC0415

    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def plot_steps_to_result(best, fit, path, b_simple=None, target=None, intervals=None,
                         b_crit_is_answer=True):
    """Log-log updates-to-target vs B: per-B median over seeds (bars: an order-statistic
    interval of that median, whose level depends on the number of seeds: report.json's
    ``steps_interval_level``), censored batch sizes (triangles at their budget: "more than"), the
    S(B) fit, perfect scaling, B_crit with its interval. When the report withholds B_crit
    (``b_crit_is_answer`` False: a bound, a rise or a poor fit) the fit's curve is drawn as what
    was fitted, and no B_crit line or band claims a number the text does not.

    The perfect-scaling line (S proportional to 1/B through the smallest batch) shows how much of
    the ideal speed-up each larger batch still gets; B_crit marks where the fit bends away.
    """
    fig, ax = plt.subplots(figsize=(6.8, 4.8))
    title = "Steps to result vs batch size"
    if target:
        title += f"\n(updates until {target})"
    ax.set(xlabel="batch size B", ylabel="updates to reach the target", title=title)
    points = sorted((b, v["steps"], v.get("steps_interval")) for b, v in best.items()
                    if v.get("steps") is not None)
    censored = sorted((b, v["budget"]) for b, v in best.items()
                      if v.get("censored") and v.get("budget"))
    if not points:
        _note(ax, "no run reached the target:\nno steps to result to show")
        return save_figure(fig, path)
    sizes, steps, spreads = zip(*points)
    low = [s - (iv[0] if iv else s) for s, iv in zip(steps, spreads)]
    high = [((iv[1] if np.isfinite(iv[1]) else s) if iv else s) - s
            for s, iv in zip(steps, spreads)]
    bars = any(spreads)
    ax.errorbar(sizes, steps, yerr=[low, high], fmt="o", color="C0", capsize=3, zorder=3,
                label=("median over seeds, best lr per B (bars: interval of the median, "
                       "its level per B in the report)") if bars
                else "one seed per setting, best lr per B (no interval)")
    if censored:
        ax.plot(*zip(*censored), "^", color="C3", zorder=3,
                label="median seed not there: more than this budget")
    every = list(sizes) + [b for b, _ in censored]
    grid = _span(every)
    ax.plot(grid, steps[0] * sizes[0] / grid, "--", color="0.5", label="perfect scaling (S ∝ 1/B)")
    if fit is not None and not b_crit_is_answer:
        ax.plot(grid, fit.steps(grid), "-", color="C1", alpha=0.5,
                label="fit S_min (1 + B_crit / B): no B_crit answer (see the report)")
    elif fit is not None:
        ax.plot(grid, fit.steps(grid), "-", color="C1",
                label=f"fit: S_min = {fit.s_min:.3g}, B_crit = {fit.b_crit:.3g}")
        ax.axhline(fit.s_min, color="C1", linestyle=":", linewidth=1)
        ax.axvline(fit.b_crit, color="C1", linestyle="-.", linewidth=1, label="B_crit (fit)")
        if intervals is not None:
            lo, hi = intervals.b_crit
            ax.axvspan(max(lo, grid[0]), min(hi, grid[-1]), color="C1", alpha=0.12,
                       label=f"B_crit 90% interval {lo:.3g} to {hi:.3g}")
    if b_simple is not None and b_simple > 0:  # 0 (noise not resolved): nothing on a log axis
        ax.axvline(b_simple, color="C2", linestyle="-.", linewidth=1,
                   label=f"B_simple near the target = {b_simple:.3g}")
    ax.set_yscale("log")
    every_steps = list(steps) + [c for _, c in censored]
    ax.set_ylim(min(every_steps) / 3, max(every_steps) * 3)
    _batch_axis(ax, every)
    _plain_log_y(ax)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _group_label(group_key, value):
    name = {"learning_rate": "lr"}.get(group_key, group_key)
    return f"{name} = {value:.3g}" if isinstance(value, float) else f"{name} = {value}"


def _group_order(value):
    """Groups sort by value, with missing values last and mixed types kept apart."""
    return (value is None, isinstance(value, str), value if value is not None else 0)


def plot_metric_vs_batch(records, metric_key, path, group_key="learning_rate", ylabel=None,
                         mode=None):
    """Final ``metric_key`` (from each record's "final") vs B, one line per ``group_key`` value.

    Seeds of the same group and batch size are drawn as points and joined at their median, so the
    seed-to-seed spread is visible next to the batch-size effect. With ``mode`` ("max" or "min",
    which way is better) a black line joins the best setting's median at each B: the tuned
    comparison the report states.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    groups = {}
    for r in records:
        value = (r.get("final") or {}).get(metric_key)
        if r.get("status") == "finished" and value is not None:
            groups.setdefault(r.get(group_key), []).append((r["batch_size"], value))
    if not groups:
        _note(ax, f"no finished run has a final {metric_key}")
    for index, group in enumerate(sorted(groups, key=_group_order)):
        color = f"C{index % 10}"
        sizes, values = zip(*groups[group])
        ax.plot(sizes, values, "o", color=color, alpha=0.5)
        ax.plot(*_by_batch(groups[group], statistics.median), "-", color=color, alpha=0.7,
                label=_group_label(group_key, group))
    if groups and mode is not None:  # the best setting's median over seeds, as the report says
        medians = [point for points in groups.values()
                   for point in zip(*_by_batch(points, statistics.median))]
        ax.plot(*_by_batch(medians, max if mode == "max" else min), "-", color="black",
                linewidth=2.5, label="best setting per B (median over seeds)")
    if groups:
        _batch_axis(ax, [b for points in groups.values() for b, _ in points])
        ax.legend(fontsize=7, ncol=2 if len(groups) > 8 else 1)
    ax.set(xlabel="batch size B", ylabel=ylabel or metric_key,
           title=f"Final {ylabel or metric_key} vs batch size")
    ax.grid(True, which="both", alpha=0.3)
    return save_figure(fig, path)


def plot_best_lr(batch_sizes, lrs, fit, path):
    """Log-log best learning rate vs B with the power-law fit and linear / square-root guides.

    The guides pass through the fit at the smallest batch, so the fitted exponent can be read
    against the two textbook rules at a glance.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.set(xlabel="batch size B", ylabel="best learning rate",
           title="Best learning rate vs batch size")
    points = sorted((b, lr) for b, lr in zip(batch_sizes, lrs) if lr is not None and lr > 0)
    if not points:
        _note(ax, "no finished run with a learning rate:\nno best learning rate to show")
        return save_figure(fig, path)
    sizes, best = zip(*points)
    ax.loglog(sizes, best, "o", color="C0", label="best learning rate", zorder=3)
    _batch_axis(ax, sizes)
    _plain_log_y(ax)
    if fit is not None:
        grid = _span(sizes)
        stderr = "" if np.isnan(fit.exponent_stderr) else f" ± {fit.exponent_stderr:.2f}"
        ax.loglog(grid, fit.predict(grid), "-", color="C1",
                  label=f"fit: lr ∝ B^{fit.exponent:.2f}{stderr}")
        anchor = fit.predict(grid[0])
        ax.loglog(grid, anchor * grid / grid[0], ":", color="0.5", label="linear (B^1)")
        ax.loglog(grid, anchor * np.sqrt(grid / grid[0]), "--", color="0.5",
                  label="square root (B^0.5)")
        ax.set_ylim(min(best) / 4, max(best) * 4)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_throughput(records, path):
    """Two panels vs B (base 2, plain labels): examples per second (does the hardware get busier?)
    on a log axis, and wall time per run on a linear axis (read as seconds at a glance)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    panels = (("examples_per_sec", "examples / s", "Throughput", "log"),
              ("wall_time_s", "wall time per run (s)", "Wall time per run", "linear"))
    for ax, (key, ylabel, title, yscale) in zip(axes, panels):
        points = _finished_with(records, key)
        if points:
            ax.plot(*zip(*points), "o", color="C0", alpha=0.5)
            ax.plot(*_by_batch(points, statistics.median), "-", color="C0",
                    label="median over runs")
            ax.set_yscale(yscale)
            if yscale == "log":
                _plain_log_y(ax)
            else:
                ax.set_ylim(bottom=0)
            _batch_axis(ax, [b for b, _ in points])
            ax.legend(fontsize=8)
        else:
            _note(ax, f"no finished run reports {key}")
        ax.set(xlabel="batch size B", ylabel=ylabel, title=title)
        ax.grid(True, which="both", alpha=0.3)
    return save_figure(fig, path)
