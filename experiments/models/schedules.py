"""Learning-rate rules for batch size: linear and square-root scaling, and warm-up.

- Linear scaling (Goyal et al. 2017): lr × k for batch × k, with gradual warm-up.
- Square-root scaling (Hoffer et al. 2017): lr × √k.
Schedules count optimizer updates; with virtual batches one update is one virtual batch.
"""

import math
import numbers

import gin
import keras

from experiments.common import checks


# The batch sizes ``scaled_learning_rate`` was evaluated for since the configuration was last
# parsed: a run checks them against the B it trains at (``preflight.check_scaled_learning_rate``).
_EVALUATED = []


def evaluated_batch_sizes():
    """The ``batch_size`` of every evaluation of ``scaled_learning_rate`` since
    ``forget_evaluations``."""
    return list(_EVALUATED)


def forget_evaluations():
    """Called whenever the configuration is parsed afresh (each run of a sweep or study)."""
    _EVALUATED.clear()


@gin.configurable
def scaled_learning_rate(base_learning_rate=gin.REQUIRED, base_batch_size=gin.REQUIRED,
                         batch_size=gin.REQUIRED, rule="linear"):
    """The learning rate for ``batch_size`` given one tuned at ``base_batch_size``. Evaluated
    once, when the optimizer is built: ``batch_size`` must be the run's B (one macro for both,
    checked by the run), and the rate does not follow a B that changes while training."""
    checks.positive_number(base_learning_rate, "scaled_learning_rate.base_learning_rate")
    checks.positive_int(base_batch_size, "scaled_learning_rate.base_batch_size")
    checks.positive_int(batch_size, "scaled_learning_rate.batch_size")
    _EVALUATED.append(int(batch_size))
    ratio = batch_size / base_batch_size
    if rule == "linear":
        return base_learning_rate * ratio
    if rule == "sqrt":
        return base_learning_rate * math.sqrt(ratio)
    if rule == "none":
        return base_learning_rate
    raise ValueError(f"scaled_learning_rate.rule must be 'linear', 'sqrt' or 'none', got {rule!r}.")


@gin.register(module="batchlab")
@keras.saving.register_keras_serializable(package="batchlab")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``initial_learning_rate`` to ``peak_learning_rate`` over
    ``warmup_steps`` updates, then ``after`` (a schedule counted from the end of warm-up) or
    constant. Update t (0-based) of the warm-up runs at initial + (t + 1) / warmup_steps of the
    way: the first update moves (at 0 it would be wasted), the last of the warm-up runs at the
    peak."""

    def __init__(self, peak_learning_rate=gin.REQUIRED, warmup_steps=gin.REQUIRED,
                 initial_learning_rate=0.0, after=None):
        self.peak_learning_rate = checks.positive_number(
            peak_learning_rate, "WarmupSchedule.peak_learning_rate")
        self.warmup_steps = checks.non_negative_int(warmup_steps, "WarmupSchedule.warmup_steps")
        if isinstance(initial_learning_rate, bool) or not isinstance(
                initial_learning_rate, numbers.Real) or not 0 <= initial_learning_rate < math.inf:
            raise ValueError(f"WarmupSchedule.initial_learning_rate must be a number >= 0, got "
                             f"{initial_learning_rate!r}.")
        self.initial_learning_rate = float(initial_learning_rate)
        if after is not None and not callable(after):
            raise ValueError(f"WarmupSchedule.after must be a learning-rate schedule (a callable "
                             f"of the update), got {after!r}.")
        self.after = after

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        fraction = keras.ops.minimum((step + 1.0) / max(self.warmup_steps, 1), 1.0)
        warm = self.initial_learning_rate + fraction * (
            self.peak_learning_rate - self.initial_learning_rate)
        if self.after is None:
            return warm
        later = self.after(keras.ops.maximum(step - self.warmup_steps, 0.0))
        return keras.ops.where(step < self.warmup_steps, warm, later)

    def get_config(self):
        return {"peak_learning_rate": self.peak_learning_rate,
                "warmup_steps": self.warmup_steps,
                "initial_learning_rate": self.initial_learning_rate,
                "after": None if self.after is None else keras.saving.serialize_keras_object(
                    self.after)}

    @classmethod
    def from_config(cls, config):
        """The inverse of ``get_config``: ``after`` is rebuilt from its serialized form (a saved
        model or optimizer reloads with its schedule)."""
        config = dict(config)
        if isinstance(config.get("after"), dict):
            config["after"] = keras.saving.deserialize_keras_object(config["after"])
        return cls(**config)
