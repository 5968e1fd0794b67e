"""Where the graph calls of an epoch end when several updates run per call
(``fit.steps_per_execution``): every measurement and checkpoint must still see the update it
logs, and a callback acting before an update must run right before it.

``ChunkPlan`` reads the callbacks once: their ``every_n_updates`` (a call ends on each multiple)
and whether they act in ``on_train_batch_begin`` (the update they log then runs alone). The
results are those of one update per call (``tests/test_speed_loop.py``).

A measurement callback that offers an ``update_probe()`` (``step_measurements.UpdateProbe``) is
measured inside the call instead: its cadence ends no call, and the call is cut into segments
(``segments``) that end on the updates it logs, where its ``after`` reads them.
"""

import keras


class ChunkPlan:
    """Where the calls of an epoch end: at most ``steps_per_execution`` updates each, ending at
    every multiple of each callback's ``every_n_updates`` and at the epoch's end. Where a callback
    that acts before updates logs (its multiples, the epoch's end), that update runs alone: its
    begin hook then comes right before it, as with one update per call."""

    def __init__(self, callbacks, steps_per_execution):
        self._callbacks = list(callbacks)
        self._steps_per_execution = steps_per_execution
        self._probes = None
        self._plan(self._callbacks)

    def _plan(self, callbacks):
        self.cadences = sorted({cadence(c) for c in callbacks if cadence(c)})
        before = [c for c in callbacks if acts_before_updates(c)]
        self.before = sorted({cadence(c) for c in before if cadence(c)})
        # A callback acting before every update (an LR range test) needs one update per call.
        every_update = any(cadence(c) is None for c in before)
        self.size = 1 if every_update else self._steps_per_execution
        self.isolate_epoch_end = bool(before)

    def probes(self, enabled=True):
        """The callbacks' ``UpdateProbe``s (asked once, after ``on_train_begin``; taking a probe
        tells its callback that the loop measures for it); the calls are then planned without
        the probed callbacks. ``enabled`` False (or no probe offered): [] and the plan as is."""
        if self._probes is None:
            self._probes = []
            probed = set()
            if enabled:
                for callback in self._callbacks:
                    probe = getattr(callback, "update_probe", None)
                    probe = probe() if callable(probe) else None
                    if probe is not None:
                        self._probes.append(probe)
                        probed.add(id(callback))
            if probed:
                self._plan([c for c in self._callbacks if id(c) not in probed])
        return self._probes

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

    def segments(self, update, size, epoch_end):
        """How a call of ``size`` updates after ``update`` runs with the probes: (lengths, masks,
        logged). Each segment ends on a logged update (``masks[s][p]`` True for each probe ``p``
        logging it, read right after it) or at the call's end (no mask). ``logged``: (segment,
        probe, update) in update order. ``epoch_end``: the epoch's last update (None: unknown)."""
        lengths, masks, logged = [], [], []
        run = 0
        for u in range(update + 1, update + size + 1):
            run += 1
            mask = [probe.logs(u, u == epoch_end) for probe in self._probes]
            if any(mask):
                logged.extend((len(lengths), p, u) for p, on in enumerate(mask) if on)
                lengths.append(run)
                masks.append(mask)
                run = 0
        if run or not lengths:
            lengths.append(run)
            masks.append([False] * len(self._probes))
        return lengths, masks, logged


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
