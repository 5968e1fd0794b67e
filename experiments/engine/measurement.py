"""The one shape of a per-update measurement, and how a loop runs it.

A measurement declares four things:

- ``cadence`` (``schedule.Cadence``): which updates it reads (every n, each epoch's last);
- ``before_update()`` (optional graph code): run by the train step right before a measured update
  is applied, e.g. keep a copy of the weights for an update-to-weight ratio;
- ``read(update)`` (graph code): a float64 tensor of shape ``shape``, read right after the update;
- ``publish(update, row)`` (host): what to do with the row (log it, keep it).

``start(model)`` prepares it once training begins (variables, its read's shape) and says whether
it is measured at all on this model; ``finish(update)`` runs after the last update (a final point,
a flush); ``measure_now(update)`` reads in a graph call of its own (a loop that cannot read it
inside its train call, or Keras' own ``fit``: a measurement is also a Keras callback whose hooks
do that).

batchlab's loop (``custom_loop.CustomLoop``) takes the measurements out of its callbacks and runs
every one inside its train calls: it
asks ``schedule.UpdateSchedule`` where segments end, tells the step which update is measured
(``StepMeasurements.measured_update``), and runs ``read`` there (``graph_calls.chunk_function``),
so a measured update costs no graph call of its own. A measurement whose ``in_train_call`` is
False is read by ``measure_now`` right after the call that ends on its update instead.
"""

import abc

import keras
import tensorflow as tf


class Measurement(keras.callbacks.Callback, abc.ABC):
    """Base of a per-update measurement (see the module docstring for the shape). It is also a
    Keras callback, so the same object measures in Keras' own ``fit`` (its hooks, below); batchlab's
    loop takes it out of the callback list and runs its shape instead, so its hooks never run
    there.

    Attributes:
      cadence: the ``Cadence`` of the updates it reads.
      shape: the shape of ``read``'s float64 row (set by ``start``).
      uses_step: the train step must fill its gradient norms (``StepMeasurements``) and run
        ``before_update`` on the measured updates (needs batchlab's ``VirtualBatchModel``).
      in_train_call: ``read`` may run inside the loop's train call (False: a call of its own).
    """

    cadence = None
    shape = ()
    uses_step = False
    in_train_call = True
    before_update = None  # or a graph function of no arguments

    def start(self, model):
        """Prepares the measurement of ``model`` (host, once training begins, before any graph
        function is traced); returns whether it is measured in this run."""
        self.set_model(model)
        return True

    @abc.abstractmethod
    def read(self, update):
        """Graph code run right after update ``update`` (an int64 tensor): the row to publish."""

    @abc.abstractmethod
    def publish(self, update, row):
        """Host side of a measured update: ``row`` is ``read``'s value as a NumPy array."""

    def finish(self, update):
        """After the last update of training (``update`` updates done)."""

    def measure_now(self, update):
        """Reads and publishes update ``update`` in a graph call of its own (traced once)."""
        if getattr(self, "_own_call", None) is None:
            self._own_call = tf.function(
                lambda: self.read(tf.cast(self.model.optimizer.iterations, tf.int64)),
                autograph=False).get_concrete_function()
        self.publish(update, self._own_call().numpy())

    def zeros(self):
        return tf.zeros(self.shape, tf.float64)

    # -- Keras' own fit (one update per call) ----------------------------------------------------
    # Before a measured update the step is told to measure it (``StepMeasurements.
    # measured_update``) and ``before_update`` runs in a graph call of its own; after it,
    # ``measure_now`` reads it. The update count is the optimizer's. An epoch's last update is
    # known when ``fit`` knows the epoch's length (``steps`` in the params); with an unknown
    # length, the epoch-end point of a measurement that needs nothing from the step is read at
    # ``on_epoch_end``.

    def on_train_begin(self, logs=None):
        if int(getattr(self.model, "steps_per_execution", 1) or 1) > 1:
            raise ValueError(f"{type(self).__name__} needs one update per call in Keras' fit: "
                             "compile with steps_per_execution=1.")
        self._measured = self.start(self.model)
        before = self.before_update if self._measured else None
        self._before = None if before is None else tf.function(
            before, autograph=False).get_concrete_function()
        self._last = None

    def _logs(self, update, batch):
        steps = (self.params or {}).get("steps")
        epoch_end = update if steps is not None and batch + 1 == steps else None
        return self.cadence.logs(update, epoch_end)

    def on_train_batch_begin(self, batch, logs=None):
        if not self._measured or not self.uses_step:
            return
        update = int(self.model.optimizer.iterations.numpy()) + 1
        if self._logs(update, batch):
            self.model.measurements.measured_update.assign(update)
            if self._before is not None:
                self._before()

    def on_train_batch_end(self, batch, logs=None):
        if not self._measured:
            return
        update = int(self.model.optimizer.iterations.numpy())
        if self._logs(update, batch):
            self._last = update
            self.measure_now(update)

    def on_epoch_end(self, epoch, logs=None):
        if not self._measured or not self.cadence.at_epoch_end or self.uses_step:
            return
        update = int(self.model.optimizer.iterations.numpy())
        if update and update != self._last:
            self._last = update
            self.measure_now(update)

    def on_train_end(self, logs=None):
        if self._measured:
            self.finish(int(self.model.optimizer.iterations.numpy()))
