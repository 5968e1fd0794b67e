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


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
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


def plot_steps_to_result(best, fit, path, b_simple=None):
    """Log-log updates-to-target vs B: measured best runs, the S(B) fit, perfect scaling, B_noise.

    The perfect-scaling line (S proportional to 1/B through the smallest batch) shows how much of
    the ideal speed-up each larger batch still gets; B_noise marks where the fit bends away.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.set(xlabel="batch size B", ylabel="updates to reach the target",
           title="Steps to result vs batch size")
    points = sorted((b, v["steps"]) for b, v in best.items() if v.get("steps") is not None)
    if not points:
        _note(ax, "no run reached the target:\nno steps to result to show")
        return _save(fig, path)
    sizes, steps = zip(*points)
    ax.loglog(sizes, steps, "o", color="C0", label="measured (best run per batch size)", zorder=3)
    grid = _span(sizes)
    ax.loglog(grid, steps[0] * sizes[0] / grid, "--", color="0.5",
              label="perfect scaling (S ∝ 1/B)")
    if fit is not None:
        ax.loglog(grid, fit.steps(grid), "-", color="C1",
                  label=f"fit: S_min={fit.s_min:.4g}, B_noise={fit.b_noise:.4g}")
        ax.axhline(fit.s_min, color="C1", linestyle=":", linewidth=1)
        ax.axvline(fit.b_noise, color="C1", linestyle="-.", linewidth=1, label="B_noise (fit)")
    if b_simple is not None:
        ax.axvline(b_simple, color="C2", linestyle="-.", linewidth=1,
                   label=f"B_simple (measured) = {b_simple:.3g}")
    ax.set_ylim(min(steps) / 3, max(steps) * 3)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _group_label(group_key, value):
    name = {"learning_rate": "lr"}.get(group_key, group_key)
    return f"{name} = {value:.3g}" if isinstance(value, float) else f"{name} = {value}"


def _group_order(value):
    """Groups sort by value, with missing values last and mixed types kept apart."""
    return (value is None, isinstance(value, str), value if value is not None else 0)


def plot_metric_vs_batch(records, metric_key, path, group_key="learning_rate", ylabel=None,
                         mode=None):
    """Final ``metric_key`` (from each record's "final") vs B, one line per ``group_key`` value.

    Seeds of the same group and batch size are drawn as points and joined at their mean, so the
    seed-to-seed spread is visible next to the batch-size effect. With ``mode`` ("max" or "min",
    which way is better) a black line joins the best run at each B: the tuned comparison.
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
        ax.plot(*_by_batch(groups[group]), "-", color=color, alpha=0.7,
                label=_group_label(group_key, group))
    if groups and mode is not None:
        every = [point for points in groups.values() for point in points]
        ax.plot(*_by_batch(every, max if mode == "max" else min), "-", color="black", linewidth=2.5,
                label="best run per batch size")
    if groups:
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7, ncol=2 if len(groups) > 8 else 1)
    ax.set(xlabel="batch size B", ylabel=ylabel or metric_key,
           title=f"Final {ylabel or metric_key} vs batch size")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


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
        return _save(fig, path)
    sizes, best = zip(*points)
    ax.loglog(sizes, best, "o", color="C0", label="best learning rate", zorder=3)
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
    return _save(fig, path)


def plot_throughput(records, path):
    """Two panels vs B: examples per second (does the hardware get busier?) and wall time."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    panels = (("examples_per_sec", "examples / s", "Throughput"),
              ("wall_time_s", "wall time (s)", "Wall time per run"))
    for ax, (key, ylabel, title) in zip(axes, panels):
        points = _finished_with(records, key)
        if points:
            ax.loglog(*zip(*points), "o", color="C0", alpha=0.5)
            ax.loglog(*_by_batch(points), "-", color="C0", label="mean over runs")
            ax.legend(fontsize=8)
        else:
            _note(ax, f"no finished run reports {key}")
        ax.set(xlabel="batch size B", ylabel=ylabel, title=title)
        ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)
