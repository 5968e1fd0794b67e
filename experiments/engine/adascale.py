"""AdaScale in the train step (Johnson et al. 2020): the learning rate times the gain r, and the
progress tau that drives the learning-rate schedule.

For an update at B = S * B_0 rows, r = (sigma^2 + |G|^2) / (sigma^2 / S + |G|^2) with
sigma^2 = tr(Sigma) / B_0 (``models.learning_rate_scaling``, which also has the same formula
for NumPy). tr(Sigma) and |G|^2 are the noise scale's moving averages (``noise_scale``), read
right after this update's own sample was recorded and before the optimizer applies it; the
step samples every update when AdaScale needs estimates. The update uses lr(tau_t) * r_t, then
tau_{t+1} = tau_t + r_t: the schedule is read at tau instead of the update count.

Exactly the base run where S = 1: r is 1.0 (not computed), tau counts updates, and
lr(tau) * 1.0 is the value lr(iterations) would have been, bit for bit.
"""

import keras
import tensorflow as tf

from experiments.engine import keras_internals, noise_scale


class ProgressLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """The optimizer's own learning rate (a variable, schedule or callable) read at the
    progress tau and multiplied by the gain: what the optimizer applies under AdaScale."""

    def __init__(self, base, scaling):
        self.base = base
        self.scaling = scaling

    def __call__(self, step):
        del step  # tau replaces the update count
        return self.at(self.scaling.progress, self.scaling.gain)

    def at(self, progress, gain):
        """lr(``progress``) * ``gain``: what the optimizer applies at that progress and gain."""
        base = self.base
        if isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
            value = base(tf.cast(progress, tf.float32))
        elif isinstance(base, (tf.Variable, keras.Variable)):
            value = tf.convert_to_tensor(base)
        elif callable(base):
            value = base()
        else:
            value = tf.constant(base)
        value = tf.convert_to_tensor(value)
        return value * tf.cast(gain, value.dtype)

    def get_config(self):
        return {"adascale_reference_batch_size": self.scaling.reference_batch_size}


class AdaScale:
    """The gain and progress variables of one model, and the two graph hooks of its step.

    Args:
      reference_batch_size: B_0.
      estimates: whether the step measures the noise scale (two or more pieces per update);
        without, S must be 1 (checked by the run) and r stays 1.
    """

    def __init__(self, reference_batch_size, estimates):
        self.reference_batch_size = int(reference_batch_size)
        self.estimates = bool(estimates)
        kwargs = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.gain = tf.Variable(1.0, dtype=tf.float64, name="adascale_gain", **kwargs)
        self.progress = tf.Variable(0.0, dtype=tf.float64, name="adascale_progress", **kwargs)
        self.base_learning_rate = None
        self.learning_rate = None  # the optimizer's ``ProgressLearningRate`` once attached

    def attach(self, model):
        """Makes ``model``'s optimizer apply lr(tau) * r, and its step run the hooks."""
        optimizer = model.optimizer
        self.base_learning_rate = keras_internals.learning_rate_object(optimizer)
        self.learning_rate = ProgressLearningRate(self.base_learning_rate, self)
        optimizer.learning_rate = self.learning_rate
        model.learning_rate_scaling = self
        return self

    def applied_learning_rate(self):
        """The learning rate the last update applied, lr(tau_t) * r_t (host). After the update
        the optimizer's own ``learning_rate`` already reads lr(tau_t + r_t) * r_t, one gain-step
        further along a decaying schedule."""
        gain = self.gain.numpy()
        before = tf.constant(self.progress.numpy() - gain, tf.float64)
        return float(keras.ops.convert_to_numpy(self.learning_rate.at(before, gain)))

    def variables(self):
        """What a checkpoint saves (the base learning rate's variable, no longer the
        optimizer's once wrapped, too)."""
        extra = [self.base_learning_rate] if isinstance(
            self.base_learning_rate, (tf.Variable, keras.Variable)) else []
        return [self.gain, self.progress] + extra

    def before_update(self, measurements):
        """Sets the gain of the update about to be applied (graph code)."""
        if not self.estimates:
            return
        state = tf.convert_to_tensor(measurements.noise_scale)
        weight = state[noise_scale.WEIGHT]
        have = tf.logical_and(state[noise_scale.COUNT] > 0, weight > 0)
        safe = tf.where(have, weight, tf.ones_like(weight))
        g2 = tf.maximum(state[noise_scale.EMA_G2] / safe, 0.0)
        sigma2 = tf.maximum(state[noise_scale.EMA_TRACE] / safe, 0.0) / self.reference_batch_size
        rows = tf.cast(measurements.batch_size, tf.float64)
        scale = rows / self.reference_batch_size
        raw = (sigma2 + g2) / tf.maximum(sigma2 / scale + g2, 1e-300)
        low, high = tf.minimum(scale, 1.0), tf.maximum(scale, 1.0)
        gain = tf.clip_by_value(raw, low, high)
        ok = tf.logical_and(have, tf.logical_and(sigma2 + g2 > 0, tf.math.is_finite(gain)))
        # S = 1 exactly: r is 1.0 itself (not x / x), so the run is the base run bit for bit.
        gain = tf.where(tf.logical_and(ok, tf.not_equal(scale, 1.0)), gain,
                        tf.ones_like(gain))
        self.gain.assign(gain)

    def after_update(self):
        """tau += r (graph code)."""
        self.progress.assign_add(self.gain)
