"""Fits that turn measured batch-size sweeps into numbers a reader can act on.

* ``fit_steps_to_result``: S(B) = S_min * (1 + B_noise / B) (McCandlish et al. 2018), the updates
  needed at batch size B. S_min is the floor no batch size beats; B_noise is where the curve bends
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

# log B_noise may leave the measured range by this much (e^15) before the fit stops there: far
# enough to say "no bend seen", near enough that exp() never overflows.
_LOG_B_NOISE_MARGIN = 15.0


@dataclasses.dataclass(frozen=True)
class StepsFit:
    """S(B) = s_min * (1 + b_noise / B); stderrs by the delta method, residual_rms in log units."""

    s_min: float
    b_noise: float
    s_min_stderr: float
    b_noise_stderr: float
    residual_rms: float
    num_points: int

    def steps(self, batch_size):
        """Predicted updates to reach the target at ``batch_size`` (scalar or array)."""
        return self.s_min * (1.0 + self.b_noise / np.asarray(batch_size, dtype=float))


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """y = prefactor * x^exponent; exponent_stderr is nan when two points fix the line exactly."""

    exponent: float
    exponent_stderr: float
    prefactor: float
    num_points: int

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
    log_s_min, log_b_noise = theta
    return log_s_min + np.log1p(np.exp(log_b_noise) / batch_sizes)


def _log_jacobian(theta, batch_sizes):
    """d(log model)/d(log S_min, log B_noise); the residual's Jacobian is its negative."""
    b_noise = np.exp(theta[1])
    return np.column_stack([np.ones_like(batch_sizes), b_noise / (batch_sizes + b_noise)])


def _initial_guess(batch_sizes, steps):
    """Start from the linear fit S = a + c / B (a = S_min, c = S_min * B_noise) when it is sane."""
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


def fit_steps_to_result(batch_sizes, steps):
    """Fit S(B) = S_min * (1 + B_noise / B) to measured steps to result; returns a ``StepsFit``.

    Fits log S_min and log B_noise (so both stay positive) by least squares on log steps. Needs
    at least 3 points on at least 2 batch sizes: 2 parameters from 2 points leave nothing to
    check the curve against.
    """
    batch_sizes, steps = _positive_arrays(batch_sizes, steps, ("batch_sizes", "steps"))
    if batch_sizes.size < 3 or np.unique(batch_sizes).size < 2:
        raise ValueError(
            f"fitting S(B) = S_min (1 + B_noise / B) needs at least 3 (batch size, steps) points "
            f"on at least 2 batch sizes, got {batch_sizes.size} point(s) on "
            f"{np.unique(batch_sizes).size} batch size(s)")
    log_steps = np.log(steps)
    log_b = np.log(batch_sizes)
    low = np.array([-np.inf, log_b.min() - _LOG_B_NOISE_MARGIN])
    high = np.array([np.inf, log_b.max() + _LOG_B_NOISE_MARGIN])
    start = np.clip(_initial_guess(batch_sizes, steps), low + 1e-9, high - 1e-9)
    from scipy import optimize  # noqa: PLC0415  (imported when a report fits, not per run)

    result = optimize.least_squares(
        lambda theta: _log_model(theta, batch_sizes) - log_steps, start,
        jac=lambda theta: _log_jacobian(theta, batch_sizes), bounds=(low, high),
        x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12)
    log_stderr = _stderr(_log_jacobian(result.x, batch_sizes), result.fun, 2)
    s_min, b_noise = np.exp(result.x)
    return StepsFit(
        s_min=float(s_min), b_noise=float(b_noise),
        s_min_stderr=float(s_min * log_stderr[0]), b_noise_stderr=float(b_noise * log_stderr[1]),
        residual_rms=float(np.sqrt(np.mean(result.fun ** 2))), num_points=int(batch_sizes.size))


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
                       prefactor=float(np.exp(coeffs[0])), num_points=int(x.size))


def scaling_efficiency(fit, batch_size):
    """The fraction of updates saved by doubling B at ``batch_size``: 1 - S(2B) / S(B).

    For S(B) = S_min (1 + N / B) this is N / (2 (B + N)): one half for B much below B_noise
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
    return fit.b_noise * (1.0 - 2.0 * fraction) / (2.0 * fraction)
