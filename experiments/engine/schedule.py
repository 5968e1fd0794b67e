"""Which updates are measured, and where the loop's graph calls end: the one place that decides.

Everything that happens "at update u" asks this module: the measurements (``Cadence``: every n
updates and/or at an epoch's last update), the loop's calls (``UpdateSchedule.chunks``: where a
call of several updates must end so that a host-side callback sees the update it acts on), and
the segments inside a call (``UpdateSchedule.segments``: a segment ends on each measured update,
where the loop reads the measurements in the same graph call). Update numbers are 1-based counts
of applied updates (``optimizer.iterations`` after the update); the loop passes them explicitly,
so nothing rebuilds them from Keras batch indices.

A callback that acts on the host at updates of its own (a checkpoint every n updates) declares
``every_n_updates``; one that acts before updates (``on_train_batch_begin``) makes its updates
run alone, right after its hook. Results are those of one update per call.
"""

import dataclasses
from typing import Optional

import keras

from experiments.common import checks
from experiments.engine import keras_internals


@dataclasses.dataclass(frozen=True)
class Cadence:
    """Every ``every_n_updates`` updates (None: none) and, with ``at_epoch_end``, each epoch's
    last update."""

    every_n_updates: Optional[int] = None
    at_epoch_end: bool = False

    def __post_init__(self):
        checks.optional_positive_int(self.every_n_updates, "every_n_updates")

    def logs(self, update, epoch_end=None):
        """Whether update ``update`` is measured; ``epoch_end``: the epoch's last update (None:
        unknown)."""
        return bool((self.every_n_updates and update % self.every_n_updates == 0)
                    or (self.at_epoch_end and update == epoch_end))

    def crossed(self, previous, update):
        """Whether the updates after ``previous`` up to ``update`` hold a multiple of
        ``every_n_updates``: a call that ran several updates (Keras' ``steps_per_execution``)
        may step over the multiple itself."""
        n = self.every_n_updates
        return bool(n and update // n > previous // n)


@dataclasses.dataclass(frozen=True)
class Position:
    """Where training stands after an update: ``epoch`` (0-based), ``step`` (updates done in that
    epoch) and ``update`` (updates done in all). The loop hands it to callbacks in their params
    (``epoch_first_update``) so that a checkpoint records where training continues."""

    epoch: int
    step: int
    update: int


def epoch_first_update(params, model):
    """The updates done before the current epoch began: batchlab's loop puts it in the callbacks'
    params at every epoch; under Keras' fit (every epoch starts at batch 0) it is the optimizer's
    count at the epoch's begin hook."""
    first = (params or {}).get("epoch_first_update")
    return int(model.optimizer.iterations.numpy()) if first is None else int(first)


class UpdateSchedule:
    """Where the calls of an epoch end and which measurements read after which update.

    Args:
      measured: the ``Cadence`` of each measurement the loop reads inside its calls.
      callbacks: the run's Keras callbacks; a call ends on each multiple of a callback's
        ``every_n_updates``, and the update a callback acting before updates logs runs alone.
      steps_per_execution: most updates per call.
      read_after: the ``Cadence`` of each measurement read by a call of its own right after the
        train call: a call ends on each of its updates (an epoch's last ends one anyway).
    """

    def __init__(self, measured, callbacks, steps_per_execution, read_after=()):
        self.measured = tuple(measured)
        self.call_ends = sorted({_cadence(c) for c in callbacks if _cadence(c)}
                                | {c.every_n_updates for c in read_after if c.every_n_updates})
        before = [c for c in callbacks if acts_before_updates(c)]
        self.before = sorted({_cadence(c) for c in before if _cadence(c)})
        # A callback acting before every update (an LR range test) needs one update per call.
        every_update = any(_cadence(c) is None for c in before)
        self.size = 1 if every_update else steps_per_execution
        self.isolate_epoch_end = bool(before)

    def chunks(self, first, steps, update):
        """Yields (first step, number of updates) of each call of an epoch of ``steps`` updates
        from step ``first``; ``update``: updates done before step ``first``."""
        step = first
        while step < steps:
            size = min(self.size, steps - step)
            for every in self.call_ends:
                size = min(size, every - update % every)
            end = update + size
            isolate = (self.isolate_epoch_end and step + size == steps) or any(
                end % every == 0 for every in self.before)
            if isolate and size > 1:
                size -= 1
            yield step, size
            step, update = step + size, update + size

    def segments(self, update, size, epoch_end):
        """How a call of ``size`` updates after ``update`` runs: (lengths, masks, logged). Each
        segment ends on a measured update (``masks[s][m]`` True for each measurement ``m`` read
        right after it) or at the call's end (no mask). ``logged``: (segment, measurement,
        update) in update order. ``epoch_end``: the epoch's last update (None: unknown)."""
        lengths, masks, logged = [], [], []
        run = 0
        for u in range(update + 1, update + size + 1):
            run += 1
            mask = [cadence.logs(u, epoch_end) for cadence in self.measured]
            if any(mask):
                logged.extend((len(lengths), m, u) for m, on in enumerate(mask) if on)
                lengths.append(run)
                masks.append(mask)
                run = 0
        if run or not lengths:
            lengths.append(run)
            masks.append([False] * len(self.measured))
        return lengths, masks, logged


def _cadence(callback):
    """A callback's ``every_n_updates`` when it is a positive int, else None."""
    every = getattr(callback, "every_n_updates", None)
    return every if isinstance(every, int) and not isinstance(every, bool) and every > 0 \
        else None


def acts_before_updates(callback):
    """Whether ``callback`` does something in ``on_train_batch_begin``. Keras' TensorBoard only
    counts batches there, for its per-batch scalars and profiling: with neither (the default,
    ``update_freq='epoch'``) it does nothing per update."""
    if isinstance(callback, keras.callbacks.TensorBoard):
        return callback.update_freq != "epoch" or keras_internals.tensorboard_profiles(callback)
    return overrides(callback, ("on_train_batch_begin",))


def overrides(callback, hooks):
    """Whether ``callback``'s class defines any of ``hooks`` (Keras' base hooks do nothing)."""
    return any(getattr(type(callback), hook) is not getattr(keras.callbacks.Callback, hook)
               for hook in hooks)
