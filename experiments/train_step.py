"""The virtual-batch train step: one call, one optimizer update, memory of one micro-batch.

A virtual batch of ``n <= B = k * b`` rows arrives from the pipeline. The step walks through it in
micro-batches of ``b`` rows inside a ``tf.while_loop`` with ``parallel_iterations=1`` (so only one
micro-batch's activations are alive at a time), accumulates the *unnormalised* gradient of each
micro-batch's weighted loss sum, and divides once by the virtual batch's total denominator (element
count, valid-step count or weight sum: see ``loss_terms``). The update therefore equals the update on
the whole batch, also for a ragged last batch, sample weights and masks. Weight regularizers are
differentiated once per update. Under ``tf.distribute`` each replica accumulates locally; the
denominator is one scalar all-reduce and the gradients are all-reduced once, by the optimizer.

Because one ``train_step`` is one update, ``fit`` steps, ``optimizer.iterations``, learning-rate
schedules and callbacks' batch hooks all count updates.

BatchNormalization sees one micro-batch at a time: it normalises with per-micro-batch statistics,
which is Ghost Batch Normalization (Hoffer et al. 2017). Dropout draws a fresh mask per micro-batch.
"""

import keras
import tensorflow as tf
from absl import logging

from experiments import loss_terms


class StepMeasurements:
    """Variables the train step fills in each update, read by measurement callbacks.

    Kept out of the logs so that progress bars stay readable and reading them costs nothing unless a
    callback asks. Every value is identical on all replicas (computed after the all-reduce).
    """

    def __init__(self, num_variables):
        def scalar(name):
            return tf.Variable(
                0.0, dtype=tf.float32, trainable=False, name=name,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

        self.gradient_norm = scalar("gradient_norm")
        self.variable_gradient_norms = tf.Variable(
            tf.zeros([num_variables], tf.float32), trainable=False,
            name="variable_gradient_norms",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        # Gradient noise scale ingredients (McCandlish et al. 2018); zero when not tracked.
        self.micro_gradient_sq_norm = scalar("micro_gradient_sq_norm")  # mean_j |G_j|^2
        self.batch_gradient_sq_norm = scalar("batch_gradient_sq_norm")  # |mean_j G_j|^2
        self.micro_batch_size = scalar("micro_batch_size")  # mean rows per micro-batch
        self.batch_size = scalar("batch_size")  # rows in the whole (global) virtual batch
        self.num_micro_batches = scalar("num_micro_batches")  # over all replicas


class VirtualBatchModel(keras.Model):
    """A Keras model whose ``train_step`` performs one exact update per virtual batch.

    Build it from any functional or Sequential model with ``as_virtual_batch_model``; the layers and
    weights are shared, only the training step differs.
    """

    def configure_virtual_batches(self, micro_batch_size=None, track_gradient_noise=False,
                                  has_call_losses=None):
        """Sets the micro-batch size ``b`` (None: the whole batch at once, k = 1).

        Args:
          micro_batch_size: rows per micro-batch; the virtual batch is whatever the pipeline yields.
          track_gradient_noise: also record the per-micro-batch squared gradient norms needed by the
            gradient noise scale estimator (one extra sum of squares per micro-batch).
          has_call_losses: whether the model adds losses during its forward pass (activity
            regularizers, ``add_loss``). Detected from activity regularizers when None.
        """
        if micro_batch_size is not None:
            if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int) \
                    or micro_batch_size <= 0:
                raise ValueError(
                    f"micro_batch_size must be a positive integer, got {micro_batch_size!r}.")
        self._micro_batch_size = micro_batch_size
        self._track_gradient_noise = bool(track_gradient_noise)
        if has_call_losses is None:
            has_call_losses = any(
                getattr(layer, "activity_regularizer", None) is not None
                for layer in self._flatten_layers(include_self=False)
            )
        self._has_call_losses = bool(has_call_losses)
        self.measurements = StepMeasurements(len(self.trainable_variables))
        self._warned_ghost_bn = False

    @property
    def micro_batch_size(self):
        return getattr(self, "_micro_batch_size", None)

    def has_batch_normalization(self):
        return any(isinstance(layer, keras.layers.BatchNormalization)
                   for layer in self._flatten_layers(include_self=False))

    def train_step(self, data):
        if not hasattr(self, "measurements"):
            self.configure_virtual_batches()
        grads, loss, num_rows = self.virtual_batch_gradients(data)
        self.optimizer.apply(grads, self.trainable_variables)
        self._loss_tracker.update_state(loss, sample_weight=num_rows)
        return self.get_metrics_result()

    # ------------------------------------------------------------------------------------------
    def virtual_batch_gradients(self, data):
        """Returns (replica-local gradients, virtual-batch loss, local row count).

        The optimizer's all-reduce (a sum over replicas) of the returned gradients gives exactly the
        gradient of the loss over the global virtual batch. Also updates the compiled metrics on
        every row and fills ``self.measurements``.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if not hasattr(self, "_loss_terms"):
            self._loss_terms = loss_terms.LossTerms(self.loss)
        variables = self.trainable_variables
        replica = tf.distribute.get_replica_context()
        num_replicas = replica.num_replicas_in_sync if replica is not None else 1

        first = next(t for t in tf.nest.flatten(x) if t is not None)
        num_rows = tf.shape(first)[0]
        micro = self.micro_batch_size
        micro_rows = num_rows if micro is None else tf.minimum(num_rows, micro)
        num_micro = (num_rows + micro_rows - 1) // tf.maximum(micro_rows, 1)
        if self.has_batch_normalization() and micro is not None and not self._warned_ghost_bn:
            logging.warning(
                "The model has BatchNormalization and the virtual batch is split into "
                "micro-batches of %d: each micro-batch is normalised with its own statistics "
                "(Ghost Batch Normalization, Hoffer et al. 2017).", micro)
            self._warned_ghost_bn = True

        # Global row count is known before the loop: call-time losses (per-sample means in Keras)
        # are weighted by rows / global rows.
        global_rows = tf.cast(num_rows, tf.float32)
        if replica is not None and num_replicas > 1:
            global_rows = replica.all_reduce("sum", global_rows)

        def take(tensor, start, size):
            if tensor is None:
                return None
            return tensor[start:start + size]

        def body(j, numerator, denominator, call_total, micro_sq, *accumulators):
            start = j * micro_rows
            size = tf.minimum(micro_rows, num_rows - start)
            xj = tf.nest.map_structure(lambda t: take(t, start, size), x)
            yj = tf.nest.map_structure(lambda t: take(t, start, size), y)
            swj = tf.nest.map_structure(lambda t: take(t, start, size), sample_weight)
            with tf.GradientTape(persistent=self._has_call_losses) as tape:
                y_pred = self(xj, training=True)
                num_j, den_j = self._loss_terms(yj, y_pred, swj)
                call_losses = self._call_losses()
                if call_losses and not self._has_call_losses:
                    raise ValueError(
                        "The model adds losses in its forward pass; build the virtual-batch model "
                        "with has_call_losses=True so they are weighted exactly.")
                if call_losses:
                    call_term = tf.add_n([tf.cast(c, tf.float32) for c in call_losses]) \
                        * tf.cast(size, tf.float32) / global_rows
            grads = tape.gradient(num_j, variables)
            grads = [tf.zeros_like(v) if g is None else tf.cast(g, v.dtype)
                     for g, v in zip(grads, variables)]
            if self._has_call_losses:
                if not call_losses:
                    call_term = tf.zeros((), tf.float32)
                call_grads = tape.gradient(call_term, variables)
                extra = [tf.zeros_like(v) if g is None else tf.cast(g, v.dtype)
                         for g, v in zip(call_grads, variables)]
                del tape
                n_vars = len(variables)
                new_acc = [a + g for a, g in zip(accumulators[:n_vars], grads)]
                new_acc += [a + g for a, g in zip(accumulators[n_vars:], extra)]
            else:
                new_acc = [a + g for a, g in zip(accumulators, grads)]
            if self._track_gradient_noise:
                # |G_j|^2 of this micro-batch's mean gradient.
                sq = tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in grads])
                safe_den = tf.maximum(tf.cast(den_j, tf.float32), 1e-12)
                micro_sq = micro_sq + sq / tf.square(safe_den)
            self.compute_metrics(xj, yj, y_pred, sample_weight=swj)
            if self._has_call_losses:
                call_total = call_total + tf.cast(call_term, call_total.dtype)
            return (j + 1, numerator + tf.cast(num_j, numerator.dtype),
                    denominator + tf.cast(den_j, denominator.dtype), call_total, micro_sq,
                    *new_acc)

        loss_dtype = tf.float64 if any(v.dtype == tf.float64 for v in variables) else tf.float32
        zeros = [tf.zeros_like(v) for v in variables]
        if self._has_call_losses:
            zeros = zeros + [tf.zeros_like(v) for v in variables]
        loop_vars = (tf.constant(0), tf.zeros((), loss_dtype), tf.zeros((), loss_dtype),
                     tf.zeros((), loss_dtype), tf.zeros((), tf.float32), *zeros)
        result = tf.while_loop(
            lambda j, *_: j < num_micro, body, loop_vars, parallel_iterations=1)
        _, numerator, denominator, call_total, micro_sq = result[:5]
        accumulators = list(result[5:])

        totals = tf.stack([numerator, denominator, call_total])
        if replica is not None and num_replicas > 1:
            totals = replica.all_reduce("sum", totals)
        global_numerator, global_denominator, global_call = totals[0], totals[1], totals[2]
        if self._loss_terms.sums_only:
            global_denominator = tf.ones_like(global_denominator)
        safe_denominator = tf.where(global_denominator > 0, global_denominator,
                                    tf.ones_like(global_denominator))

        n_vars = len(variables)
        grads = [a / tf.cast(safe_denominator, a.dtype) for a in accumulators[:n_vars]]
        data_grads = grads
        if self._has_call_losses:
            grads = [g + e for g, e in zip(grads, accumulators[n_vars:])]
        loss = global_numerator / safe_denominator + global_call

        regularizers = [(i, v) for i, v in enumerate(variables)
                        if getattr(v, "regularizer", None) is not None]
        if regularizers:
            with tf.GradientTape() as reg_tape:
                reg_loss = tf.add_n([tf.cast(v.regularizer(v), loss.dtype)
                                     for _, v in regularizers])
            reg_grads = reg_tape.gradient(reg_loss, [v for _, v in regularizers])
            grads = list(grads)
            for (i, v), g in zip(regularizers, reg_grads):
                if g is not None:
                    # The optimizer sums over replicas: each adds its share of the penalty.
                    grads[i] = grads[i] + tf.cast(g, v.dtype) / num_replicas
            loss = loss + reg_loss

        self._record_measurements(grads, data_grads, micro_sq, num_micro, num_rows,
                                  replica, num_replicas)
        return grads, loss, num_rows

    def _call_losses(self):
        """Losses added during the forward pass (activity regularizers, add_loss)."""
        losses = []
        for layer in self._flatten_layers(include_self=True):
            losses.extend(layer._get_own_losses())
        return losses

    def _record_measurements(self, grads, data_grads, micro_sq, num_micro, num_rows,
                             replica, num_replicas):
        m = self.measurements
        distributed = replica is not None and num_replicas > 1
        full = list(grads)
        if distributed:
            full = replica.all_reduce("sum", full)
        norms = tf.stack([tf.norm(tf.cast(g, tf.float32)) for g in full]) if full else \
            tf.zeros([0])
        m.variable_gradient_norms.assign(norms)
        m.gradient_norm.assign(tf.norm(norms))
        if not self._track_gradient_noise:
            return
        data = list(data_grads)
        counts = tf.stack([micro_sq, tf.cast(num_micro, tf.float32),
                           tf.cast(num_rows, tf.float32)])
        if distributed:
            data = replica.all_reduce("sum", data)
            counts = replica.all_reduce("sum", counts)
        micro_sq_total, micro_count, rows = counts[0], counts[1], counts[2]
        m.micro_gradient_sq_norm.assign(micro_sq_total / tf.maximum(micro_count, 1.0))
        m.batch_gradient_sq_norm.assign(
            tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in data]))
        m.num_micro_batches.assign(micro_count)
        m.batch_size.assign(rows)
        m.micro_batch_size.assign(rows / tf.maximum(micro_count, 1.0))


def as_virtual_batch_model(model, micro_batch_size=None, track_gradient_noise=False,
                           has_call_losses=None):
    """Returns a ``VirtualBatchModel`` sharing ``model``'s layers and weights.

    ``model`` must be functional or a built Sequential model (it has ``inputs`` and ``outputs``).
    """
    if isinstance(model, VirtualBatchModel):
        vb = model
    else:
        try:
            inputs, outputs = model.inputs, model.outputs
        except (AttributeError, ValueError) as err:
            raise ValueError(
                "Virtual batches need a functional or Sequential model with an Input; "
                f"{type(model).__name__} has no defined inputs ({err}).") from err
        vb = VirtualBatchModel(inputs=inputs, outputs=outputs, name=model.name)
    vb.configure_virtual_batches(micro_batch_size, track_gradient_noise, has_call_losses)
    return vb
