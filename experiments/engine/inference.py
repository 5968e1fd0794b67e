"""Evaluating a fixed set of rows in inference mode: a forward pass per batch, then the loss and
the metrics once over all rows.

``model.evaluate`` runs Keras' ``test_step`` per batch: the forward pass, then the loss and every
metric's update on that batch. On a small model the per-batch loss and metric ops cost more than
the forward pass itself (digits MLP, 16 batches of 32 rows: BUILD.md, "Measurement overhead"), and
a measurement that evaluates the same training subset every epoch
(``callbacks.generalization_gap``), or a run's validation every epoch, pays that every time.

``evaluate_rows`` keeps the memory of batched evaluation for the activations (one batch alive at
a time: the batches run in a ``tf.while_loop`` with ``parallel_iterations=1``) and keeps the
predictions of every row (at most ``MAX_PREDICTION_BYTES``). Since its values do not depend on
the batching, a forward pass takes more rows than the evaluation batch where their inputs and
layer outputs fit ``FORWARD_BYTES`` (``forward_rows``): each pass of the loop costs about 0.2 ms
of dispatch on a small model, which was most of a small run's validation (digits MLP at B = 32:
12 passes over 360 rows; BUILD.md, issue 19). Then it computes the loss and the
compiled metrics once over all rows, as ``test_step`` does on one batch. The values equal
``model.evaluate``'s up to float rounding of the sums: the loss is the mean over rows either way,
and counts such as accuracy are exact.

That holds only where every per-batch value is a mean (or count) over rows, so the loss and
metrics of the whole set do not depend on how it is batched. ``evaluate_rows`` computes them once
only for: one replica; a model with one output, Keras' own ``test_step``, ``compute_loss`` and
``compute_metrics``; compiled losses and metrics that are Keras' own (a user function may return
one number per batch, which ``evaluate`` then averages over batches), losses reduced by
``sum_over_batch_size`` or ``mean_with_sample_weight`` (no sample weights here); and, seen at
tracing, no mask on the output and no loss added in the forward pass (``add_loss``, activity
regularizers). Everything else runs ``test_step`` batch by batch, as ``evaluate`` does
(``by_batch``, also what the validation curve and sample-weighted sets use).
"""

import keras
import numpy as np
import tensorflow as tf

from experiments.engine import keras_internals

MEAN_REDUCTIONS = ("sum_over_batch_size", "mean_with_sample_weight")
MAX_PREDICTION_BYTES = 64 << 20  # predictions kept for the loss and metrics, at most
# Rows of a forward pass beyond the evaluation batch, while their inputs and layer outputs take at
# most this much (``forward_rows``).
FORWARD_BYTES = 16 << 20


def _keras_own(function_or_object):
    """Whether a loss or metric (or the function a wrapper calls) is defined by Keras itself."""
    fn = keras_internals.wrapped_function(function_or_object)
    target = fn if fn is not None else type(function_or_object)
    return (getattr(target, "__module__", "") or "").startswith("keras.")


def lean_evaluation(model):
    """Whether the loss and metrics of ``model`` may be computed once over all rows (see the
    module docstring), as far as the model and its compiled loss and metrics tell; the output's
    mask and forward-pass losses are checked at tracing (``evaluate_rows``)."""
    if tf.distribute.get_strategy().num_replicas_in_sync != 1:
        return False  # compute_loss scales by the replicas, and test_step scales back
    for method in ("test_step", "compute_loss", "compute_metrics"):
        own = getattr(type(model), method, None)
        if own is not getattr(keras.Model, method, None) or method in vars(model):
            return False
    if len(getattr(model, "outputs", None) or [None]) != 1:
        return False  # per-output loss trackers average batch means: not a mean over rows
    if any(getattr(layer, "activity_regularizer", None) is not None
           for layer in keras_internals.flatten_layers(model, include_self=True)):
        return False
    for loss in keras_internals.compiled_losses(model):
        if not _keras_own(loss) or getattr(loss, "reduction", None) not in MEAN_REDUCTIONS:
            return False
    compiled_metrics = keras_internals.compiled_metrics(model)
    if compiled_metrics is not None:
        if not getattr(compiled_metrics, "built", False):
            return False
        if not all(_keras_own(metric) for metric in compiled_metrics.metrics):
            return False
    return True


def _rows(tensor, start, size):
    return tensor[start:start + size]


def _adds_losses_in_call(model):
    """Whether the last forward pass added losses (``add_loss``, activity regularizers)."""
    return bool(keras_internals.forward_pass_losses(model))


def evaluate_rows(model, x, y, batch_size):
    """Graph code: ``{name: value}`` as ``model.evaluate(x, y, batch_size=batch_size,
    return_dict=True)`` gives it, computed as the module docstring says. Resets the model's
    metrics first."""
    first_leaf = tf.nest.flatten(x)[0]
    rows = tf.shape(first_leaf)[0]
    if not lean_evaluation(model) or first_leaf.shape[0] == 0:
        return by_batch(model, (x, y), batch_size)
    model.reset_metrics()  # before the forward passes: layers may update metrics in them
    forward = forward_rows(model, x, batch_size)  # ``by_batch`` below keeps ``batch_size``
    # Every row in one forward pass: the set needs no loop (nor its TensorArray).
    in_one_pass = first_leaf.shape[0] is not None and first_leaf.shape[0] <= forward
    size = tf.minimum(tf.constant(forward, rows.dtype), tf.maximum(rows, 1))
    first = model(x if in_one_pass else tf.nest.map_structure(lambda t: _rows(t, 0, size), x),
                  training=False)
    leaves = tf.nest.flatten(first)
    if (len(leaves) != 1 or keras_internals.keras_mask(leaves[0]) is not None
            or _adds_losses_in_call(model) or not _fits(leaves[0], first_leaf.shape[0])):
        return by_batch(model, (x, y), batch_size)
    y_pred = first if in_one_pass else _remaining_passes(model, x, first, rows, size)
    loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=None, training=False)
    results = dict(model.compute_metrics(x, y, y_pred, sample_weight=None))
    if loss is not None and "loss" in results:  # the loss tracker saw no batch: set its value
        results["loss"] = tf.cast(loss, results["loss"].dtype)
    return results


def _remaining_passes(model, x, first, rows, size):
    """Graph code: the predictions of every row of ``x``, ``first`` being those of its first
    ``size`` rows; the other passes run in a loop, one batch's activations at a time (as in
    ``evaluate``)."""
    (leaf,) = tf.nest.flatten(first)
    num_batches = (rows + size - 1) // size
    predictions = tf.TensorArray(leaf.dtype, size=num_batches, infer_shape=False,
                                 element_shape=tf.TensorShape([None]).concatenate(
                                     leaf.shape[1:])).write(0, leaf)

    def body(i, predictions):
        part = model(tf.nest.map_structure(lambda t: _rows(t, i * size, size), x),
                     training=False)
        return i + 1, predictions.write(i, tf.nest.flatten(part)[0])

    _, predictions = tf.while_loop(lambda i, _: i < num_batches, body,
                                   [tf.constant(1, num_batches.dtype), predictions],
                                   parallel_iterations=1)
    return tf.nest.pack_sequence_as(first, [predictions.concat()])


def forward_rows(model, x, batch_size):
    """Rows per forward pass over ``x`` (tensors with a static row count): ``batch_size``, or
    more, up to every row, while those rows' inputs and layer outputs take at most
    ``FORWARD_BYTES`` (``activation_bytes_per_row``). Memory inside a layer that its output does
    not show (a recurrent layer's steps, attention scores) is not counted; a model whose
    activations are unknown, or with a layer that updates a metric of its own in the forward
    pass (whose value depends on the batches), keeps ``batch_size``."""
    leaves = tf.nest.flatten(x)
    num_rows = leaves[0].shape[0]
    if num_rows is None or num_rows <= batch_size:
        return batch_size
    if any(keras_internals.own_metrics(layer)
           for layer in keras_internals.flatten_layers(model, include_self=False)):
        return batch_size  # a layer's own metric averages what each forward pass gives it
    sizes = [activation_bytes_per_row(model)] + [_row_bytes(leaf) for leaf in leaves]
    if None in sizes:
        return batch_size
    return int(max(batch_size, min(num_rows, FORWARD_BYTES // max(sum(sizes), 1))))


def activation_bytes_per_row(model):
    """Bytes per row of every layer's output (nested layers included), or None when a layer's
    output or its shape is unknown (a subclassed model, a layer called on several inputs)."""
    total = 0
    for layer in _graph_layers(model):
        if keras_internals.graph_nodes(layer) != 1:
            return None  # never called symbolically, or shared: its outputs are not one tensor
        try:
            outputs = tf.nest.flatten(layer.output)
        except (AttributeError, ValueError):
            return None
        for output in outputs:
            size = _row_bytes(output)
            if size is None:
                return None
            total += size
    return total or None


def _row_bytes(tensor):
    """Bytes of one row (axis 0) of a tensor or symbolic tensor; None when its shape beyond the
    rows is not static."""
    shape = tf.TensorShape(tensor.shape)[1:]
    if not shape.is_fully_defined():
        return None
    return int(np.prod(shape, dtype=np.int64)) * tf.as_dtype(tensor.dtype).size


def _graph_layers(model):
    """The layers of ``model``, those of nested models in their place (not the layers inside a
    layer, such as a recurrent layer's cell, which are never called on a graph)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _graph_layers(layer)
        else:
            yield layer


def _fits(leaf, num_rows):
    """Whether the predictions of ``num_rows`` rows (static; None: unknown) fit
    ``MAX_PREDICTION_BYTES``."""
    per_row = _row_bytes(leaf)
    if num_rows is None or per_row is None:
        return False
    return num_rows * per_row <= MAX_PREDICTION_BYTES


def by_batch(model, data, batch_size):
    """Graph code: ``test_step`` on each batch of ``batch_size`` rows of ``data`` (any structure
    ``test_step`` takes: (x, y), (x, y, sample_weight)), as ``evaluate`` runs it; resets the
    metrics first and returns their results."""
    model.reset_metrics()
    rows = tf.shape(tf.nest.flatten(data)[0])[0]

    def one_batch(start):
        model.test_step(tf.nest.map_structure(lambda t: _rows(t, start, batch_size), data))
        return (start + batch_size,)

    tf.while_loop(lambda start: start < rows, one_batch, [tf.zeros((), rows.dtype)])
    return model.get_metrics_result()
