"""The shared tail of batchlab's measurement callbacks: keep a history, log scalars, flush, report.

``MeasurementCallback.publish(step, values)`` appends to ``history`` and writes the scalars to
TensorBoard (``log_dir/train``; nothing when ``log_dir`` is None); training's end flushes them;
``result()`` gives the last values for the run's ``result.json``. ``UpdateClock`` adds the update
count at each batch hook without reading it every update.
"""

import keras
import numpy as np

from callbacks import summary_writer


class MeasurementCallback(keras.callbacks.Callback):
    """Args:
      log_dir: TensorBoard directory; None keeps values only (``self.history``).
    """

    def __init__(self, log_dir=None):
        super().__init__()
        self.log_dir = log_dir
        self.history = []  # (step, {tag: value})

    def publish(self, step, values):
        """Records ``{tag: value}`` at ``step`` and logs it."""
        self.history.append((step, values))
        summary_writer.scalars(self.log_dir, values, step)

    def whole_curve(self, tag, points):
        """``points`` ([step, value] of this process) with the points of ``tag`` a resumed run
        logged before its kill, sorted by step, values at float32 precision (as event files hold
        them: a resumed run's curve then equals an uninterrupted run's)."""
        merged = dict(summary_writer.logged_before(self.log_dir, tag))
        merged.update((int(step), value) for step, value in points)
        return [[step, float(np.float32(value))] for step, value in sorted(merged.items())]

    def last_logged_step(self):
        return self.history[-1][0] if self.history else None

    def on_train_end(self, logs=None):
        summary_writer.flush(self.log_dir)

    def result(self):
        """The last logged values, for the run's result.json."""
        return dict(self.history[-1][1]) if self.history else {}


class UpdateClock(MeasurementCallback):
    """A measurement callback knowing the update count at each batch hook cheaply.

    ``optimizer.iterations`` is read once per epoch; the update that a batch hook refers to is
    that count plus the batches run since the epoch began (also right with
    ``steps_per_execution``, where the hooks get the index of the last step run, and for an
    epoch resumed mid-way, whose first batch index is not 0).

    The epoch's first batch index comes from the params (``epoch_first_batch``): batchlab's loop
    passes ``initial_epoch`` and ``initial_step``; Keras' fit starts every epoch at 0. It is not
    read from the first hook seen, which with several updates per call is the end of a chunk.

    Batch hooks run after every update (Keras calls them whenever any callback defines them), so
    they only do integer arithmetic; anything that touches TensorFlow or NumPy happens on the
    updates that are logged.
    """

    def __init__(self, log_dir=None):
        super().__init__(log_dir)
        self._epoch_start = 0
        self._first_batch = 0
        self._steps = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = int(self.model.optimizer.iterations.numpy())
        self._first_batch = epoch_first_batch(self.params, epoch)
        self._steps = (self.params or {}).get("steps")

    def update_after(self, batch):
        """The update count once batch ``batch`` of this epoch has been applied."""
        return self._epoch_start + batch - self._first_batch + 1

    def is_logged(self, batch, every_n_updates, at_epoch_end=True):
        """Log after this batch: every ``every_n_updates`` updates and, with ``at_epoch_end``,
        after an epoch's last batch (so short runs and long intervals still give a point per
        epoch)."""
        return self.update_after(batch) % every_n_updates == 0 or (
            at_epoch_end and batch + 1 == self._steps)

    def current_update(self):
        return int(self.model.optimizer.iterations.numpy())


def epoch_first_batch(params, epoch):
    """The first batch index of ``epoch``: ``initial_step`` for the epoch training started in
    (a run resumed mid-epoch; batchlab's loop puts both in the params), else 0."""
    params = params or {}
    if epoch == params.get("initial_epoch", 0):
        return int(params.get("initial_step", 0) or 0)
    return 0
