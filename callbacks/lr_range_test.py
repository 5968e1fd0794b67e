"""Learning-rate range test (the fastai finder: an exponential ramp read on the smoothed training
loss; after Smith 2017, "Cyclical Learning Rates") as a callback of ``model.fit``.

Training starts at a tiny learning rate that grows geometrically with every update; the loss of
each update is recorded. Where the loss falls fastest is a good learning rate; where it shoots up
the updates overshoot. ``experiments.analysis.lr_range`` turns the record (``result()``) into a
suggestion.

Details that matter for reading the record:

- Update i (0-based) runs at ``min * (max / min) ** (i / (num_updates - 1))``, set on
  ``model.optimizer.learning_rate`` just before the update. The loss recorded with it is the loss
  Keras computes in that update's forward pass, i.e. before its step (the convention of Smith and
  of fastai); the effect of a rate therefore shows in the next point.
- Keras 3.15 reports ``logs["loss"]`` at batch end as the running mean of the epoch, weighted by
  rows per batch (the ``loss`` entry of ``model.metrics``: a ``Mean`` with ``total`` and
  ``count``). The per-update loss is taken as the change of that tracker's total over the change
  of its count around the update, which is exact also for a smaller last batch. A model whose
  train step does not feed the tracker falls back to ``(i + 1) * mean_i - i * mean_(i-1)`` (i the
  batch index in the epoch), which assumes equal batches.
- Training stops (``model.stop_training``) when the bias-corrected smoothed loss exceeds
  ``divergence_factor`` times its best value so far, when a loss or the smoothed loss is not
  finite, or after ``num_updates`` updates. Give ``fit`` at least that many updates.
- The smoothed loss averages over about ``1 / (1 - smoothing)`` updates (50 at 0.98, fastai's
  default, meant for ~100 noisy mini-batch updates); on a short or low-noise test it lags the raw
  loss, so divergence is declared, and the smoothed minimum found, several ramp points after the
  raw loss turned. Lower ``smoothing`` (or more updates) for such tests.
- At train end the optimizer gets its learning rate back; the weights stay trained by the test,
  so rebuild or reload the model before real training.
"""

import math
import numbers

import keras

from callbacks import summary_writer
from experiments.common import checks


class LearningRateRangeTest(keras.callbacks.Callback):
    """Args:
      min_learning_rate, max_learning_rate: the rates of the first and the last update.
      num_updates: updates of the ramp (an integer >= 3); training stops after them.
      log_dir: TensorBoard directory (scalars under ``log_dir/train``), or None.
      divergence_factor: stop once the smoothed loss exceeds this multiple of its best value.
      smoothing: weight of the past in the exponential average of the loss, in [0, 1).
    """

    def __init__(self, min_learning_rate, max_learning_rate, num_updates, log_dir=None,
                 divergence_factor=4.0, smoothing=0.98):
        super().__init__()
        self.min_learning_rate = checks.positive_number(
            min_learning_rate, "LearningRateRangeTest min_learning_rate")
        self.max_learning_rate = checks.positive_number(
            max_learning_rate, "LearningRateRangeTest max_learning_rate")
        if self.min_learning_rate >= self.max_learning_rate:
            raise ValueError(f"LearningRateRangeTest: min_learning_rate={min_learning_rate!r} "
                             f"must be below max_learning_rate={max_learning_rate!r}.")
        if checks.positive_int(num_updates, "LearningRateRangeTest num_updates") < 3:
            raise ValueError(f"LearningRateRangeTest num_updates must be at least 3 (a ramp), "
                             f"got {num_updates!r}.")
        factor_ok = isinstance(divergence_factor, numbers.Real) and divergence_factor > 1
        if not factor_ok or not math.isfinite(divergence_factor):
            raise ValueError(f"LearningRateRangeTest: divergence_factor={divergence_factor!r} "
                             "must be a finite number above 1.")
        checks.fraction(smoothing, "LearningRateRangeTest smoothing")
        self.num_updates = int(num_updates)
        self.log_dir = log_dir
        self.divergence_factor = float(divergence_factor)
        self.smoothing = float(smoothing)
        self._reset()

    def _reset(self):
        self.learning_rates, self.losses, self.smoothed_losses = [], [], []
        self.stopped_because = None
        self._average = 0.0
        self._best = math.inf
        self._before = None  # loss tracker (total, count) before the running update
        self._previous_mean = None  # logs["loss"] after the previous batch of this epoch
        self._initial_learning_rate = None

    def learning_rate_at(self, update):
        """The learning rate of update ``update`` (0-based) of the ramp."""
        ratio = self.max_learning_rate / self.min_learning_rate
        return self.min_learning_rate * ratio ** (update / (self.num_updates - 1))

    def on_train_begin(self, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError("LearningRateRangeTest needs a compiled model with an optimizer.")
        # Keras' public ``learning_rate`` is the variable itself only when the optimizer was
        # created with a number (also through a LossScaleOptimizer); a schedule or a callable
        # gives its current value, which assigning cannot change.
        rate = optimizer.learning_rate
        if not isinstance(rate, keras.Variable):
            raise ValueError(
                "LearningRateRangeTest sets the learning rate of every update, but the optimizer "
                f"was created with a schedule or callable (its learning_rate now reads {rate!r}, "
                "not a variable). Create the optimizer with a float learning_rate for the range "
                "test.")
        steps = getattr(self.model, "steps_per_execution", 1) or 1
        if int(steps) > 1:
            raise ValueError(
                f"LearningRateRangeTest needs one learning rate per update, but the model was "
                f"compiled with steps_per_execution={int(steps)} (callbacks run once per "
                "execution). Compile with steps_per_execution=1 for the range test.")
        self._reset()
        # (a MirroredVariable under a strategy has no float(): read its value)
        self._initial_learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))

    def on_train_batch_begin(self, batch, logs=None):
        update = len(self.learning_rates)
        self.model.optimizer.learning_rate = self.learning_rate_at(update)
        self._before = self._tracker_state()

    def _tracker_state(self):
        tracker = next((m for m in self.model.metrics if m.name == "loss"), None)
        if tracker is None or not hasattr(tracker, "total") or not hasattr(tracker, "count"):
            return None
        return float(tracker.total.numpy()), float(tracker.count.numpy())

    def _update_loss(self, batch, logs):
        """The loss of the update that just ran (see the module docstring)."""
        if "loss" not in logs:
            raise ValueError("LearningRateRangeTest needs logs['loss'] at the end of each update; "
                             f"got only {sorted(logs)}.")
        mean = float(logs["loss"])
        after = self._tracker_state()
        previous, self._previous_mean = self._previous_mean, mean
        if self._before is not None and after is not None and after[1] > self._before[1]:
            return (after[0] - self._before[0]) / (after[1] - self._before[1])
        if batch == 0 or previous is None:
            return mean
        return (batch + 1) * mean - batch * previous

    def on_epoch_begin(self, epoch, logs=None):
        self._previous_mean = None  # Keras resets the running mean at every epoch

    def on_train_batch_end(self, batch, logs=None):
        update = len(self.learning_rates)
        loss = self._update_loss(batch, logs or {})
        self._average = self.smoothing * self._average + (1.0 - self.smoothing) * loss
        smoothed = self._average / (1.0 - self.smoothing ** (update + 1))
        rate = self.learning_rate_at(update)
        self.learning_rates.append(rate)
        self.losses.append(loss)
        self.smoothed_losses.append(smoothed)
        self._log(int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)), rate, loss,
                  smoothed)
        if not (math.isfinite(loss) and math.isfinite(smoothed)):
            self._stop("non_finite_loss")
        elif smoothed <= 0:
            # "divergence_factor times the best" reads a loss as a positive scale: at or below
            # 0 it would stop a run that is still improving (4 x -0.1 lies below -0.105).
            raise ValueError(
                f"The learning-rate range test needs a positive loss (its divergence test is "
                f"loss > {self.divergence_factor:g} x the best); update {update + 1}'s smoothed "
                f"loss is {smoothed:.4g}. Add a constant to the loss to make it positive.")
        elif smoothed > self.divergence_factor * self._best:
            self._stop("diverged")
        elif update + 1 >= self.num_updates:
            self._stop("num_updates")
        self._best = min(self._best, smoothed)

    def _stop(self, reason):
        self.stopped_because = reason
        self.model.stop_training = True

    def _log(self, step, rate, loss, smoothed):
        # Through ``summary_writer.scalars``: a relaunched range test (it starts its ramp again)
        # does not log the points it logged before twice. Keyed by the optimizer's update count
        # after the update, as every other per-update scalar (also on a model that trained
        # before the test).
        summary_writer.scalars(self.log_dir, {"lr_range/loss": loss,
                                              "lr_range/smoothed_loss": smoothed,
                                              "lr_range/learning_rate": rate}, step)

    def on_train_end(self, logs=None):
        if self.stopped_because is None:
            self.stopped_because = "data_exhausted"  # fit ran out of epochs/steps first
        if self._initial_learning_rate is not None:
            self.model.optimizer.learning_rate = self._initial_learning_rate
        summary_writer.flush(self.log_dir)

    def result(self):
        """The record: learning rates, losses, smoothed losses and why the test stopped.

        ``experiments.analysis.lr_range.suggest_learning_rate`` turns it into a suggestion (kept
        out of the callback: callbacks measure, the analysis layer interprets).
        """
        return {"learning_rates": list(self.learning_rates), "losses": list(self.losses),
                "smoothed_losses": list(self.smoothed_losses), "smoothing": self.smoothing,
                "stopped_because": self.stopped_because, "updates": len(self.learning_rates)}
