"""Where the graph calls of an epoch end when several updates run per call
(``fit.steps_per_execution``): every measurement and checkpoint must still see the update it
logs, and a callback acting before an update must run right before it.

``ChunkPlan`` reads the callbacks once: their ``every_n_updates`` (a call ends on each multiple)
and whether they act in ``on_train_batch_begin`` (the update they log then runs alone). The
results are those of one update per call (``tests/test_speed_loop.py``).
"""

import keras


class ChunkPlan:
    """Where the calls of an epoch end: at most ``steps_per_execution`` updates each, ending at
    every multiple of each callback's ``every_n_updates`` and at the epoch's end. Where a callback
    that acts before updates logs (its multiples, the epoch's end), that update runs alone: its
    begin hook then comes right before it, as with one update per call."""

    def __init__(self, callbacks, steps_per_execution):
        self.cadences = sorted({cadence(c) for c in callbacks if cadence(c)})
        before = [c for c in callbacks if acts_before_updates(c)]
        self.before = sorted({cadence(c) for c in before if cadence(c)})
        # A callback acting before every update (an LR range test) needs one update per call.
        every_update = any(cadence(c) is None for c in before)
        self.size = 1 if every_update else steps_per_execution
        self.isolate_epoch_end = bool(before)

    def chunks(self, first, steps, update):
        """Yields (first step, number of updates) of each call; ``update``: updates done before
        step ``first``."""
        step = first
        while step < steps:
            size = min(self.size, steps - step)
            for cadence in self.cadences:
                size = min(size, cadence - update % cadence)
            end = update + size
            isolate = (self.isolate_epoch_end and step + size == steps) or any(
                end % cadence == 0 for cadence in self.before)
            if isolate and size > 1:
                size -= 1
            yield step, size
            step, update = step + size, update + size


def cadence(callback):
    """A callback's ``every_n_updates`` when it is a positive int, else None."""
    every = getattr(callback, "every_n_updates", None)
    return every if isinstance(every, int) and not isinstance(every, bool) and every > 0 \
        else None


def acts_before_updates(callback):
    """Whether ``callback`` does something in ``on_train_batch_begin``. Keras' TensorBoard only
    counts batches there, for its per-batch scalars and profiling: with neither (the default,
    ``update_freq='epoch'``) it does nothing per update."""
    if isinstance(callback, keras.callbacks.TensorBoard):
        return callback.update_freq != "epoch" or bool(getattr(callback, "_should_trace", True))
    return overrides(callback, ("on_train_batch_begin",))


def overrides(callback, hooks):
    """Whether ``callback``'s class defines any of ``hooks`` (Keras' base hooks do nothing)."""
    return any(getattr(type(callback), hook) is not getattr(keras.callbacks.Callback, hook)
               for hook in hooks)
