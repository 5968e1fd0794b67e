"""Reads a learning-rate range test (Smith 2017, "Cyclical Learning Rates") and suggests a rate.

A range test trains with a learning rate that grows geometrically from tiny to huge and records the
loss of every update. Read against log(learning rate), the loss stays flat while the rate is too
small to matter, falls where the rate is useful and shoots up once updates overshoot. Two rules
turn that curve into one number:

- ``"steepest"``: the rate where the smoothed loss falls fastest per unit of log(rate), looked for
  only before the smoothed minimum (past it the loss is already climbing) and after the average's
  first ``skipped_start`` points (``ceil(1 / (1 - smoothing))``, at most a quarter of the points
  before the minimum: the bias-corrected average of the first few losses carries up to 5 times
  the noise of later ones, and a noisy flat start read as the steepest descent in 12-50% of
  seeded synthetic ramps; fastai's ``skip_start`` likewise);
- ``"min_divided_by_10"``: the rate of the smoothed minimum divided by 10 (the fastai convention).
  The smoothed minimum is where the ramping run stops improving, not a fixed-rate stability
  limit: on quadratics with a known limit 2 / lambda_max it sat 1 to 8 times above it (the
  average's memory of earlier, larger losses, and the top direction's slow growth from a small
  amplitude), so min / 10 lands near 0.1 to 0.6 of that limit.

A minimum at the ramp's last point (the ramp ended before the loss turned up) is only a lower
bound on where the loss would stop improving: the suggestion says so (``at_ramp_end``), and a
scaling fit leaves such runs out of the minimum's fit.

The per-update loss is noisy, so both rules read the same bias-corrected exponential average that
``callbacks.lr_range_test`` uses to decide divergence. That average is causal, so it lags the
ramp: on a noiseless curve the 'steepest' pick sits above the raw curve's steepest point by
1.2 times (500-update ramp) to 1.8 times (the 100-update tool ramp) at smoothing 0.9, and 2 to 2.5
times at 0.98 (a review's measurement, 2026-12-03): read the suggestion as a scale, not a
value to two figures. Pure numpy: usable on recorded numbers
without TensorFlow.
"""

import dataclasses
import math
import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.analysis import fits  # noqa: E402

SUGGESTION_RULES = ("steepest", "min_divided_by_10")


@dataclasses.dataclass(frozen=True)
class RangeSuggestion:
    """A suggested learning rate, the rule that chose it and the rate of the smoothed minimum."""
    learning_rate: float
    rule: str
    explanation: str
    min_loss_learning_rate: float
    at_ramp_end: bool = False  # the smoothed minimum is the last point: a lower bound


def smooth_losses(losses, smoothing=0.98):
    """Bias-corrected exponential moving average (as in Adam): value i is
    ``sum_j smoothing^(i-j) (1 - smoothing) loss_j / (1 - smoothing^(i+1))``, so the first value
    is the first loss rather than a value pulled towards zero."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing={smoothing!r} must be in [0, 1).")
    average, out = 0.0, []
    for i, loss in enumerate(np.asarray(losses, dtype=np.float64)):
        average = smoothing * average + (1.0 - smoothing) * loss
        out.append(average / (1.0 - smoothing ** (i + 1)))
    return np.asarray(out)


def _finite_prefix(learning_rates, losses):
    """The recorded points up to the first non-finite loss (the rest is divergence, not signal)."""
    rates = np.asarray(learning_rates, dtype=np.float64).ravel()
    values = np.asarray(losses, dtype=np.float64).ravel()
    if rates.shape != values.shape:
        raise ValueError(f"learning_rates ({rates.size}) and losses ({values.size}) must have "
                         "the same length.")
    if rates.size and (not np.all(np.isfinite(rates)) or np.any(rates <= 0)):
        raise ValueError("learning_rates must be positive finite numbers.")
    bad = np.flatnonzero(~np.isfinite(values))
    end = bad[0] if bad.size else values.size
    if end < 3:
        raise ValueError(f"A range test needs at least 3 finite losses to suggest a learning "
                         f"rate; got {end} (of {values.size} recorded).")
    return rates[:end], values[:end]


def suggest_learning_rate(learning_rates, losses, rule="steepest", smoothing=0.98):
    """Returns a ``RangeSuggestion`` for the (learning rate, per-update loss) pairs of a range test.

    ``losses`` are raw per-update losses; they are smoothed here with ``smoothing`` (0 keeps them
    as they are). Points from the first non-finite loss on are ignored. Raises ValueError when the
    smoothed loss never falls, under either rule: there is no descent to read, and a minimum at
    the first rate says only that the best rate lies below the ramp (a tenth of it would be a
    rate never tried, stated as if read from the curve). Start the test at a smaller rate.
    """
    if rule not in SUGGESTION_RULES:
        raise ValueError(f"rule={rule!r} must be one of {SUGGESTION_RULES}.")
    rates, values = _finite_prefix(learning_rates, losses)
    smoothed = smooth_losses(values, smoothing)
    lowest = int(np.argmin(smoothed))
    min_rate = float(rates[lowest])
    at_end = lowest == len(smoothed) - 1
    if lowest == 0:  # both rules: the curve holds neither a descent nor a minimum inside the ramp
        raise ValueError("The smoothed loss never fell below its first value, so the ramp holds "
                         "no descent and no minimum to read (the best rate lies below the "
                         "ramp's first one): start the range test at a smaller learning rate.")
    end_note = (" The ramp ended while the loss was still falling, so the minimum is only a lower "
                "bound: raise lr_range_test.max_learning_rate (or its updates) to see where it "
                "turns.") if at_end else ""
    if rule == "min_divided_by_10":
        return RangeSuggestion(
            learning_rate=min_rate / 10.0, rule=rule, min_loss_learning_rate=min_rate,
            at_ramp_end=at_end,
            explanation=(f"The smoothed loss is lowest at learning rate {min_rate:.3g}; the rule "
                         f"'min_divided_by_10' takes a tenth of that: {min_rate / 10.0:.3g}."
                         f"{end_note}"))
    slopes = np.gradient(smoothed[:lowest + 1], np.log(rates[:lowest + 1]))
    skip = skipped_start(smoothing, lowest)
    steepest = skip + int(np.argmin(slopes[skip:]))
    rate = float(rates[steepest])
    return RangeSuggestion(
        learning_rate=rate, rule=rule, min_loss_learning_rate=min_rate, at_ramp_end=at_end,
        explanation=(f"The rule 'steepest' takes the learning rate where the smoothed loss falls "
                     f"fastest against log(learning rate) before its minimum: {rate:.3g} (slope "
                     f"{slopes[steepest]:.3g} per e-fold; the minimum is at {min_rate:.3g})."
                     f"{end_note}"))


def skipped_start(smoothing, lowest):
    """How many first points the 'steepest' rule passes over: ``ceil(1 / (1 - smoothing))``, the
    average's warm-up (its first values weigh the newest loss up to 5 times more than later
    ones), at most a quarter of the ``lowest`` points before the minimum."""
    warm_up = math.ceil(1.0 / (1.0 - smoothing)) if smoothing > 0 else 0
    return min(warm_up, lowest // 4)


def _clip_divergence(axes, values, smoothed):
    """Keeps the diverging tail (often orders of magnitude up) from flattening the useful part."""
    top = float(np.max(smoothed[:int(np.argmin(smoothed)) + 1]))  # highest before the minimum
    span = top - min(float(np.min(values)), float(np.min(smoothed)))
    if span > 0:
        axes.set_ylim(top - 1.1 * span, top + 0.5 * span)


def plot_range_test(learning_rates, losses, suggestion, path, smoothing=0.98):
    """Writes a PNG of loss against learning rate (log axis): raw, smoothed, and the suggestion.

    Non-finite losses are left out of the plot; ``suggestion`` may be None (no marker).
    """
    rates = np.asarray(learning_rates, dtype=np.float64).ravel()
    values = np.asarray(losses, dtype=np.float64).ravel()
    finite = np.isfinite(values)
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    try:
        axes.plot(rates[finite], values[finite], color="0.7", linewidth=1, label="loss")
        if np.any(finite):
            end = int(np.argmin(finite)) if not np.all(finite) else values.size
            if end > 0:
                smoothed = smooth_losses(values[:end], smoothing)
                axes.plot(rates[:end], smoothed, color="C0", label=f"smoothed ({smoothing})")
                _clip_divergence(axes, values[finite], smoothed)
        if suggestion is not None and math.isfinite(suggestion.learning_rate):
            axes.axvline(suggestion.learning_rate, color="C3", linestyle="--",
                         label=f"{suggestion.rule}: {suggestion.learning_rate:.3g}")
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel("loss")
        axes.set_title("Learning-rate range test")
        axes.legend()
        figure.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
    return path


@dataclasses.dataclass(frozen=True)
class ScalingFit:
    """log(rate) = a + p log(B) fitted over range tests at several B (every seed a point).

    ``interval``: the ``level`` interval of p (t over n - 2 degrees of freedom; None with two
    points). ``ramp_step``: the largest factor between consecutive rates of the ramps (a
    suggestion can only be one of the ramp's rates). ``resolution``: the exponent one ramp step
    is worth across the batch sizes, log(ramp_step) / log(B_max / B_min): an exponent or an
    interval narrower than that is below what the ramp can tell apart.
    """
    exponent: float
    stderr: float
    interval: tuple
    num_points: int
    batch_sizes: tuple
    ramp_step: float
    resolution: float


def _ramp_step(results):
    steps = []
    for r in results:
        rates = np.asarray((r.get("lr_range_test") or {}).get("learning_rates") or [], float)
        if rates.size >= 2 and np.all(rates > 0):
            steps.append(float(np.max(rates[1:] / rates[:-1])))
    return max(steps) if steps else math.nan


def scaling_fit(results, key="suggested_learning_rate", level=0.9):
    """``ScalingFit`` of ``lr_range_test.<key>`` (``suggested_learning_rate`` or
    ``min_loss_learning_rate``) against B over range-test results (result.json dicts), or None
    when fewer than two batch sizes have one. Every run is a point (seeds are not merged); for
    the minimum, a run whose minimum is its ramp's last point (a lower bound) is left out."""
    points = [(r["batch_size"], r["lr_range_test"][key]) for r in results
              if (r.get("lr_range_test") or {}).get(key) and r.get("batch_size")
              and not (key == "min_loss_learning_rate"
                       and r["lr_range_test"].get("min_at_ramp_end"))]
    sizes = sorted({b for b, _ in points})
    if len(sizes) < 2:
        return None
    fit = fits.fit_power_law([b for b, _ in points], [lr for _, lr in points])
    step = _ramp_step(results)
    return ScalingFit(exponent=fit.exponent, stderr=fit.exponent_stderr,
                      interval=fits.power_law_interval(fit, level), num_points=len(points),
                      batch_sizes=tuple(sizes), ramp_step=step,
                      resolution=math.log(step) / math.log(sizes[-1] / sizes[0]))


def suggestion_sentence(result):
    """One range test's answer for the console (``result.json``'s ``lr_range_test``): the
    suggested rate at its batch size and why, or why there is none; None for any other run."""
    test = result.get("lr_range_test")
    if not test:
        return None
    rate = test.get("suggested_learning_rate")
    head = (f"Suggested learning rate at B = {result.get('batch_size')}: {rate:.3g}." if rate
            else "No learning rate suggested.")
    stop = _STOP_REASONS.get(test.get("stopped_because"), test.get("stopped_because"))
    where = f"; plot: {test['plot']}" if test.get("plot") else ""
    return (f"{head} {test.get('explanation', '')} (The ramp ran {test.get('updates')} updates "
            f"and stopped: {stop}{where}.)")


_STOP_REASONS = {"diverged": "the loss diverged", "non_finite_loss": "the loss became non-finite",
                 "num_updates": "it reached its largest learning rate",
                 "data_exhausted": "the epochs ran out before the ramp's end"}


def scaling_sentence(results):
    """For range tests run at several batch sizes (a sweep or study of ``train.mode =
    'lr_range_test'`` runs): the fitted exponent p of suggested LR ∝ B^p, as a sentence, or None
    when fewer than two batch sizes have a suggestion. p = 1 is the linear rule, 0.5 the
    square-root rule. Every run is a point (several seeds per B give the fit its spread); the
    sentence gives the 90% interval and the exponent one ramp step is worth, and says so when the
    interval is narrower than that step (the ramp cannot resolve it)."""
    fit = scaling_fit(results)
    if fit is None:
        return None
    rules = (("no scaling", 0.0), ("square-root scaling", 0.5), ("linear scaling", 1.0))
    if fit.interval is not None:
        held = [name for name, p in rules if fit.interval[0] <= p <= fit.interval[1]]
        verdict = ("the interval holds " + " and ".join(held) if held
                   else "the interval holds none of no, square-root or linear scaling")
    else:
        verdict = "no interval (one point per batch size)"
    points = sorted((r["batch_size"], r["lr_range_test"]["suggested_learning_rate"])
                    for r in results
                    if (r.get("lr_range_test") or {}).get("suggested_learning_rate")
                    and r.get("batch_size"))
    pairs = ", ".join(f"B = {b}: {lr:.3g}" for b, lr in points)
    spread = "" if fit.interval is None else \
        f" [90% interval {fit.interval[0]:.2f} to {fit.interval[1]:.2f}]"
    sentence = (f"The suggested learning rate grows as B^{fit.exponent:.2f}{spread} over "
                f"{fit.num_points} range tests at {len(fit.batch_sizes)} batch sizes ({pairs}): "
                f"{verdict}. This is how the ramp's suggestion moves with B, not the best fixed "
                "rate's scaling rule (docs/literature.md).")
    if math.isfinite(fit.resolution):
        sentence += (f" One ramp step (x{fit.ramp_step:.3g} per update) is worth "
                     f"{fit.resolution:.3f} in the exponent")
        if fit.interval is not None and fit.interval[1] - fit.interval[0] < fit.resolution:
            sentence += ", wider than the interval: the ramp cannot resolve it"
        sentence += "."
    return sentence
