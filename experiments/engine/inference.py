"""Evaluating a fixed set of rows in inference mode: a forward pass per batch, then the loss and
the metrics once over all rows.

``model.evaluate`` runs Keras' ``test_step`` per batch: the forward pass, then the loss and every
metric's update on that batch. On a small model the per-batch loss and metric ops cost more than
the forward pass itself (digits MLP, 16 batches of 32 rows: BUILD.md, "Measurement overhead"), and
a measurement that evaluates the same training subset every epoch
(``callbacks.generalization_gap``) pays that every epoch.

``evaluate_rows`` keeps the memory of batched evaluation (one batch's activations alive at a
time: the batches run in a ``tf.while_loop`` with ``parallel_iterations=1``) and keeps only the
predictions of every row (rows x outputs). Then it computes the loss and the compiled metrics
once over all rows, as ``test_step`` does on one batch. The values equal ``model.evaluate``'s up
to float rounding of the sums: the loss is the mean over rows either way, and counts such as
accuracy are exact.

That holds when the loss is a mean over rows whatever the batching: Keras' own ``test_step`` and
``compute_loss``, every compiled loss reduced by ``sum_over_batch_size`` or
``mean_with_sample_weight`` (no sample weights here), no activity regularizer or other loss
added in the forward pass, and no mask on the outputs (a masked loss is a mean over each batch's
valid steps, which ``evaluate`` then averages by rows). Otherwise (``lean_evaluation`` False, or
a mask seen at tracing) it runs ``test_step`` batch by batch, as ``evaluate`` does.
"""

import keras
import tensorflow as tf
from keras.src import backend as keras_backend

MEAN_REDUCTIONS = ("sum_over_batch_size", "mean_with_sample_weight")


def lean_evaluation(model):
    """Whether the loss and metrics of ``model`` may be computed once over all rows (see the
    module docstring); decided from the model and its compiled loss."""
    for method in ("test_step", "compute_loss", "compute_metrics"):
        own = getattr(type(model), method, None)
        if own is not getattr(keras.Model, method, None) or method in vars(model):
            return False
    if any(getattr(layer, "activity_regularizer", None) is not None
           for layer in model._flatten_layers(include_self=True)):  # pylint: disable=W0212
        return False
    losses = getattr(model, "loss", None)
    if isinstance(losses, dict):
        losses = list(losses.values())
    for loss in tf.nest.flatten(losses):
        if isinstance(loss, keras.losses.Loss) and loss.reduction not in MEAN_REDUCTIONS:
            return False
    return True


def _rows(tensor, start, size):
    return tensor[start:start + size]


def evaluate_rows(model, x, y, batch_size):
    """Graph code: ``{name: value}`` as ``model.evaluate(x, y, batch_size=batch_size,
    return_dict=True)`` gives it, computed as the module docstring says. Resets the model's
    metrics first."""
    rows = tf.shape(tf.nest.flatten(x)[0])[0]
    if not lean_evaluation(model):
        return _by_batch(model, x, y, rows, batch_size)
    size = tf.minimum(tf.constant(batch_size, rows.dtype), tf.maximum(rows, 1))
    first = model(tf.nest.map_structure(lambda t: _rows(t, 0, size), x), training=False)
    leaves = tf.nest.flatten(first)
    if any(keras_backend.get_keras_mask(leaf) is not None for leaf in leaves):
        return _by_batch(model, x, y, rows, batch_size)
    num_batches = (rows + size - 1) // size
    arrays = [tf.TensorArray(leaf.dtype, size=num_batches, infer_shape=False,
                             element_shape=tf.TensorShape([None]).concatenate(leaf.shape[1:]))
              .write(0, leaf) for leaf in leaves]

    def body(i, arrays):
        part = model(tf.nest.map_structure(lambda t: _rows(t, i * size, size), x),
                     training=False)
        return i + 1, [a.write(i, leaf) for a, leaf in zip(arrays, tf.nest.flatten(part))]

    # One batch's activations at a time, as in evaluate.
    _, arrays = tf.while_loop(lambda i, _: i < num_batches, body,
                              [tf.constant(1, num_batches.dtype), arrays],
                              parallel_iterations=1)
    y_pred = tf.nest.pack_sequence_as(first, [a.concat() for a in arrays])
    model.reset_metrics()
    loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=None, training=False)
    results = dict(model.compute_metrics(x, y, y_pred, sample_weight=None))
    if loss is not None and "loss" in results:  # the loss tracker saw no batch: set its value
        results["loss"] = tf.cast(loss, results["loss"].dtype)
    return results


def _by_batch(model, x, y, rows, batch_size):
    """``test_step`` on each batch of ``batch_size`` rows, as ``evaluate`` runs it."""
    model.reset_metrics()
    for start in tf.range(0, rows, batch_size):
        model.test_step(tf.nest.map_structure(lambda t: _rows(t, start, batch_size), (x, y)))
    return model.get_metrics_result()
