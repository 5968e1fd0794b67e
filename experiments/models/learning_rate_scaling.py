"""How the learning rate follows the batch an update has: AdaScale (Johnson et al. 2020).

``train.learning_rate_scaling = @adascale()`` multiplies the learning rate of every update by the
gain

    r = (sigma^2 + |G|^2) / (sigma^2 / S + |G|^2),    S = B / B_0,

where sigma^2 = tr(Sigma) / B_0 is the variance of a B_0-row gradient and |G|^2 the true
gradient's squared norm, both from the train step's noise-scale averages (``engine.noise_scale``).
r is 1 where the gradient dominates (a larger batch does not help: the same step) and S where the
noise dominates (S times the rows: S times the step, the linear scaling rule). A progress
counter tau += r per update drives the learning-rate schedule in place of the update count, so a
schedule tuned at B_0 carries to any B, a batch that changes during training included
(``adaptive_batch``). An update with fewer rows than B_0 (an epoch's ragged last batch) has
S < 1 and a gain between S and 1. The train step does the arithmetic (``engine.adascale``); this
module holds the rule as the user bound it.
"""

import dataclasses
from typing import Optional

import gin

from experiments.common import checks


@dataclasses.dataclass(frozen=True)
class AdaScaleRule:
    """``reference_batch_size``: B_0, the batch the learning rate (schedule) was tuned for; None:
    the micro-batch b (S = k). ``horizon_examples``: the noise-scale averages' horizon the gain
    reads (None: the run's)."""

    reference_batch_size: Optional[int] = None
    horizon_examples: Optional[float] = None


@gin.configurable
def adascale(reference_batch_size=None, horizon_examples=None):
    """An ``AdaScaleRule`` for ``train.learning_rate_scaling``.

    Args:
      reference_batch_size: B_0, the batch the learning rate and its schedule were tuned at
        (S = B / B_0); None: the micro-batch b, so S = k.
      horizon_examples: the horizon (examples) of the noise-scale averages the gain reads; None:
        the run's (``measurements.gradient_noise_scale.horizon_examples``, 4096 by default).
    """
    if horizon_examples is not None:
        horizon_examples = float(checks.positive_number(horizon_examples,
                                                        "adascale.horizon_examples"))
    return AdaScaleRule(checks.optional_positive_int(reference_batch_size,
                                                     "adascale.reference_batch_size"),
                        horizon_examples)


def gain(trace_sigma, gradient_sq_norm, batch_size, reference_batch_size):
    """r for one update from tr(Sigma), |G|^2 and B (NumPy or Python floats): what the train
    step computes, for tests and analysis. |G|^2 below zero (an estimate) counts as 0; r is kept
    between 1 and S."""
    scale = batch_size / reference_batch_size
    g2 = max(gradient_sq_norm, 0.0)
    sigma2 = max(trace_sigma, 0.0) / reference_batch_size
    if sigma2 + g2 <= 0:
        return 1.0
    value = (sigma2 + g2) / (sigma2 / scale + g2)
    low, high = min(1.0, scale), max(1.0, scale)
    return min(max(value, low), high)
