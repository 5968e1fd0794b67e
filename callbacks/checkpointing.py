"""Checkpoints on their own cadence, and a clean stop at the next update boundary.

``PeriodicCheckpoint`` calls ``save(epoch, step, update)`` (the position training continues from:
``step`` updates of ``epoch`` done, ``update`` updates done in all; after an epoch's last update,
``step`` is the epoch's length and the epoch's end is still to run) every ``every_n_updates`` updates and/or
every ``every_n_minutes`` minutes. When ``stop_requested()`` returns a reason (a signal number,
say), it saves at the next update boundary and raises ``TrainingInterrupted``, so the run's owner
can record it as interrupted and exit. What is saved is the owner's business (``save`` is any
function): in batchlab runs, ``experiments/run/checkpoints.py``. Works in any ``model.fit``; with
``steps_per_execution`` > 1 it saves at call boundaries, the first at or after each multiple.
"""

import signal
import time

import keras

from experiments.common import checks
from experiments.engine.schedule import Cadence, epoch_first_update


class TrainingInterrupted(Exception):
    """Training stopped on request after a checkpoint; ``reason`` says why (e.g. the signal)."""

    def __init__(self, reason, update):
        super().__init__(f"training interrupted ({reason_name(reason)}) after update {update}; "
                         "a checkpoint was saved there")
        self.reason = reason
        self.update = update


class StoppedAfterFinish(TrainingInterrupted):
    """A stop signal that came after the run's last update (during its last validation, final
    evaluation or reports): the run finished and its result is written; what launched it (a
    sweep, a study) stops, as on any stop signal."""

    def __init__(self, reason, update):
        Exception.__init__(self, f"stopped ({reason_name(reason)}) after the run finished at "
                                 f"update {update}; its result is written")
        self.reason = reason
        self.update = update


def reason_name(reason):
    """A signal number as its name (SIGTERM), anything else as it is."""
    try:
        return signal.Signals(reason).name
    except (TypeError, ValueError):
        return str(reason)


class PeriodicCheckpoint(keras.callbacks.Callback):
    """Args:
      save: ``save(epoch, step, update)``, called at an update boundary.
      every_n_updates: save every that many updates (None: not by count).
      every_n_minutes: save when that many minutes passed since the last save (None: not by time).
      stop_requested: returns a reason to stop now (truthy), or None; polled after every update.
    """

    def __init__(self, save, every_n_updates=None, every_n_minutes=None, stop_requested=None):
        super().__init__()
        self.save = save
        self.every_n_updates = checks.optional_positive_int(every_n_updates, "every_n_updates")
        self._cadence = Cadence(self.every_n_updates)
        self.every_seconds = None if every_n_minutes is None else 60.0 * checks.positive_number(
            every_n_minutes, "every_n_minutes")
        self.stop_requested = stop_requested or (lambda: None)
        self.saved_updates = []
        self._epoch = 0
        self._first_update = 0
        self._previous = 0  # the update count at the last batch hook (or the epoch's start)
        self._last_save = None

    def on_train_begin(self, logs=None):
        self._last_save = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        # The updates done before the epoch's first step, from the loop (a resumed epoch starts
        # at a later step): batch ``b`` of the epoch is then update first + b + 1.
        self._first_update = epoch_first_update(self.params, self.model)
        self._previous = int(self.model.optimizer.iterations.numpy())  # (resumed: restored)

    def on_train_batch_end(self, batch, logs=None):
        # batchlab's loop names each call by its real last step. Keras' fit with
        # steps_per_execution > 1 names it by its planned last step: past the epoch's end for a
        # short last call on finite data (clamped to the epoch's steps where the optimizer did
        # not run that many), but real where a repeated dataset runs whole calls past
        # ``steps_per_epoch``. Batches, not the optimizer's count, stay the position: a
        # LossScaleOptimizer does not count the steps it skips. A call of several updates may
        # step over a multiple of ``every_n_updates``: it saves at the call's end.
        steps = (self.params or {}).get("steps")
        if steps is not None and batch + 1 > steps and "epoch_first_update" not in self.params \
                and int(self.model.optimizer.iterations.numpy()) < self._first_update + batch + 1:
            batch = steps - 1
        update = self._first_update + batch + 1
        previous, self._previous = self._previous, update
        reason = self.stop_requested()
        due = reason is not None or self._cadence.crossed(previous, update) \
            or (self.every_seconds is not None
                and time.monotonic() - self._last_save >= self.every_seconds)
        if not due:
            return
        self._save(batch, update)
        if reason is not None:
            raise TrainingInterrupted(reason, update)

    def _save(self, batch, update):
        # After an epoch's last update the position is (epoch, its number of updates), not the
        # next epoch's start: the epoch's end (its logs, validation, epoch-end measurements)
        # has not run yet, and a run resumed there runs it from the saved epoch state.
        self.save(self._epoch, batch + 1, update)
        self.saved_updates.append(update)
        self._last_save = time.monotonic()
