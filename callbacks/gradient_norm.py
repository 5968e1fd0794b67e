"""Gradient norms and update-to-weight ratios, from the gradients the train step already computed.

batchlab's ``VirtualBatchModel`` stores, after every update, the norm of the applied gradient
(``model.measurements.gradient_norm``) and one norm per trainable variable
(``model.measurements.variable_gradient_norms``, in the order of ``model.trainable_variables``).
This callback publishes them every ``every_n_updates`` updates, keyed by the update count:

- ``gradients/global_norm``: norm of the whole applied gradient (data loss + regularizers);
- ``gradients/layer/<NN_layer>``: norm of each layer's part (its variables' norms combined),
  named by position and layer name (``layer_groups``), e.g. ``gradients/layer/01_dense``;
- ``update_ratio/global`` and ``update_ratio/layer/<NN_layer>``: ||w_after - w_before|| /
  ||w_before|| for that update, the "is my learning rate sane" number (around 1e-3 is typical).

Each epoch's last update is logged too, so that every epoch has a point (when the train step
measures only every n-th update, this callback asks it to measure that update as well).

Nothing here runs a second backward pass. The update ratio needs the weights before the update:
they are copied (one extra copy of the weights in memory) only before updates that will be logged,
so its cost is one weight copy and one pass over the weights every ``every_n_updates`` updates.

In batchlab's loop the copy is made by the train step before the updates it measures
(``StepMeasurements.keep_weights_before``) and the read runs inside the train chunk's graph call
(``update_probe``, ``experiments.engine.step_measurements.UpdateProbe``): a logged update then costs
no graph call of its own. In any other loop (Keras' ``fit``) the batch hooks make the two calls.
"""

import collections
import re

import numpy as np
import tensorflow as tf

from callbacks.base import UpdateClock
from experiments.common import checks
from experiments.engine.step_measurements import UpdateProbe


def step_measurements(model):
    """The ``StepMeasurements`` of a batchlab model; a clear error for any other model."""
    measurements = getattr(model, "measurements", None)
    if measurements is None:
        raise ValueError(
            "This callback reads gradients measured by "
            "batchlab's train step: wrap the model with "
            "experiments.engine.virtual_batch_model.as_virtual_batch_model first.")
    return measurements


def layer_groups(variables):
    """Groups variable indices by layer: ``{stable layer name: [indices]}``, in variable order.

    The layer of a variable is its path without the last part (``mlp/dense_3/kernel`` ->
    ``mlp/dense_3``); a first part shared by every variable (the model's name) is dropped. Keras
    numbers automatic names per process (``dense_3`` in the second model built), so the numeric
    suffixes are removed and the layer's position is put in front instead: ``01_dense``,
    ``02_dense``, ``03_output``. Tags then match across runs of a sweep.
    """
    paths = [getattr(v, "path", None) or v.name for v in variables]
    parts = [p.split("/") for p in paths]
    first = {p[0] for p in parts}
    drop_first = len(first) == 1 and all(len(p) > 2 for p in parts)
    by_path = collections.OrderedDict()
    for index, part in enumerate(parts):
        layer = part[1:-1] if drop_first else part[:-1]
        by_path.setdefault(tuple(layer) or (part[-1],), []).append(index)
    groups = collections.OrderedDict()
    for position, (layer, indices) in enumerate(by_path.items(), start=1):
        name = "/".join(_AUTO_NUMBER.sub("", piece) for piece in layer)
        groups[f"{position:02d}_{name}"] = indices
    return groups


_AUTO_NUMBER = re.compile(r"_\d+$")


class SquaredSums:
    """Sums of squared per-variable norms over all variables and over each layer's, for several
    rows at once: the host side of a logged point in a few NumPy operations (a loop over layers
    costs a few microseconds per layer and row, on every logged update)."""

    def __init__(self, groups, num_variables):
        self.layers = list(groups)
        self._layer_of = np.zeros(num_variables, np.int64)
        for layer, indices in enumerate(groups.values()):
            self._layer_of[indices] = layer

    def __call__(self, norms):
        """(total [rows], per layer [rows, layers]) of ``norms`` ([rows, variables]). A NaN or
        infinite norm stays in its own layer's sum (a diverging layer must show which one)."""
        squares = np.square(np.asarray(norms, np.float64))
        layers = np.stack([np.bincount(self._layer_of, weights=row, minlength=len(self.layers))
                           for row in squares])
        return squares.sum(axis=-1), layers


def norms64(tensors):
    """The norm of each tensor, as one float64 vector.

    sqrt(2 * l2_loss) is one fused pass in the tensor's own float type (``tf.norm`` first writes
    the squares to a temporary, and a cast would copy a large tensor); the square root and the
    cast to float64 are applied once to the stacked sums (each op costs a few microseconds of
    dispatch, as much as the whole pass over a bias vector).
    """
    tensors = list(tensors)
    if not tensors:
        return tf.zeros([0], tf.float64)
    if len({t.dtype for t in tensors}) == 1:
        sums = tf.cast(tf.stack([tf.nn.l2_loss(t) for t in tensors]), tf.float64)
    else:
        sums = tf.stack([tf.cast(tf.nn.l2_loss(t), tf.float64) for t in tensors])
    return tf.sqrt(2.0 * sums)


class GradientNorm(UpdateClock):
    """Publishes gradient norms (global and per layer) and update-to-weight ratios.

    Args:
      log_dir: TensorBoard directory (scalars go to ``log_dir/train``); None keeps values only.
      every_n_updates: logging frequency, in updates.
      per_layer: also log one norm (and ratio) per layer.
      update_ratio: log ||delta w|| / ||w|| of the logged updates (keeps one weight copy).
    """

    def __init__(self, log_dir=None, every_n_updates=10, per_layer=True, update_ratio=True):
        super().__init__(log_dir)
        self.every_n_updates = checks.positive_int(every_n_updates, "every_n_updates")
        self.per_layer = bool(per_layer)
        self.update_ratio = bool(update_ratio)
        self.values = []  # (update, global gradient norm)
        self._snapshot = None
        self._snapshot_for = None
        self._read = None
        self._probe = None
        self._probed = False  # this fit's loop measures through the probe

    def on_train_begin(self, logs=None):
        measurements = step_measurements(self.model)
        # The step fills the norms every ``measure_every_n_updates`` updates only: log on those.
        cadence = getattr(self.model, "measure_every_n_updates", 1)
        if cadence == 0 or self.every_n_updates % max(cadence, 1):
            raise ValueError(
                f"GradientNorm logs every {self.every_n_updates} updates but the train step "
                f"measures every {cadence}: use a multiple of the step's interval "
                "(measurements.every_n_updates sets both in batchlab runs).")
        self._cadence = max(cadence, 1)
        self._every_update = cadence == 1
        # An epoch's last update, off the step's interval, is asked for with request_measurement.
        self._can_request = hasattr(self.model, "request_measurement")
        self._epoch_ends = self._every_update or self._can_request
        variables = self.model.trainable_variables
        self._groups = layer_groups(variables)
        self._sums = SquaredSums(self._groups, len(variables))
        self._tags = [f"gradients/layer/{layer}" for layer in self._groups]
        self._ratio_tags = [f"update_ratio/layer/{layer}" for layer in self._groups]
        self._probed = False
        if self._read is not None:
            self._probe.at_epoch_end = self._epoch_ends
            return
        # Graph code, run by one graph call per logged update here, or inside the train chunk by
        # batchlab's loop (``update_probe``); concrete functions skip the tracing-cache lookup.
        snapshot = None
        if self.update_ratio:
            snapshot = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False)
                        for v in variables]

        def take_snapshot():
            for copy, variable in zip(snapshot, self.model.trainable_variables):
                copy.assign(variable)

        def read():
            grads = tf.cast(measurements.variable_gradient_norms, tf.float64)
            if snapshot is None:
                return grads[None]
            deltas = norms64(v - s for v, s in zip(self.model.trainable_variables, snapshot))
            return tf.stack([grads, deltas, norms64(snapshot)])

        self._snapshot = snapshot
        if snapshot is not None:
            self._take_snapshot = tf.function(take_snapshot).get_concrete_function()
        self._read = tf.function(read).get_concrete_function()
        self._probe = UpdateProbe(
            self.every_n_updates, lambda update: read(),
            shape=(1 if snapshot is None else 3, len(variables)), receive=self._receive,
            prepare=self._prepare, at_epoch_end=self._epoch_ends)

    def update_probe(self):
        """The measurement as an ``UpdateProbe`` for batchlab's loop (the batch hooks then do
        nothing in this ``fit``); None before training has begun. The step itself then copies
        the weights before the updates it measures (``keep_weights_before``)."""
        if self._probe is None:
            return None
        if self._snapshot is not None:
            step_measurements(self.model).keep_weights_before(self._snapshot,
                                                              self.every_n_updates)
        self._probed = True
        return self._probe

    def _prepare(self, update):
        # An epoch's last update, off this callback's interval: the step measures it (and keeps
        # the weights before it) on request.
        if update % self.every_n_updates:
            self.model.request_measurement(update)

    def _receive(self, update, rows):
        self._snapshot_for = update if self._snapshot is not None else None
        self.log(update, rows)

    def on_train_batch_begin(self, batch, logs=None):
        if self._probed:
            return
        if not self.is_logged(batch, self.every_n_updates, self._epoch_ends):
            return
        update = self.update_after(batch)
        if update % self._cadence:  # an epoch's last update: ask the step to measure it too
            self.model.request_measurement(update)
        if self.update_ratio:
            self._take_snapshot()
            self._snapshot_for = update

    def on_train_batch_end(self, batch, logs=None):
        if self._probed:
            return
        if self.is_logged(batch, self.every_n_updates, self._epoch_ends):
            self.log(self.update_after(batch))

    def on_epoch_end(self, epoch, logs=None):
        if not self._every_update:
            return
        update = self.current_update()  # epochs of unknown length: log their last update
        if update and self.last_logged_step() != update:
            self.log(update)

    def measure(self, rows=None):
        """Returns {tag: value} for the last update (ratios only when a snapshot was taken);
        ``rows``: what the read returned, when it ran inside the train chunk."""
        rows = self._read().numpy() if rows is None else rows
        totals, layers = self._sums(rows)
        norms = np.sqrt(layers)
        values = {"gradients/global_norm": float(np.sqrt(totals[0]))}
        if self.per_layer:
            values.update(zip(self._tags, norms[0].tolist()))
        if self._snapshot_for is not None:
            self._snapshot_for = None
            total = np.sqrt(totals[2])
            if total > 0:
                values["update_ratio/global"] = float(np.sqrt(totals[1]) / total)
            if self.per_layer:
                for tag, delta, weight in zip(self._ratio_tags, norms[1].tolist(),
                                              norms[2].tolist()):
                    if weight > 0:  # a layer still at zero (fresh biases) has no ratio
                        values[tag] = delta / weight
        return values

    def log(self, update, rows=None):
        values = self.measure(rows)
        self.values.append((update, values["gradients/global_norm"]))
        self.publish(update, values)
