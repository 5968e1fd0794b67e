"""Fits that turn measured batch-size sweeps into numbers a reader can act on.

* ``fit_steps_to_result``: S(B) = S_min * (1 + B_crit / B) (McCandlish et al. 2018), the updates
  needed at batch size B. S_min is the floor no batch size beats; B_crit is where the curve bends
  from perfect scaling (S proportional to 1/B) to no scaling (S = S_min).
* ``fit_power_law``: y = prefactor * x^exponent, for "how does the best learning rate follow B".
* ``scaling_efficiency`` / ``batch_size_where_doubling_saves``: what doubling B still buys.

Fits are in log space because steps span orders of magnitude and their noise is multiplicative
(a seed changes steps by a fraction, not by a fixed count); a linear fit would be decided by the
smallest batch alone.
"""

import dataclasses
import math

import numpy as np

# log B_crit may leave the measured range by this much (e^15) before the fit stops there: far
# enough to say "no bend seen", near enough that exp() never overflows.
_LOG_B_CRIT_MARGIN = 15.0


@dataclasses.dataclass(frozen=True)
class StepsFit:
    """S(B) = s_min * (1 + b_crit / B); stderrs by the delta method, residual_rms in log units."""

    s_min: float
    b_crit: float
    s_min_stderr: float
    b_crit_stderr: float
    residual_rms: float
    num_points: int
    num_censored: int = 0

    def steps(self, batch_size):
        """Predicted updates to reach the target at ``batch_size`` (scalar or array)."""
        return self.s_min * (1.0 + self.b_crit / np.asarray(batch_size, dtype=float))


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """y = prefactor * x^exponent; exponent_stderr is nan when two points fix the line exactly.
    ``residual_rms``: the misfit in log y; ``curvature_p``: the p-value of a bend (``fit_power_law``),
    None with fewer than 4 points."""

    exponent: float
    exponent_stderr: float
    prefactor: float
    num_points: int
    residual_rms: float = 0.0
    curvature_p: float | None = None

    def predict(self, x):
        return self.prefactor * np.asarray(x, dtype=float) ** self.exponent


def _positive_arrays(x, y, names):
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{names[0]} and {names[1]} differ in length: {x.size} vs {y.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(x > 0) and np.all(y > 0)):
        raise ValueError(f"{names[0]} and {names[1]} must be finite and positive (they are fitted "
                         f"in log space), got {x.tolist()} and {y.tolist()}")
    return x, y


def _log_model(theta, batch_sizes):
    log_s_min, log_b_crit = theta
    return log_s_min + np.log1p(np.exp(log_b_crit) / batch_sizes)


def _log_jacobian(theta, batch_sizes):
    """d(log model)/d(log S_min, log B_crit); the residual's Jacobian is its negative."""
    b_crit = np.exp(theta[1])
    return np.column_stack([np.ones_like(batch_sizes), b_crit / (batch_sizes + b_crit)])


def _initial_guess(batch_sizes, steps):
    """Start from the linear fit S = a + c / B (a = S_min, c = S_min * B_crit) when it is sane."""
    c, a = np.polyfit(1.0 / batch_sizes, steps, 1)
    if a > 0 and c > 0:
        return np.log([a, c / a])
    return np.array([np.log(steps.min()), np.log(batch_sizes).mean()])


def _stderr(jacobian, residuals, num_params):
    """Standard errors of the parameters: sqrt(diag(s^2 (J^T J)^-1)), s^2 = RSS / dof."""
    dof = residuals.size - num_params
    if dof <= 0:
        return np.full(num_params, math.nan)
    try:
        covariance = np.linalg.inv(jacobian.T @ jacobian) * (residuals @ residuals) / dof
    except np.linalg.LinAlgError:
        return np.full(num_params, math.inf)
    return np.sqrt(np.clip(np.diag(covariance), 0.0, None))


def _check_censored(censored):
    """``censored`` as (batch sizes, log budgets): B whose runs never reached the target within
    ``budget`` updates, so their steps are "more than the budget"."""
    if not censored:
        return np.zeros(0), np.zeros(0)
    sizes, budgets = _positive_arrays(*zip(*censored), ("censored batch sizes", "budgets"))
    return sizes, np.log(budgets)


def _fit_log_params(batch_sizes, log_steps, censored_sizes, censored_log_budgets, start=None):
    """Least squares on log steps; a censored B adds a one-sided residual min(0, model - budget):
    zero while the curve predicts at least the budget, the shortfall otherwise (a Tobit-like hinge,
    so a censored B pulls the curve up to "more than the budget" and never down)."""
    from scipy import optimize  # noqa: PLC0415  (imported when a report fits, not per run)

    every = np.concatenate([batch_sizes, censored_sizes])
    log_b = np.log(every)
    low = np.array([-np.inf, log_b.min() - _LOG_B_CRIT_MARGIN])
    high = np.array([np.inf, log_b.max() + _LOG_B_CRIT_MARGIN])
    if start is None:
        start = _initial_guess(batch_sizes, np.exp(log_steps))
    start = np.clip(start, low + 1e-9, high - 1e-9)
    n = batch_sizes.size

    def residuals(theta):
        model = _log_model(theta, every)
        measured = model[:n] - log_steps
        short = np.minimum(0.0, model[n:] - censored_log_budgets)
        return np.concatenate([measured, short])

    def jacobian(theta):
        jac = _log_jacobian(theta, every)
        short = (_log_model(theta, censored_sizes) - censored_log_budgets) < 0.0
        jac[n:][~short] = 0.0
        return jac

    return optimize.least_squares(residuals, start, jac=jacobian, bounds=(low, high),
                                  x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12)


def fit_steps_to_result(batch_sizes, steps, censored=None):
    """Fit S(B) = S_min * (1 + B_crit / B) to measured steps to result; returns a ``StepsFit``.

    Fits log S_min and log B_crit (so both stay positive) by least squares on log steps. Needs
    at least 3 points on at least 2 batch sizes: 2 parameters from 2 points leave nothing to
    check the curve against. ``censored``: [(batch size, budget)] for batch sizes whose runs never
    reached the target within ``budget`` updates: kept in the fit as "more than the budget".
    """
    batch_sizes, steps = _positive_arrays(batch_sizes, steps, ("batch_sizes", "steps"))
    if batch_sizes.size < 3 or np.unique(batch_sizes).size < 2:
        raise ValueError(
            f"fitting S(B) = S_min (1 + B_crit / B) needs at least 3 (batch size, steps) points "
            f"on at least 2 batch sizes, got {batch_sizes.size} point(s) on "
            f"{np.unique(batch_sizes).size} batch size(s)")
    censored_sizes, censored_log = _check_censored(censored)
    result = _fit_log_params(batch_sizes, np.log(steps), censored_sizes, censored_log)
    measured = result.fun[:batch_sizes.size]
    log_stderr = _stderr(_log_jacobian(result.x, batch_sizes), measured, 2)
    s_min, b_crit = np.exp(result.x)
    return StepsFit(
        s_min=float(s_min), b_crit=float(b_crit),
        s_min_stderr=float(s_min * log_stderr[0]), b_crit_stderr=float(b_crit * log_stderr[1]),
        residual_rms=float(np.sqrt(np.mean(measured ** 2))), num_points=int(batch_sizes.size),
        num_censored=int(censored_sizes.size))


@dataclasses.dataclass(frozen=True)
class StepsFitIntervals:
    """``level`` intervals (e.g. 0.9) of S_min and B_crit: exp(log theta ± t(n - 2) stderr)."""

    s_min: tuple
    b_crit: tuple
    level: float


def _log_t_interval(value, stderr, quantile):
    """exp(log value ± quantile * stderr / value); (0, inf) when the stderr is not finite."""
    if not math.isfinite(stderr):
        return (0.0, math.inf)
    half = min(quantile * stderr / value, 700.0)  # beyond e^700 the end is 0 / inf anyway
    return (float(value * math.exp(-half)), float(value * math.exp(half)))


def steps_fit_intervals(fit, level=0.9):
    """The ``level`` intervals of S_min and B_crit: log theta ± t(n - 2) · stderr(log theta).

    ``fit_steps_to_result`` stores each stderr as value × stderr(log value) (the delta method),
    so dividing by the value gives the log-space stderr; and the
    residuals leave n - 2 degrees of freedom, so the t(n - 2) quantile (not the normal one) is
    what makes a 90% interval cover 89-93% with 3 to 8 batch sizes (docs/studies.md). The
    residual bootstrap used before covered about 70% (3 sizes) to 82-85% (8 sizes): percentiles
    of n resampled residuals ignore that the noise level itself is estimated from n - 2 degrees
    of freedom.
    """
    from scipy import stats  # noqa: PLC0415

    quantile = stats.t.ppf(0.5 + level / 2.0, max(fit.num_points - 2, 1))
    return StepsFitIntervals(
        s_min=_log_t_interval(fit.s_min, fit.s_min_stderr, quantile),
        b_crit=_log_t_interval(fit.b_crit, fit.b_crit_stderr, quantile), level=level)


def _profile_rss(log_b_crit, log_b, log_steps, censored_log_b, censored_log_budgets):
    """The fit's residual sum of squares with B_crit held at exp(``log_b_crit``) and S_min at its
    best value (closed form on the measured points; a censored B whose budget the curve falls
    short of joins the mean, repeated until the set of such B stops growing)."""
    g = np.log1p(np.exp(log_b_crit - log_b))
    g_censored = np.log1p(np.exp(log_b_crit - censored_log_b))
    active = np.zeros(g_censored.size, dtype=bool)
    while True:
        values = np.concatenate([log_steps - g, (censored_log_budgets - g_censored)[active]])
        log_s_min = values.mean()
        short = log_s_min + g_censored < censored_log_budgets
        if not np.any(short & ~active):
            break
        active |= short
    residuals = np.concatenate([log_s_min + g - log_steps,
                                np.minimum(0.0, log_s_min + g_censored - censored_log_budgets)])
    return float(residuals @ residuals)


@dataclasses.dataclass(frozen=True)
class BCritLimits:
    """Which B_crit the measured S(B) cannot rule out at ``level`` (profile F-test).

    ``above``: a B_crit far above every measured B (S proportional to 1/B throughout, no bend)
    fits as well as the best fit; ``below``: one far below (S flat throughout) does.
    ``low``, ``high``: the ends of the set of B_crit not ruled out (0 / inf when open)."""

    above: bool
    below: bool
    low: float
    high: float
    level: float


def b_crit_limits(batch_sizes, steps, censored=None, level=0.9, grid_points=241):
    """Profile-likelihood set of B_crit values the data do not rule out at ``level``.

    For each B_crit on a log grid from e^-15 below the smallest to e^15 above the largest batch
    size (the fit's own bounds) S_min is refitted; a B_crit stays in the set while its residual
    sum of squares exceeds the best one by at most F(1, n - 2) · RSS_min / (n - 2), the F-test of
    the profile. Unlike the delta-method interval this stays right when the fit runs to a bound:
    it then says "no bend in the measured range, B_crit above ~low" instead of a number.
    """
    from scipy import stats  # noqa: PLC0415

    batch_sizes, steps = _positive_arrays(batch_sizes, steps, ("batch_sizes", "steps"))
    censored_sizes, censored_log = _check_censored(censored)
    every = np.log(np.concatenate([batch_sizes, censored_sizes]))
    args = (np.log(batch_sizes), np.log(steps), np.log(censored_sizes), censored_log)
    fit = fit_steps_to_result(batch_sizes, steps, censored)
    # The fit's own B_crit joins the grid: a precise fit's set can be narrower than the grid's
    # step (the NQM's 13 sizes: about +-5% against 17%), and then no other point is inside.
    grid = np.sort(np.append(np.linspace(every.min() - _LOG_B_CRIT_MARGIN,
                                         every.max() + _LOG_B_CRIT_MARGIN, grid_points),
                             math.log(fit.b_crit)))
    rss = np.array([_profile_rss(x, *args) for x in grid])
    best = rss.min()
    dof = max(batch_sizes.size - 2, 1)
    allowed = best * (1.0 + stats.f.ppf(level, 1, dof) / dof) + 1e-12 * (1.0 + best)
    inside = rss <= allowed
    excess = lambda x: _profile_rss(x, *args) - allowed  # noqa: E731
    return BCritLimits(above=bool(inside[-1]), below=bool(inside[0]),
                       low=_set_end(grid, inside, excess, 1),
                       high=_set_end(grid, inside, excess, -1), level=level)


def _set_end(grid, inside, excess, step):
    """The lowest (``step`` 1) or highest (-1) B_crit of the profile set: the outermost grid
    point inside, refined to the root of ``excess`` between it and its outer neighbour; 0 or inf
    when the set reaches the grid's end (the data do not bound B_crit on that side)."""
    from scipy import optimize  # noqa: PLC0415

    order = np.arange(grid.size)[::step]
    first = order[np.argmax(inside[order])]
    if first == order[0]:
        return 0.0 if step == 1 else math.inf
    root = optimize.brentq(excess, *sorted((grid[first - step], grid[first])))
    return float(math.exp(root))


def _log_model_with_rise(theta, batch_sizes):
    """log S for S = S_min (1 + B_crit / B + B / B_rise): the fit's curve plus a linear rise
    (additive, so that the minimum between the two can be as sharp as a measured U)."""
    log_s_min, log_b_crit, log_b_rise = theta
    return log_s_min + np.log1p(np.exp(log_b_crit) / batch_sizes
                                + batch_sizes / np.exp(log_b_rise))


def rise_p_value(batch_sizes, steps):
    """p-value of "S rises with B" against the fit S_min (1 + B_crit / B), which only falls.

    Adds a term B / B_rise to 1 + B_crit / B and F-tests the drop in the residual sum of
    squares (1 and n - 3 degrees of freedom): small when a U-shaped S(B) (too large a batch
    needing more updates, e.g. a learning rate that no longer trains) is more than seed noise.
    None with fewer than 4 points (no degree of freedom left).
    """
    from scipy import optimize, stats  # noqa: PLC0415

    batch_sizes, steps = _positive_arrays(batch_sizes, steps, ("batch_sizes", "steps"))
    n = batch_sizes.size
    if n < 4:
        return None
    log_steps, log_b = np.log(steps), np.log(batch_sizes)
    fit = fit_steps_to_result(batch_sizes, steps)
    rss_fall = n * fit.residual_rms ** 2
    low = np.array([-np.inf, log_b.min() - _LOG_B_CRIT_MARGIN, log_b.min() - _LOG_B_CRIT_MARGIN])
    high = np.array([np.inf, log_b.max() + _LOG_B_CRIT_MARGIN, log_b.max() + _LOG_B_CRIT_MARGIN])
    rss_rise = rss_fall
    for log_rise in log_b:  # a few starts: the rise may begin at any measured B
        start = np.clip([math.log(fit.s_min), math.log(fit.b_crit), log_rise], low + 1e-9,
                        high - 1e-9)
        result = optimize.least_squares(
            lambda theta: _log_model_with_rise(theta, batch_sizes) - log_steps, start,
            bounds=(low, high), xtol=1e-12, ftol=1e-12)
        rss_rise = min(rss_rise, float(result.fun @ result.fun))
    if rss_fall - rss_rise <= 1e-12 * (1.0 + rss_fall):
        return 1.0
    statistic = (rss_fall - rss_rise) / max(rss_rise / (n - 3), 1e-300)
    return float(stats.f.sf(statistic, 1, n - 3))


def power_law_interval(fit, level=0.9):
    """The ``level`` interval of a power-law exponent: exponent ± t(n - 2) stderr, or None when
    two points fix the line (no residual left to judge it by)."""
    if fit.num_points < 3 or not math.isfinite(fit.exponent_stderr):
        return None
    from scipy import stats  # noqa: PLC0415

    half = stats.t.ppf(0.5 + level / 2.0, fit.num_points - 2) * fit.exponent_stderr
    return (fit.exponent - half, fit.exponent + half)


def fit_power_law(x, y):
    """Least squares of log y = a + p log x; returns ``PowerLawFit(p, stderr(p), e^a, n)``.

    Needs 2 points on 2 distinct x; with exactly 2 the line is fixed and the stderr is nan.
    """
    x, y = _positive_arrays(x, y, ("x", "y"))
    if x.size < 2 or np.unique(x).size < 2:
        raise ValueError(
            f"a power-law fit needs at least 2 points with distinct x, got {x.tolist()}")
    design = np.column_stack([np.ones_like(x), np.log(x)])
    coeffs, *_ = np.linalg.lstsq(design, np.log(y), rcond=None)
    residuals = np.log(y) - design @ coeffs
    stderr = _stderr(design, residuals, 2)
    return PowerLawFit(exponent=float(coeffs[1]), exponent_stderr=float(stderr[1]),
                       prefactor=float(np.exp(coeffs[0])), num_points=int(x.size),
                       residual_rms=float(np.sqrt(np.mean(residuals ** 2))),
                       curvature_p=_curvature_p(np.log(x), np.log(y), residuals))


def _curvature_p(log_x, log_y, line_residuals):
    """p-value of a bend in log y over log x: the F test (1 and n - 3 degrees of freedom) of
    adding (log x)^2 to the line. A power law holds one exponent over the whole range; a small
    p says the points follow different exponents in different parts of it (a best learning
    rate that grows with B and then levels off). None with fewer than 4 points or 3 distinct x."""
    from scipy import stats  # noqa: PLC0415

    n = log_x.size
    if n < 4 or np.unique(log_x).size < 3:
        return None
    centred = log_x - log_x.mean()
    design = np.column_stack([np.ones_like(log_x), centred, centred ** 2])
    coeffs, *_ = np.linalg.lstsq(design, log_y, rcond=None)
    rss_bent = float(np.sum((log_y - design @ coeffs) ** 2))
    rss_line = float(line_residuals @ line_residuals)
    if rss_line - rss_bent <= 1e-12 * (1.0 + rss_line):
        return 1.0
    statistic = (rss_line - rss_bent) / max(rss_bent / (n - 3), 1e-300)
    return float(stats.f.sf(statistic, 1, n - 3))


def scaling_efficiency(fit, batch_size):
    """The fraction of updates saved by doubling B at ``batch_size``: 1 - S(2B) / S(B).

    For S(B) = S_min (1 + N / B) this is N / (2 (B + N)): one half for B much below B_crit
    (perfect scaling), falling to zero for B much above it.
    """
    return 1.0 - fit.steps(2.0 * np.asarray(batch_size, dtype=float)) / fit.steps(batch_size)


def batch_size_where_doubling_saves(fit, fraction):
    """The batch size above which doubling B saves less than ``fraction`` of the updates.

    From 1 - S(2B)/S(B) = N / (2 (B + N)) = f follows B = N (1 - 2f) / (2f). Doubling never saves
    half or more, so for 0.5 <= f < 1 every batch size qualifies and the answer is 0.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be between 0 and 1 (exclusive), got {fraction}")
    if fraction >= 0.5:
        return 0.0
    return fit.b_crit * (1.0 - 2.0 * fraction) / (2.0 * fraction)
