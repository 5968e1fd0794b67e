"""``train.mode = 'lr_range_test'``: a run whose learning rate grows exponentially, one value per
update, until the loss diverges (Smith 2017, "Cyclical Learning Rates": go from a small to a large
learning rate, record the loss, pick the region where it falls fastest).

The run is an ordinary batchlab run (run directory, TensorBoard, measurements) of
``lr_range_test.num_updates`` updates at the run's ``train.batch_size``; ``modes.RangeTestMode``
sets its epochs (``epochs_for``), adds the callback (``callback``) and its result
(``summarize``). The callback ``callbacks.lr_range_test.LearningRateRangeTest`` sets the rates
and stops at divergence, and the result adds ``lr_range_test`` to ``result.json``: the suggested
learning rate, the rule that picked it (``experiments.analysis.lr_range``) and the plot
``lr_range_test.png``. Run as a study over batch sizes, the suggested rates show how the ramp's
suggestion moves with B, which is not the best fixed rate's scaling rule (docs/literature.md).
"""

import dataclasses
import math
import os

import gin

from callbacks.lr_range_test import LearningRateRangeTest
from experiments.analysis import lr_range
from experiments.common import checks


@dataclasses.dataclass(frozen=True)
class RangeTestSettings:
    min_learning_rate: float
    max_learning_rate: float
    num_updates: int
    rule: str
    divergence_factor: float
    smoothing: float


@gin.configurable("lr_range_test")
def range_test_settings(min_learning_rate=1e-5, max_learning_rate=10.0, num_updates=100,
                        rule="steepest", divergence_factor=4.0, smoothing=0.9):
    """Checked settings; every error names its binding (before anything is trained)."""
    low = checks.positive_number(min_learning_rate, "lr_range_test.min_learning_rate")
    high = checks.positive_number(max_learning_rate, "lr_range_test.max_learning_rate")
    if low >= high:
        raise ValueError(f"lr_range_test.min_learning_rate={min_learning_rate!r} must be below "
                         f"lr_range_test.max_learning_rate={max_learning_rate!r}.")
    updates = checks.positive_int(num_updates, "lr_range_test.num_updates")
    if updates < 3:
        raise ValueError(f"lr_range_test.num_updates={num_updates!r} must be at least 3.")
    checks.one_of(rule, lr_range.SUGGESTION_RULES, "lr_range_test.rule")
    factor = checks.positive_number(divergence_factor, "lr_range_test.divergence_factor")
    if factor <= 1:
        raise ValueError(f"lr_range_test.divergence_factor={divergence_factor!r} must be above 1.")
    return RangeTestSettings(low, high, updates, rule, factor,
                             checks.fraction(smoothing, "lr_range_test.smoothing"))


def epochs_for(settings, updates_per_epoch):
    """Epochs that hold the ramp's updates (the callback stops training after them)."""
    return max(1, math.ceil(settings.num_updates / updates_per_epoch))


def callback(settings, log_dir):
    """The callback that sets every update's learning rate, records its loss and stops."""
    return LearningRateRangeTest(settings.min_learning_rate, settings.max_learning_rate,
                                 settings.num_updates, log_dir=log_dir,
                                 divergence_factor=settings.divergence_factor,
                                 smoothing=settings.smoothing)


def summarize(settings, test, run_dir):
    """The suggestion, its rule and the plot (``lr_range_test.png``), for ``result.json``."""
    record = test.result()
    out = {"stopped_because": record["stopped_because"], "updates": record["updates"],
           "learning_rates": record["learning_rates"], "losses": record["losses"]}
    try:
        suggestion = lr_range.suggest_learning_rate(record["learning_rates"], record["losses"],
                                                    settings.rule, smoothing=settings.smoothing)
    except ValueError as error:
        out.update(suggested_learning_rate=None, rule=settings.rule, explanation=str(error))
        return out
    out.update(suggested_learning_rate=suggestion.learning_rate, rule=suggestion.rule,
               explanation=suggestion.explanation,
               min_loss_learning_rate=suggestion.min_loss_learning_rate,
               min_at_ramp_end=suggestion.at_ramp_end,
               plot=lr_range.plot_range_test(record["learning_rates"], record["losses"],
                                             suggestion, os.path.join(run_dir,
                                                                      "lr_range_test.png"),
                                             smoothing=settings.smoothing))
    return out
