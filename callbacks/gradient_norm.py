"""Gradient norms and update-to-weight ratios, from the gradients the train step already computed.

batchlab's ``VirtualBatchModel`` stores, after every update, the norm of the applied gradient
(``model.measurements.gradient_norm``) and one norm per trainable variable
(``model.measurements.variable_gradient_norms``, in the order of ``model.trainable_variables``).
This callback publishes them every ``every_n_updates`` updates, keyed by the update count:

- ``gradients/global_norm``: norm of the whole applied gradient (data loss + regularizers;
  before the optimizer's clipping, if it clips);
- ``gradients/layer/<NN_layer>``: norm of each layer's part (its variables' norms combined),
  named by position and layer name (``layer_groups``), e.g. ``gradients/layer/01_dense``;
- ``update_ratio/global`` and ``update_ratio/layer/<NN_layer>``: ||w_after - w_before|| /
  ||w_before|| for that update, the "is my learning rate sane" number (around 1e-3 is typical).

Each epoch's last update is logged too, so that every epoch has a point.

Nothing here runs a second backward pass. The update ratio needs the weights before the update:
they are copied (one extra copy of the weights in memory) only before updates that will be logged,
so its cost is one weight copy and one pass over the weights every ``every_n_updates`` updates.

It is a ``Measurement`` (``experiments.engine.measurement``): the train step fills the norms and
copies the weights (``before_update``) on the update the loop measures, and ``read`` runs inside
the loop's train call. In Keras' own ``fit`` it is a callback like any other, on a batchlab model
or on any other Keras model:

- a batchlab model (``as_virtual_batch_model``): the norms of the gradient its step applied;
- any other model, in a plain ``model.fit`` (single device, ``steps_per_execution=1``): for the
  logged updates only, the callback's train step computes the gradient of the loss (data loss +
  regularizers) on the batch just trained, at the weights that update starts from, before
  Keras' own step applies its update: one extra forward and backward pass per logged update,
  none on the others. The extra pass leaves the model's state as it found it (BatchNorm's moving
  statistics, the random layers' seed generators, the metrics), so training is the same with the
  callback or without it, and Keras' random layers (Dropout, ...) draw in it the masks the update
  then draws: the norm is that of the gradient applied. (Randomness outside Keras' seed
  generators, e.g. a custom layer calling ``tf.random`` directly, is drawn anew.) The update
  ratio is measured as for a batchlab model.
"""

import collections
import re

import keras
import numpy as np
import tensorflow as tf

from callbacks.base import LoggedMeasurement
from experiments.common import checks
from experiments.engine.schedule import Cadence


class PlainFitStep:
    """Gradient norms of a plain Keras model in its own ``fit``: what a batchlab model's
    ``StepMeasurements`` holds (``measured_update``, ``variable_gradient_norms``), filled by a
    train step that wraps the model's own (``install``) on the update ``measured_update``."""

    def __init__(self, model):
        self.model = model
        self.measured_update = tf.Variable(-1, dtype=tf.int64, trainable=False)
        self.variable_gradient_norms = tf.Variable(
            tf.zeros([len(model.trainable_variables)], tf.float64), trainable=False)
        self._own_step = None

    def _measure(self, data):
        # The extra forward pass must leave the model as it found it: BatchNormalization's moving
        # statistics, the seed generators of Dropout and other random layers, and the compiled
        # metrics' and losses' trackers are put back to their values before it. Keras' own step
        # then runs from the same state (so training is the same with this callback or
        # without), and its random layers draw the same masks the measured gradient saw.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.model.trainable_variables
        kept = self._state_variables()
        before = [tf.identity(v.value) for v in kept]
        with tf.GradientTape() as tape:
            y_pred = self.model(x, training=True)
            loss = self.model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                           training=True)
        grads = tape.gradient(loss, variables)
        norms = norms64(tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                        for g, v in zip(grads, variables))
        self.variable_gradient_norms.assign(norms)
        with tf.control_dependencies([norms]):
            restored = [v.assign(value) for v, value in zip(kept, before)]
        with tf.control_dependencies(restored):
            return tf.constant(True)

    def _state_variables(self):
        """Every variable of the model a forward pass and ``compute_loss`` may change: the
        non-trainable ones (moving statistics, seed generators' states) and the metrics'."""
        seen, kept = set(), []
        for variable in list(self.model.non_trainable_variables) + list(
                self.model.metrics_variables):
            if id(variable) not in seen:
                seen.add(id(variable))
                kept.append(variable)
        return kept

    def install(self):
        """Wraps ``model.train_step`` for this fit (and rebuilds Keras' train function). A wrapper
        left by a fit that raised (its ``on_train_end`` never ran) is taken off first, so steps
        are never wrapped twice."""
        model = self.model
        if getattr(vars(model).get("train_step"), "plain_fit_step", False):
            del model.train_step
        own = model.train_step
        self._own_step = own

        def train_step(data):
            # The measuring branch runs before Keras' step by program order (a tf.function runs
            # stateful ops in the order written); an explicit control dependency would also
            # hold the variables Keras' step builds on its first trace (the compiled metrics'),
            # which a compiled function then cannot lift out.
            update = tf.cast(model.optimizer.iterations, tf.int64) + 1
            tf.cond(tf.equal(update, self.measured_update),
                    lambda: self._measure(data), lambda: tf.constant(False))
            return own(data)

        train_step.plain_fit_step = True
        model.train_step = train_step
        model.make_train_function(force=True)

    def remove(self):
        if self._own_step is not None:
            del self.model.train_step  # the class's own again
            self.model.train_function = None  # rebuilt by the next fit
            self._own_step = None


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


class GradientNorm(LoggedMeasurement):
    """Publishes gradient norms (global and per layer) and update-to-weight ratios.

    Args:
      log_dir: TensorBoard directory (scalars go to ``log_dir/train``); None keeps values only.
      every_n_updates: logging frequency, in updates (and each epoch's last update).
      per_layer: also log one norm (and ratio) per layer.
      update_ratio: log ||delta w|| / ||w|| of the logged updates (keeps one weight copy).
    """

    uses_step = True

    def __init__(self, log_dir=None, every_n_updates=10, per_layer=True, update_ratio=True):
        super().__init__(log_dir)
        self.every_n_updates = checks.positive_int(every_n_updates, "every_n_updates")
        self.cadence = Cadence(self.every_n_updates, at_epoch_end=True)
        self.per_layer = bool(per_layer)
        self.update_ratio = bool(update_ratio)
        self._built_for = None
        self._snapshot = None
        self._plain = None  # PlainFitStep of a model that is not batchlab's

    def start(self, model):
        if getattr(model, "measurements", None) is None:  # any Keras model, in its own fit
            replicas = model.distribute_strategy.num_replicas_in_sync
            if replicas > 1:  # each replica's gradient is its own rows' (an all-reduce cannot
                # run inside the measured update's cond): the norm would be one replica's
                raise ValueError(
                    f"GradientNorm on a plain Keras model measures one device's gradient; "
                    f"under {replicas} replicas that is one replica's share, not the batch's. "
                    "Wrap the model with experiments.engine.virtual_batch_model."
                    "as_virtual_batch_model, whose step measures the whole batch's gradient.")
            if self._plain is None or self._plain.model is not model:
                self._plain = PlainFitStep(model)
            measurements = self._plain
        else:
            self._plain = None
            measurements = step_measurements(model)
        if self._plain is None and not model.measures_gradient_norms:
            raise ValueError("GradientNorm reads the gradient norms the train step fills: build "
                             "the model with measure_gradient_norms=True.")
        self.set_model(model)
        variables = model.trainable_variables
        self._groups = layer_groups(variables)
        self._sums = SquaredSums(self._groups, len(variables))
        self._tags = [f"gradients/layer/{layer}" for layer in self._groups]
        self._ratio_tags = [f"update_ratio/layer/{layer}" for layer in self._groups]
        if self._built_for is not model:  # graph state is built once per model
            self._built_for = model
            self._own_call = None
            self._snapshot = None
            if self.update_ratio:  # the weights before a measured update, kept by the step
                with model.distribute_strategy.scope():
                    self._snapshot = [tf.Variable(
                        tf.zeros(v.shape, v.dtype), trainable=False,
                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                        for v in variables]
        self._measurements = measurements
        self.shape = (1 if self._snapshot is None else 3, len(variables))
        self.before_update = None if self._snapshot is None else self._keep_weights
        return True

    # -- Keras' own fit: a plain model gets the train step of ``PlainFitStep`` for the fit ------

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._measured and self._plain is not None:
            self._plain.install()

    def on_train_batch_begin(self, batch, logs=None):
        if not self._measured or self._plain is None:
            super().on_train_batch_begin(batch, logs)
            return
        update = int(self.model.optimizer.iterations.numpy()) + 1
        if self._logs(update, batch):
            self._plain.measured_update.assign(update)
            if self._before is not None:
                self._before()

    def on_train_end(self, logs=None):
        if self._plain is not None:
            self._plain.remove()
        super().on_train_end(logs)

    def _keep_weights(self):
        for copy, variable in zip(self._snapshot, self.model.trainable_variables):
            copy.assign(variable)

    def read(self, update):
        grads = tf.cast(self._measurements.variable_gradient_norms, tf.float64)
        if self._snapshot is None:
            return grads[None]
        deltas = norms64(v - s for v, s in zip(self.model.trainable_variables, self._snapshot))
        return tf.stack([grads, deltas, norms64(self._snapshot)])

    def values(self, update, rows):
        """{tag: value} of a logged update's rows (per-variable norms; with ``update_ratio``
        also the weight changes and the weights before)."""
        totals, layers = self._sums(rows)
        norms = np.sqrt(layers)
        values = {"gradients/global_norm": float(np.sqrt(totals[0]))}
        if self.per_layer:
            values.update(zip(self._tags, norms[0].tolist()))
        if self._snapshot is not None:
            total = np.sqrt(totals[2])
            if total > 0:
                values["update_ratio/global"] = float(np.sqrt(totals[1]) / total)
            if self.per_layer:
                for tag, delta, weight in zip(self._ratio_tags, norms[1].tolist(),
                                              norms[2].tolist()):
                    if weight > 0:  # a layer still at zero (fresh biases) has no ratio
                        values[tag] = delta / weight
        return values
