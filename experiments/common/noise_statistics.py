"""B_simple with an interval from squared gradient norms drawn at fixed weights.

For batches of B rows drawn at the same weights, ``E|G_B|^2 = |G|^2 + tr(Sigma) / B``: the mean
squared norm is a straight line in 1/B with intercept |G|^2 and slope tr(Sigma). ``fit_line``
fits it by weighted least squares over two or more sizes; ``estimate`` weighs each size's mean
by n_B B^2 (``fit_weighted_by_size``: its inverse variance where the noise dominates), fixed
weights that keep the fit linear in the means and so |G|^2 and tr(Sigma) unbiased. Not by each
size's own sample variance: squared norms are right-skewed, so a sample whose mean came out low
tends to have a low variance too, a large weight, and the fit is pulled down (tr(Sigma) -17%
with 10 draws per size, -11% with 20, -2% with 100 in a closed-form simulation, sizes 4, 16, 64;
with the fixed weights within +-1.5% everywhere, at a spread within 5% of the sample-variance
fit's where the sizes are near or below B_simple, up to 20% wider far above it). It adds a
bootstrap over the draws (each size's draws resampled with
replacement, the whole fit redone) for intervals of |G|^2, tr(Sigma) and their ratio
B_simple = tr(Sigma) / |G|^2 (bias-corrected and accelerated, BCa, for the ratio's skew; plain
percentiles give nearly the same), and a check that the means do lie on a line (with three or
more sizes: the residuals of the fit weighted by the sample variances, their chi-square against
n - 2 degrees of freedom; a small p-value says the linear model, and so the estimate, does not
hold there, e.g. rows that are not independent).

The intervals' level is nominal: on the closed form (linear regression; sizes 4, 16, 64 or 32,
128, 512; B_simple 4 to 570; also preconditioned) the "95%" interval of B_simple covered the
truth in 92-95% of 500 seeds (+-1.2%) with 20 to 200 draws per size, and 91% with 10, the misses
on both sides (docs/measurement.md).
Their ends are cut to values the quantities can take (>= 0): a confidence set cut to the
parameter's range keeps its level.

A bootstrap draw whose |G|^2 estimate is <= 0 has no finite B_simple; it counts as +infinity, so
an interval whose upper end is infinite says "at least the lower end" (near an optimum, where the
gradient is buried in noise). Pure NumPy/SciPy over arrays: no TensorFlow.
"""

import math

import numpy as np
from scipy import stats


def fit_line(sizes, means, variances):
    """(|G|^2, tr(Sigma)) from the mean squared norms at each size (weighted least squares of the
    means on 1/B; exact through two points). ``means`` and ``variances`` may be [..., sizes]
    arrays (many fits at once); the results then have their leading shape."""
    x = 1.0 / np.asarray(sizes, float)
    means = np.asarray(means, float)
    w = 1.0 / np.maximum(np.asarray(variances, float), 1e-300)
    sw, swx, swxx = w.sum(-1), (w * x).sum(-1), (w * x * x).sum(-1)
    swy, swxy = (w * means).sum(-1), (w * x * means).sum(-1)
    determinant = sw * swxx - swx * swx
    slope = (sw * swxy - swx * swy) / determinant
    intercept = (swy - slope * swx) / sw
    if np.ndim(intercept) == 0:
        return float(intercept), float(slope)
    return intercept, slope


def fit_weighted_by_size(sizes, means, counts):
    """(|G|^2, tr(Sigma)) by least squares of the means on 1/B with fixed weights n_B B^2 (the
    inverse variance of a size's mean where the noise dominates, Var|G_B|^2 ~ 2 tr(Sigma^2)/B^2):
    weights that do not depend on the draws keep the fit linear in the means, so both estimates
    are unbiased (see the module docstring). ``means`` may be [..., sizes] (many fits at once);
    ``counts``: the draws behind each mean."""
    sizes_ = np.asarray(sizes, float)
    variances = 1.0 / (np.asarray(counts, float) * sizes_ ** 2)
    return fit_line(sizes, means, np.broadcast_to(variances, np.shape(means)))


def _ratio(trace, gradient_sq):
    return trace / gradient_sq if gradient_sq > 0 else math.inf


def _percentiles(values, level):
    values = np.sort(np.asarray(values, float))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail], method="linear") \
        if np.all(np.isfinite(values)) else _finite_aware_quantiles(values, tail)
    return [float(low), float(high)]


def _finite_aware_quantiles(values, tail):
    """Quantiles of values that may hold +inf (kept as +inf at the top of the order)."""
    n = len(values)
    position = [tail * (n - 1), (1.0 - tail) * (n - 1)]
    out = []
    for p in position:
        lo, hi = int(math.floor(p)), int(math.ceil(p))
        a, b = values[lo], values[hi]
        out.append(a if lo == hi or not np.isfinite(b) else a + (b - a) * (p - lo))
    return out


def _jackknife(sizes, draws):
    """Leave-one-draw-out values of (|G|^2, tr(Sigma), B_simple), for BCa's acceleration."""
    means = np.array([d.mean() for d in draws])
    counts = np.array([len(d) for d in draws], float)
    rows = []
    for i, d in enumerate(draws):
        n = len(d)
        left_out = (d.sum() - d) / (n - 1)  # mean of size i without each draw
        m = np.repeat(means[None, :], n, axis=0)
        m[:, i] = left_out
        c = counts.copy()
        c[i] = n - 1
        rows.append(np.stack(fit_weighted_by_size(sizes, m, c), axis=1))
    values = np.concatenate(rows)
    ratios = np.array([_ratio(t, g) for g, t in values])
    return values[:, 0], values[:, 1], ratios


def _bca(replicates, point, jackknife, level):
    """Bias-corrected and accelerated bootstrap interval (Efron 1987); falls back to the
    percentile interval where the corrections are undefined (infinite values)."""
    replicates = np.asarray(replicates, float)
    jackknife = np.asarray(jackknife, float)
    if not (np.isfinite(point) and np.all(np.isfinite(jackknife))):
        return _percentiles(replicates, level)
    below = np.mean(replicates < point) + 0.5 * np.mean(replicates == point)
    below = min(max(below, 0.5 / len(replicates)), 1 - 0.5 / len(replicates))
    z0 = stats.norm.ppf(below)
    centred = jackknife.mean() - jackknife
    denominator = 6.0 * np.sum(centred ** 2) ** 1.5
    acceleration = np.sum(centred ** 3) / denominator if denominator > 0 else 0.0
    tail = (1.0 - level) / 2.0
    out = []
    for z in stats.norm.ppf([tail, 1.0 - tail]):
        adjusted = stats.norm.cdf(z0 + (z0 + z) / (1.0 - acceleration * (z0 + z)))
        out.append(float(np.quantile(np.where(np.isfinite(replicates), replicates, np.inf),
                                     adjusted, method="inverted_cdf")))
    return out


def estimate(sizes, draws, level=0.95, num_bootstrap=2000, seed=0):
    """B_simple, |G|^2 and tr(Sigma) with ``level`` bootstrap intervals and the linearity check.

    Args:
      sizes: the batch sizes (two or more).
      draws: one array of squared norms per size (the draws at that size).
    Returns a dict: ``b_simple`` (None when the |G|^2 estimate is <= 0), ``b_simple_interval``,
    ``gradient_sq_norm`` (+ ``_interval``), ``trace_sigma`` (+ ``_interval``), ``linearity_p``
    (None with two sizes), ``linear`` (p >= 0.01 or not testable), ``sizes``, ``num_draws``,
    ``means``, ``level``.
    """
    sizes = [int(b) for b in sizes]
    draws = [np.asarray(d, float) for d in draws]
    if len(sizes) != len(draws) or len(set(sizes)) < 2:
        raise ValueError("estimate needs draws at two or more distinct batch sizes.")
    if min(len(d) for d in draws) < 2:
        raise ValueError("estimate needs at least two draws per batch size.")
    means = [float(d.mean()) for d in draws]
    counts = [len(d) for d in draws]
    gradient_sq, trace = fit_weighted_by_size(sizes, means, counts)
    rng = np.random.default_rng(seed)
    boot_means = []
    for d in draws:  # every bootstrap replicate at once: [replicates, draws] per size
        resampled = d[rng.integers(0, len(d), (num_bootstrap, len(d)))]
        boot_means.append(resampled.mean(1))
    # Each replicate is fitted as the sample is, with the same fixed weights.
    boot = np.stack(fit_weighted_by_size(sizes, np.stack(boot_means, 1), counts), axis=1)
    ratios = np.array([_ratio(t, g) for g, t in boot])
    jackknife = _jackknife(sizes, draws)
    point = _ratio(trace, gradient_sq)
    linearity_p = None
    if len(sizes) >= 3:
        variances = np.maximum([float(d.var(ddof=1)) / len(d) for d in draws], 1e-300)
        intercept, slope = fit_line(sizes, means, variances)
        fitted = intercept + slope / np.asarray(sizes, float)
        chi2 = float(np.sum((np.asarray(means) - fitted) ** 2 / variances))
        linearity_p = float(stats.chi2.sf(chi2, len(sizes) - 2))
    return {
        # tr(Sigma) estimated <= 0: the noise is not seen at these sizes (B_simple below them)
        "b_simple": max(trace, 0.0) / gradient_sq if gradient_sq > 0 else None,
        "b_simple_interval": _nonnegative(_bca(ratios, point, jackknife[2], level)),
        "gradient_sq_norm": gradient_sq,
        "gradient_sq_norm_interval": _nonnegative(
            _bca(boot[:, 0], gradient_sq, jackknife[0], level)),
        "trace_sigma": trace,
        "trace_sigma_interval": _nonnegative(_bca(boot[:, 1], trace, jackknife[1], level)),
        "linearity_p": linearity_p,
        "linear": linearity_p is None or linearity_p >= 0.01,
        "sizes": sizes, "num_draws": [len(d) for d in draws], "means": means, "level": level,
    }


def _nonnegative(interval):
    """An interval of a quantity that cannot be negative, cut to >= 0 (both ends 0 when it lies
    wholly below: the data then put it at 0 within their noise)."""
    return [max(float(interval[0]), 0.0), max(float(interval[1]), 0.0)]


def pooled_ratio(gradient_sq, trace, level=0.95, groups=None):
    """B_simple from many raw per-update estimates (|G|^2_i, tr(Sigma)_i): the ratio of their
    means (each estimate is unbiased, their ratio is not), with a Fieller interval over
    independent units: whole ``groups`` (e.g. runs: estimates of one run share its trajectory,
    so they are not independent of each other) when given, else single estimates.

    Why Fieller and not a bootstrap over runs: with few runs the run bootstrap's "90%" interval
    covered the truth 50% of the time with 2 runs, 65% with 3 and 86% with 20 (it ignores the
    t-spread of a mean of few units and the ratio's skew); Fieller's covered 89-96% for 2 to 20
    in the same simulations (docs/measurement.md, "B_simple at a study's target").
    Returns (value or None, [low, high] or None): value None when the mean |G|^2 is <= 0 and 0
    when the mean tr(Sigma) is (the noise not resolved from 0), the
    interval None with fewer than two units or when no B_simple >= 0 is consistent with the
    data, and its upper end +inf when |G|^2 cannot be told from 0 (B_simple is "at least low")."""
    gradient_sq = np.asarray(gradient_sq, float)
    trace = np.asarray(trace, float)
    finite = np.isfinite(gradient_sq) & np.isfinite(trace)  # a NaN row would poison every sum
    gradient_sq, trace = gradient_sq[finite], trace[finite]
    if groups is not None:
        groups = np.asarray(groups)[finite]
    if len(gradient_sq) == 0:
        return None, None
    # tr(Sigma) cannot be negative: a negative mean of noisy single-update estimates says the
    # noise is not resolved from 0, so the value is 0, inside the interval cut to >= 0 (the
    # probe's estimate clips the same way).
    value = _ratio(max(float(trace.mean()), 0.0), gradient_sq.mean())
    value = value if np.isfinite(value) else None
    g_units, t_units = _unit_sums(gradient_sq, trace, groups)
    if len(g_units) < 2:
        return value, None
    return value, fieller_interval(g_units, t_units, level)


def _unit_sums(gradient_sq, trace, groups):
    """Per-unit sums of |G|^2 and tr(Sigma). Sums, not means: their ratio of means is the
    pooled ratio of all estimates however many each unit holds, so the interval is centred
    on the reported value. Where units hold very different numbers of estimates the sums' spread
    is mostly that of the counts, and the interval errs wide (docs/measurement.md)."""
    if groups is None:
        return gradient_sq, trace
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    return np.bincount(index, gradient_sq), np.bincount(index, trace)


def fieller_interval(denominators, numerators, level=0.95):
    """Fieller's ``level`` confidence set for theta = E[numerator] / E[denominator] from R >= 2
    independent (numerator, denominator) units, intersected with theta >= 0 (B_simple is).

    It inverts the t-test (R - 1 degrees of freedom) of "the residuals n_r - theta d_r have
    mean 0": theta is in the set where mean(residual)^2 <= t^2 var(residual) / R. Written about
    the point estimate theta_hat = mean(n) / mean(d) (theta = theta_hat + delta), the condition
    is the quadratic a delta^2 + 2 t^2 C delta - t^2 V <= 0, with a = mean(d)^2 - t^2 var(mean d),
    V the variance of the mean residual at theta_hat and C its covariance with mean(d). a <= 0
    means mean(d) cannot be told from 0: the set is then unbounded (returned as [low, inf]).
    Returns [low, high], or None where the set holds no theta >= 0."""
    d = np.asarray(denominators, float)
    n = np.asarray(numerators, float)
    units = len(d)
    q = stats.t.ppf(0.5 + level / 2.0, units - 1) ** 2
    d_mean = d.mean()
    if d_mean == 0:  # no theta_hat to centre on; the set is unbounded, its hull every theta
        return [0.0, math.inf]
    centre = n.mean() / d_mean
    residual = n - centre * d
    v = residual.var(ddof=1) / units
    c = np.cov(residual, d, ddof=1)[0, 1] / units
    a = d_mean ** 2 - q * d.var(ddof=1) / units
    disc = (q * c) ** 2 + a * q * v
    if a > 0:  # bounded: between the roots
        root = math.sqrt(disc)
        return _clip_nonnegative([centre + (-q * c - root) / a, centre + (-q * c + root) / a])
    if disc <= 0:  # every theta
        return [0.0, math.inf]
    root = math.sqrt(disc)  # outside the roots: (-inf, low] and [high, inf)
    low, high = sorted([centre + (-q * c - root) / a, centre + (-q * c + root) / a])
    return [0.0, math.inf] if low >= 0 else [max(float(high), 0.0), math.inf]


def _clip_nonnegative(interval):
    """[low, high] cut to theta >= 0 (a confidence set cut to the values the parameter can
    take keeps its level); None if nothing is left."""
    low, high = interval
    if high < 0:
        return None
    return [max(float(low), 0.0), float(high)]
