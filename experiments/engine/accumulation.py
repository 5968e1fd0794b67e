"""Micro-batch accumulation: the exact gradient of a virtual batch from its micro-batches.

The step walks through a virtual batch of ``n <= B = k*b`` rows in micro-batches of ``b`` rows (or,
for stateful streams, in k consecutive windows of T steps) inside a ``tf.while_loop`` with
``parallel_iterations=1``, so only one micro-batch's activations are alive at a time. It
accumulates the *unnormalised* gradient of each micro-batch's weighted loss sum and divides once
by the virtual batch's total denominator (element count, valid-step count or weight sum: see
``loss_terms``), so the update equals the update on the whole batch, also for a ragged last batch,
sample weights and masks. Losses added in the forward pass (activity regularizers) are weighted by
rows / global rows; weight regularizers are differentiated once per update. Under
``tf.distribute`` each replica accumulates locally; the denominator is one scalar all-reduce and
the gradients are all-reduced once, by the optimizer.

Each function here does one of those things; ``VirtualBatchModel.virtual_batch_gradients`` calls
them in order. ``StepContext`` carries what they share about the current update.
"""

import dataclasses
from typing import Any, Optional

import keras
import tensorflow as tf

from experiments.engine import keras_internals, noise_scale
from experiments.engine.step_measurements import when


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What the functions of one update share (Python values and tensors of the traced step)."""

    variables: list
    loss_terms: Any
    replica: Any
    num_replicas: int
    distributed: bool
    loss_dtype: Any
    has_call_losses: bool
    track_noise: bool
    sampled: Any  # this update feeds the noise scale: a bool tensor, or a Python bool where the
    # step's kind decides it (``step_measurements.is_sampled``); None when not tracked
    preconditioner: Any  # a function giving the optimizer's diagonal preconditioner, or None
    coming_update: Any  # int64 tensor: the 1-based count of this update
    records_norms: bool  # the step fills the gradient norms on the measured update
    global_rows: Optional[Any] = None  # float32 rows over all replicas, with call losses only
    # The kind of update the step is traced for (``StepMeasurements.traced_kind``): True, the
    # measured one; False, one that is not; None, any (it tests ``measured_update``).
    measured: Optional[bool] = None

    @property
    def sums_only(self):
        return self.loss_terms.sums_only

    def all_reduced(self, values):
        return self.replica.all_reduce("sum", values) if self.distributed else values

    def safe(self, denominator):
        return safe_denominator(self.sums_only, denominator)


def safe_denominator(sums_only, denominator):
    """The denominator to divide by: 1 for 'sum' losses, and never 0."""
    if sums_only:
        return tf.ones_like(denominator)
    return tf.where(denominator > 0, denominator, tf.ones_like(denominator))


def weight_penalty(variables, dtype):
    """The weight regularizers' penalty over ``variables`` (those with a regularizer), or None
    when none has one."""
    penalties = [tf.cast(v.regularizer(v), dtype) for v in variables
                 if getattr(v, "regularizer", None) is not None]
    return tf.add_n(penalties) if penalties else None


@dataclasses.dataclass
class Accumulated:
    """Sums over the micro-batches of this replica (gradients not yet normalised)."""

    numerator: Any
    denominator: Any
    call_total: Any
    micro_sq: Any  # [sum_j B_j |G_j|^2, sum_j B_j |P G_j|^2] (noise scale), zeros if not tracked
    grads: list  # data-loss gradients, unnormalised
    call_grads: list  # gradients of the call-time losses, already weighted (empty if none)
    num_micro: Any


def dense(grads, variables):
    """Gradients as dense tensors of each variable's dtype (zeros where there is no path).

    Embedding gradients arrive as IndexedSlices; summed over micro-batches they are dense anyway.
    """
    return [tf.zeros_like(v) if g is None else tf.cast(tf.convert_to_tensor(g), v.dtype)
            for g, v in zip(grads, variables)]


def call_losses(model, declared):
    """Losses added during the forward pass (activity regularizers, add_loss).

    Raises when there are some but the model was not built with ``has_call_losses``: the step
    would otherwise drop them or weight them wrongly.
    """
    losses = keras_internals.forward_pass_losses(model)
    if losses and not declared:
        raise ValueError(
            "The model adds losses in its forward pass; build the virtual-batch model "
            "with has_call_losses=True so they are weighted exactly.")
    return losses


def update_metrics(model, x, y, y_pred, sample_weight):
    """Updates the compiled metrics on one micro-batch.

    ``compute_metrics`` also reads every metric's result; inside the micro-batch loop that read is
    wasted, so it is skipped unless a subclass overrides ``compute_metrics``.
    """
    if type(model).compute_metrics is not keras.Model.compute_metrics:
        model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return
    compiled = keras_internals.compiled_metrics(model)
    if compiled is not None:
        compiled.update_state(y, y_pred, sample_weight)


def piece_squared_norms(ctx, grads, denominator, rows):
    """[B_j |G_j|^2, B_j |P G_j|^2] of one piece (a micro-batch, or a replica's batch) from the
    gradients of its unnormalised loss: ``G_j`` is that gradient over ``denominator``, ``B_j`` its
    ``rows`` (the preconditioned term is 0 without a preconditioner)."""
    rows = tf.cast(rows, tf.float32)
    weight = rows / tf.square(tf.maximum(tf.cast(denominator, tf.float32), 1e-12))
    plain = noise_scale.squared_norm(grads) * weight
    if ctx.preconditioner is None:
        return tf.stack([plain, tf.zeros((), tf.float32)])
    return tf.stack([plain, noise_scale.preconditioned_squared_norm(grads, ctx.preconditioner())
                     * weight])


def micro_batch_terms(model, ctx, x, y, sample_weight, size):
    """(numerator, denominator, call term, squared gradient norm, gradients) of one micro-batch.

    The gradients are those of the unnormalised numerator, followed (with call losses) by those of
    the call-time losses weighted by ``size`` / global rows. Updates the metrics on its rows.
    """
    variables = ctx.variables
    with tf.GradientTape(persistent=ctx.has_call_losses) as tape:
        y_pred = model(x, training=True)
        numerator, denominator = ctx.loss_terms(y, y_pred, sample_weight)
        losses = call_losses(model, ctx.has_call_losses)
        call_term = tf.zeros((), tf.float32)
        if losses:
            call_term = tf.add_n([tf.cast(c, tf.float32) for c in losses]) \
                * tf.cast(size, tf.float32) / ctx.global_rows
    grads = dense(tape.gradient(numerator, variables), variables)
    if ctx.has_call_losses:
        grads += dense(tape.gradient(call_term, variables), variables)
        del tape
    sq = tf.zeros([2], tf.float32)
    if ctx.track_noise:
        def squared_norms():
            # B_j |G_j|^2 of this micro-batch's mean gradient ('sum' losses: mean over rows),
            # weighted by its rows so that ragged micro-batches give an exact expectation.
            per = size if ctx.sums_only else denominator
            return piece_squared_norms(ctx, grads[:len(variables)], per, size)

        sq = when(ctx.sampled, squared_norms, lambda: tf.zeros([2], tf.float32))
    update_metrics(model, x, y, y_pred, sample_weight)
    return (tf.cast(numerator, ctx.loss_dtype), tf.cast(denominator, ctx.loss_dtype),
            tf.cast(call_term, ctx.loss_dtype), sq, grads)


def take(tensor, start, size, axis):
    """Rows (axis 0) or steps (axis 1) [start, start + size) of a tensor; per-row tensors, (S,)
    or (S, 1) (the shape Keras asks of a per-row weight on a per-step loss), pass whole when
    cutting along time."""
    if tensor is None:
        return None
    if axis == 1:
        if tensor.shape.rank is not None and (tensor.shape.rank < 2 or tensor.shape[1] == 1):
            return tensor
        return tensor[:, start:start + size]
    return tensor[start:start + size]


def window_share(num_rows, size, num_steps):
    """Rows-equivalent weight of one time window: rows x window steps / batch steps."""
    return tf.cast(num_rows, tf.float32) * tf.cast(size, tf.float32) \
        / tf.cast(num_steps, tf.float32)


def one_micro_batch(model, ctx, x, y, sample_weight, num_rows):
    """The whole batch as one micro-batch (k = 1 with call-time losses): no loop."""
    numerator, denominator, call_total, micro_sq, grads = micro_batch_terms(
        model, ctx, x, y, sample_weight, num_rows)
    n_vars = len(ctx.variables)
    return Accumulated(numerator, denominator, call_total, micro_sq, grads[:n_vars],
                       grads[n_vars:], tf.ones((), tf.int32))


def accumulate_micro_batches(model, ctx, x, y, sample_weight, split_size, axis, num_rows):
    """Sums the terms of every micro-batch (``split_size`` rows, or steps when ``axis`` is 1)."""
    first = next(t for t in tf.nest.flatten(x) if t is not None)
    num_items = num_rows if axis == 0 else tf.shape(first)[1]  # rows or steps
    micro_rows = tf.minimum(num_items, split_size)
    num_micro = (num_items + micro_rows - 1) // tf.maximum(micro_rows, 1)

    def body(j, numerator, denominator, call_total, micro_sq, *accumulators):
        start = j * micro_rows
        size = tf.minimum(micro_rows, num_items - start)
        part = [tf.nest.map_structure(lambda t: take(t, start, size, axis), s)
                for s in (x, y, sample_weight)]
        if axis == 1:  # a window's call losses weigh rows x (its share of steps)
            size = window_share(num_rows, size, num_items)
        num_j, den_j, call_j, sq_j, grads = micro_batch_terms(model, ctx, *part, size)
        return (j + 1, numerator + num_j, denominator + den_j, call_total + call_j,
                micro_sq + sq_j, *[a + g for a, g in zip(accumulators, grads)])

    copies = 2 if ctx.has_call_losses else 1
    zeros = [tf.zeros_like(v) for v in ctx.variables] * copies
    loop_vars = (tf.constant(0), tf.zeros((), ctx.loss_dtype), tf.zeros((), ctx.loss_dtype),
                 tf.zeros((), ctx.loss_dtype), tf.zeros([2], tf.float32), *zeros)
    # parallel_iterations=1: one micro-batch's activations alive at a time.
    result = tf.while_loop(lambda j, *_: j < num_micro, body, loop_vars, parallel_iterations=1)
    n_vars = len(ctx.variables)
    grads = list(result[5:])
    return Accumulated(result[1], result[2], result[3], result[4], grads[:n_vars],
                       grads[n_vars:], num_micro)


def normalise(ctx, acc):
    """(gradients, data-loss gradients, loss) of the global virtual batch from this replica's
    sums: one all-reduce of the numerator, denominator and call total, one division."""
    totals = ctx.all_reduced(tf.stack([acc.numerator, acc.denominator, acc.call_total]))
    safe_denominator = ctx.safe(totals[1])
    data_grads = [a / tf.cast(safe_denominator, a.dtype) for a in acc.grads]
    grads = data_grads
    if ctx.has_call_losses:
        grads = [g + e for g, e in zip(grads, acc.call_grads)]
    loss = totals[0] / safe_denominator + totals[2]
    return grads, data_grads, loss


def single_pass(model, ctx, x, y, sample_weight, num_rows):
    """k = 1 without call-time losses: (gradients, loss, the piece's squared norms for the noise
    scale).

    One pass, and the loss is divided by its (global) denominator before the backward pass, as
    Keras does: the denominator depends on the data only, and the gradients need no second pass.
    """
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        numerator, denominator = ctx.loss_terms(y, y_pred, sample_weight)
        call_losses(model, declared=False)  # raises if the model adds losses nobody declared
        totals = ctx.all_reduced(tf.stack([tf.cast(numerator, ctx.loss_dtype),
                                           tf.cast(denominator, ctx.loss_dtype)]))
        safe_denominator = tf.stop_gradient(ctx.safe(totals[1]))
        scaled = numerator / tf.cast(safe_denominator, numerator.dtype)
    grads = dense(tape.gradient(scaled, ctx.variables), ctx.variables)
    update_metrics(model, x, y, y_pred, sample_weight)
    micro_sq = tf.zeros([2], tf.float32)
    if ctx.track_noise:
        # This replica's own mean gradient is one piece (the noise scale at k = 1 under a
        # strategy with several replicas): the gradients here are over the global denominator.
        per = num_rows if ctx.sums_only else denominator
        per = tf.cast(per, tf.float32) / tf.cast(safe_denominator, tf.float32)
        micro_sq = when(ctx.sampled, lambda: piece_squared_norms(ctx, grads, per, num_rows),
                        lambda: tf.zeros([2], tf.float32))
    loss = tf.stop_gradient(totals[0]) / safe_denominator + 0.0
    return grads, loss, micro_sq


def add_regularizers(variables, grads, loss, num_replicas):
    """Adds the weight regularizers' penalty and gradients, once per update."""
    regularized = [(i, v) for i, v in enumerate(variables)
                   if getattr(v, "regularizer", None) is not None]
    if not regularized:
        return grads, loss
    with tf.GradientTape() as tape:
        penalty = weight_penalty([v for _, v in regularized], loss.dtype)
    penalty_grads = tape.gradient(penalty, [v for _, v in regularized])
    grads = list(grads)
    for (i, v), g in zip(regularized, penalty_grads):
        if g is not None:
            # The optimizer sums over replicas: each adds its share of the penalty.
            grads[i] = grads[i] + tf.cast(g, v.dtype) / num_replicas
    return grads, loss + penalty
