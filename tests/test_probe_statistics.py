"""The probe's fit of E|G_B|^2 = |G|^2 + tr(Sigma)/B (``noise_statistics.estimate``) against the
closed form, with draws made here in NumPy: linear regression, x ~ N(0, Lambda), at fixed
w = w* + delta, where G = 2 Lambda delta and Sigma = 4((delta' Lambda delta + s^2) Lambda +
Lambda delta delta' Lambda)."""

import numpy as np

from experiments.common import noise_statistics
from experiments.run import noise_probe_run

LAM = np.array([1.0, 0.5, 0.25, 0.125])
S = 1.0


def truth(delta):
    gradient = 2 * LAM * delta
    sigma = 4 * ((delta @ (LAM * delta) + S * S) * np.diag(LAM)
                 + np.outer(LAM * delta, LAM * delta))
    return float(gradient @ gradient), float(np.trace(sigma))


def squared_norms(rng, delta, sizes, n):
    """n draws of |G_B|^2 at each size: the mean gradient of B fresh rows."""
    out = []
    for b in sizes:
        x = rng.standard_normal((n, b, len(LAM))) * np.sqrt(LAM)
        e = rng.standard_normal((n, b))
        out.append(((2 * x * ((x @ delta) - S * e)[..., None]).mean(1) ** 2).sum(-1))
    return out


def test_few_draws_per_size_leave_the_fit_unbiased():
    """20 draws at B = 4, 16, 64 (B_simple = 19.3), 1000 seeds: the mean tr(Sigma) and |G|^2
    estimates are within 4% of the closed form (Monte Carlo error about 1.1% and 0.8%). Weighting
    each size by its own sample variance gave tr(Sigma) 11% low: a skewed sample's low mean
    comes with a low variance and so a large weight."""
    g2, trace = truth(np.full(4, 0.3))
    sizes = (4, 16, 64)
    fits = []
    for seed in range(1000):
        draws = squared_norms(np.random.default_rng(seed), np.full(4, 0.3), sizes, 20)
        fits.append(noise_statistics.fit_weighted_by_size(
            sizes, [d.mean() for d in draws], [len(d) for d in draws]))
    fits = np.array(fits)
    assert abs(fits[:, 1].mean() / trace - 1) < 0.04, fits[:, 1].mean() / trace
    assert abs(fits[:, 0].mean() / g2 - 1) < 0.04, fits[:, 0].mean() / g2


def test_a_trace_estimated_below_zero_gives_b_simple_zero_and_intervals_from_zero():
    """Sizes far above B_simple (3.8 here, probed at 512, 2048, 8192) can put the tr(Sigma)
    estimate below 0: B_simple is then 0 (the noise is not seen at these sizes) and no interval
    reaches below 0; the probe's line says to probe smaller sizes."""
    delta = np.full(4, 3.0)
    sizes = (512, 2048, 8192)
    for seed in range(40):
        result = noise_statistics.estimate(
            sizes, squared_norms(np.random.default_rng(seed), delta, sizes, 10), seed=seed)
        for name in ("b_simple", "gradient_sq_norm", "trace_sigma"):
            low, high = result[f"{name}_interval"]
            assert 0.0 <= low <= high, (seed, name, low, high)
        if result["trace_sigma"] < 0:
            break
    else:
        raise AssertionError("no seed gave a negative tr(Sigma) estimate")
    assert result["b_simple"] == 0.0
    values = {"noise_probe/b_simple": result["b_simple"],
              "noise_probe/b_simple_low": result["b_simple_interval"][0],
              "noise_probe/b_simple_high": result["b_simple_interval"][1]}
    assert "probe smaller sizes" in noise_probe_run.describe(values, 0.95)
