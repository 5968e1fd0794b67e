"""Logs AdaScale's gain r and progress tau (``adascale/gain``, ``adascale/progress``) and the
learning rate the optimizer applied (``adascale/learning_rate``) every ``every_n_updates`` updates
and at each epoch's end, keyed by the update count.

The values are those of the update just applied (the train step sets the gain before it applies
an update, then adds it to tau): the learning rate is lr(tau_t) * r_t, the rate that update
used, not the optimizer's ``learning_rate`` after it (which reads the schedule at tau_t + r_t).
Usable in a plain ``model.fit`` of a model whose learning rate AdaScale scales
(``experiments.engine.adascale.AdaScale.attach``).
"""

import keras

from callbacks import summary_writer
from experiments.common import checks
from experiments.engine.schedule import Cadence


class AdaScaleLog(keras.callbacks.Callback):
    """Args:
      log_dir: TensorBoard directory (scalars go to ``log_dir/train``); None: keep in memory.
      every_n_updates: logging cadence (the loop ends its calls there, so each point is the
        value of that very update).
    """

    def __init__(self, log_dir=None, every_n_updates=10):
        super().__init__()
        self.log_dir = log_dir
        self.every_n_updates = checks.positive_int(every_n_updates, "every_n_updates")
        self._cadence = Cadence(self.every_n_updates)
        self.history = []  # (update, gain, progress, learning rate applied)
        self._seen = 0  # the update count at the last batch hook

    def _scaling(self):
        scaling = getattr(self.model, "learning_rate_scaling", None)
        if scaling is None:
            raise ValueError("AdaScaleLog needs a model whose learning rate AdaScale scales "
                             "(train.learning_rate_scaling = @adascale()).")
        return scaling

    def _log(self):
        scaling = self._scaling()
        update = int(self.model.optimizer.iterations.numpy())
        if self.history and self.history[-1][0] == update:
            return
        gain, progress = float(scaling.gain.numpy()), float(scaling.progress.numpy())
        learning_rate = scaling.applied_learning_rate()
        self.history.append((update, gain, progress, learning_rate))
        summary_writer.scalars(self.log_dir, {"adascale/gain": gain,
                                              "adascale/progress": progress,
                                              "adascale/learning_rate": learning_rate}, update)

    def on_train_begin(self, logs=None):
        self._scaling()  # a model without AdaScale is refused before any update
        self._seen = int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        # Again here: a resumed run restores its update count after ``on_train_begin``, which
        # would otherwise see update 0 and log at the first call's end, off the cadence.
        self._seen = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        # A call of several updates (``steps_per_execution`` > 1 in Keras' fit) may step over a
        # multiple: the point is then the call's last update.
        update = int(self.model.optimizer.iterations.numpy())
        previous, self._seen = self._seen, update
        if self._cadence.crossed(previous, update):
            self._log()

    def on_epoch_end(self, epoch, logs=None):
        self._log()

    def result(self):
        """``result.json``: the progress tau and the gain at the end, the mean gain."""
        scaling = self._scaling()
        updates = int(self.model.optimizer.iterations.numpy())
        progress = float(scaling.progress.numpy())
        return {"adascale/progress": progress, "adascale/gain": float(scaling.gain.numpy()),
                "adascale/mean_gain": progress / updates if updates else 1.0}
