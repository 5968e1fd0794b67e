"""The virtual-batch train step: one call, one optimizer update, memory of one micro-batch.

A virtual batch of ``n <= B = k * b`` rows arrives from the pipeline. The step walks through it in
micro-batches of ``b`` rows inside a ``tf.while_loop`` with ``parallel_iterations=1`` (so only one
micro-batch's activations are alive at a time), accumulates the *unnormalised* gradient of each
micro-batch's weighted loss sum, and divides once by the virtual batch's total denominator (element
count, valid-step count or weight sum: see ``loss_terms``). The update therefore equals the update on
the whole batch, also for a ragged last batch, sample weights and masks. Weight regularizers are
differentiated once per update. Under ``tf.distribute`` each replica accumulates locally; the
denominator is one scalar all-reduce and the gradients are all-reduced once, by the optimizer.
With k = 1 (no micro-batches) there is no loop: the loss is divided by its global denominator
before the backward pass, as Keras does, so the step costs what Keras' own step costs.

Because one ``train_step`` is one update, ``fit`` steps, ``optimizer.iterations``, learning-rate
schedules and callbacks' batch hooks all count updates.

BatchNormalization sees one micro-batch at a time: it normalises with per-micro-batch statistics,
which is Ghost Batch Normalization (Hoffer et al. 2017). Dropout draws a fresh mask per micro-batch.
User documentation: docs/virtual_batches.md.
"""

import keras
import tensorflow as tf
from absl import logging

from experiments import loss_terms


class StepMeasurements:
    """Variables the train step fills in each update, read by measurement callbacks.

    Kept out of the logs so that progress bars stay readable and reading them costs nothing unless a
    callback asks. Every value is identical on all replicas (computed after the all-reduce).

    The gradient noise scale's exponential moving averages live here too and are updated inside the
    step, so that measuring it needs no Python call per update: a callback only sets ``noise_decay``
    and ``noise_sample_every`` (``reset_noise_scale``) and reads ``noise_scale`` when it logs.
    """

    # Layout of ``noise_scale``: EMA of the |G|^2 estimate, EMA of the tr(Sigma) estimate, sum of
    # the EMA weights (bias correction, as in Adam), updates that fed the EMAs (k >= 2), sampled
    # updates (including those with a single micro-batch, which cannot feed them).
    NOISE_GRADIENT_SQ, NOISE_TRACE, NOISE_WEIGHT, NOISE_COUNT, NOISE_SAMPLED = range(5)

    def __init__(self, num_variables):
        def variable(value, name, dtype=tf.float32):
            return tf.Variable(
                value, dtype=dtype, trainable=False, name=name,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

        def scalar(name):
            return variable(0.0, name)

        self.gradient_norm = scalar("gradient_norm")
        self.variable_gradient_norms = variable(tf.zeros([num_variables], tf.float32),
                                                "variable_gradient_norms")
        # Also fill the norms on this update (1-based count), off the ``measure_every_n_updates``
        # interval: set by a callback that logs an epoch's last update; 0: none.
        self.record_update = variable(0, "record_update", tf.int64)
        # Gradient noise scale ingredients (McCandlish et al. 2018); zero when not tracked.
        self.micro_gradient_sq_norm = scalar("micro_gradient_sq_norm")  # mean_j |G_j|^2
        self.batch_gradient_sq_norm = scalar("batch_gradient_sq_norm")  # |mean_j G_j|^2
        self.micro_batch_size = scalar("micro_batch_size")  # mean rows per micro-batch
        self.batch_size = scalar("batch_size")  # rows in the whole (global) virtual batch
        self.num_micro_batches = scalar("num_micro_batches")  # over all replicas
        # ... and their moving averages, fed every ``noise_sample_every`` updates.
        self.noise_scale = variable(tf.zeros([5], tf.float64), "noise_scale", tf.float64)
        self.noise_decay = variable(0.99, "noise_decay", tf.float64)
        self.noise_sample_every = variable(1, "noise_sample_every", tf.int64)

    def reset_noise_scale(self, decay, sample_every=1):
        """Starts the noise-scale averages afresh with this decay (per sample) and sampling."""
        self.noise_scale.assign(tf.zeros([5], tf.float64))
        self.noise_decay.assign(float(decay))
        self.noise_sample_every.assign(int(sample_every))

    def noise_scale_values(self):
        """The bias-corrected averages as {'gradient_sq_norm', 'trace_sigma', 'count',
        'sampled'}; the first two are None until an update with k >= 2 has fed them."""
        state = self.noise_scale.numpy()
        count = int(state[self.NOISE_COUNT])
        weight = state[self.NOISE_WEIGHT]
        values = {"count": count, "sampled": int(state[self.NOISE_SAMPLED]),
                  "gradient_sq_norm": None, "trace_sigma": None}
        if count and weight > 0:
            values["gradient_sq_norm"] = float(state[self.NOISE_GRADIENT_SQ] / weight)
            values["trace_sigma"] = float(state[self.NOISE_TRACE] / weight)
        return values


class VirtualBatchModel(keras.Model):
    """A Keras model whose ``train_step`` performs one exact update per virtual batch.

    Build it from any functional or Sequential model with ``as_virtual_batch_model``; the layers and
    weights are shared, only the training step differs.
    """

    def configure_virtual_batches(self, micro_batch_size=None, track_gradient_noise=False,
                                  has_call_losses=None, virtual_batch_size=None,
                                  measure_every_n_updates=1):
        """Sets the micro-batch size ``b`` (None: the whole batch at once, k = 1).

        Args:
          micro_batch_size: rows per micro-batch; the virtual batch is whatever the pipeline yields.
          track_gradient_noise: also record the per-micro-batch squared gradient norms needed by the
            gradient noise scale estimator (one extra sum of squares per micro-batch).
          has_call_losses: whether the model adds losses during its forward pass (activity
            regularizers, ``add_loss``). Detected from activity regularizers when None.
          virtual_batch_size: the batch B the pipeline yields, when known. With
            ``micro_batch_size >= virtual_batch_size`` (k = 1) the step skips the micro-batch loop.
          measure_every_n_updates: fill the gradient norms of ``measurements`` every n-th update
            only (and on the update ``measurements.record_update`` names); 0: never. The norms cost
            a pass over the gradients (and, distributed, one more all-reduce): ~6% of a batch-32
            step of a 784-512-512-10 MLP (benchmarks/bench_virtual_batch.py). The gradient noise
            scale's ingredients and averages are updated on every sampled update regardless.
        """
        if isinstance(measure_every_n_updates, bool) \
                or not isinstance(measure_every_n_updates, int) or measure_every_n_updates < 0:
            raise ValueError("measure_every_n_updates must be a non-negative integer, got "
                             f"{measure_every_n_updates!r}.")
        self._measure_every = measure_every_n_updates
        if micro_batch_size is not None:
            if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int) \
                    or micro_batch_size <= 0:
                raise ValueError(
                    f"micro_batch_size must be a positive integer, got {micro_batch_size!r}.")
            if virtual_batch_size is not None and micro_batch_size >= virtual_batch_size:
                micro_batch_size = None
        self._micro_batch_size = micro_batch_size
        self._track_gradient_noise = bool(track_gradient_noise)
        if has_call_losses is None:
            has_call_losses = any(
                getattr(layer, "activity_regularizer", None) is not None
                for layer in self._flatten_layers(include_self=False)
            )
        self._has_call_losses = bool(has_call_losses)
        self.measurements = StepMeasurements(len(self.trainable_variables))
        if micro_batch_size is not None and self.has_batch_normalization():
            logging.warning(
                "The model has BatchNormalization and each virtual batch is split into "
                "micro-batches of %d rows: BatchNormalization normalises each micro-batch with "
                "its own statistics and updates its moving averages once per micro-batch "
                "(Ghost Batch Normalization, Hoffer et al. 2017), so training differs from one "
                "pass over the whole batch.", micro_batch_size)

    @property
    def micro_batch_size(self):
        return getattr(self, "_micro_batch_size", None)

    @property
    def measure_every_n_updates(self):
        """How often the gradient norms of ``measurements`` are filled (1: every update)."""
        return getattr(self, "_measure_every", 1)

    # -- Stateful streams (experiments/stateful_data.py): micro-batches are time windows --------
    def configure_time_windows(self, window_length):
        """Splits every batch along time (axis 1) into consecutive windows of ``window_length``.

        For stateful models fed by a stream pipeline: a batch of shape (S, k*T, ...) holds k
        consecutive windows of the same S streams. The step runs them in order inside the same
        micro-batch loop, the RNN state carried from one window to the next (truncated BPTT with
        one update every k windows; gradients never cross a window boundary). Such a virtual batch
        holds S independent streams, not k × S rows. Targets and per-step sample weights are split
        the same way; per-row sample weights go whole to every window.
        """
        if isinstance(window_length, bool) or not isinstance(window_length, int) \
                or window_length <= 0:
            raise ValueError(f"window_length must be a positive integer, got {window_length!r}.")
        if getattr(self, "_track_gradient_noise", False):
            raise ValueError(
                "The gradient noise scale needs independent micro-batches; consecutive windows of "
                "the same streams are not. Turn off train.track_gradient_noise for stream data.")
        self._time_window = window_length

    @property
    def time_window(self):
        """Steps per window when batches are split along time (stateful streams), else None."""
        return getattr(self, "_time_window", None)

    def has_batch_normalization(self):
        return any(isinstance(layer, keras.layers.BatchNormalization)
                   for layer in self._flatten_layers(include_self=False))

    def train_step(self, data):
        if not hasattr(self, "measurements"):
            self.configure_virtual_batches()
        if getattr(self.optimizer, "gradient_accumulation_steps", None):
            raise ValueError(
                "The optimizer has gradient_accumulation_steps="
                f"{self.optimizer.gradient_accumulation_steps}: a VirtualBatchModel already "
                "accumulates micro-batches into one update; use micro_batch_size "
                "(train.micro_batch_size) instead of the optimizer's accumulation.")
        grads, loss, num_rows = self.virtual_batch_gradients(data)
        self.optimizer.apply(grads, self.trainable_variables)
        self._loss_tracker.update_state(loss, sample_weight=num_rows)
        return self.get_metrics_result()

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False, **kwargs):
        """``keras.Model.evaluate``, or the custom loop's when one trains this model.

        Under MultiWorkerMirroredStrategy Keras' own evaluate fails (keras-team/keras#20585);
        callbacks that call ``model.evaluate`` then go through ``custom_loop.CustomLoop``.
        """
        loop = getattr(self, "_custom_loop", None)
        if loop is None:
            return super().evaluate(x, y, batch_size=batch_size, verbose=verbose,
                                    sample_weight=sample_weight, steps=steps,
                                    callbacks=callbacks, return_dict=return_dict, **kwargs)
        return loop.evaluate(x, y, batch_size=batch_size, sample_weight=sample_weight,
                             steps=steps, return_dict=return_dict)

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
        n_vars = len(variables)
        replica = tf.distribute.get_replica_context()
        num_replicas = replica.num_replicas_in_sync if replica is not None else 1
        distributed = replica is not None and num_replicas > 1

        first = next(t for t in tf.nest.flatten(x) if t is not None)
        num_rows = tf.shape(first)[0]
        micro = self.micro_batch_size
        if self.time_window is not None:  # stateful streams: split along time, not rows
            micro = self.time_window
        loss_dtype = tf.float64 if any(v.dtype == tf.float64 for v in variables) else tf.float32
        sampled = None  # whether this update feeds the gradient noise scale
        if self._track_gradient_noise:
            every = tf.maximum(self.measurements.noise_sample_every, 1)
            sampled = tf.equal(self._coming_update() % every, 0)

        # Global row count is known before the loop: call-time losses (per-sample means in Keras)
        # are weighted by rows / global rows.
        global_rows = None
        if self._has_call_losses:
            global_rows = tf.cast(num_rows, tf.float32)
            if distributed:
                global_rows = replica.all_reduce("sum", global_rows)

        def micro_step(xj, yj, swj, size):
            """Unnormalised loss terms and gradients of one micro-batch; updates the metrics."""
            with tf.GradientTape(persistent=self._has_call_losses) as tape:
                y_pred = self(xj, training=True)
                num_j, den_j = self._loss_terms(yj, y_pred, swj)
                call_losses = self._call_losses()
                call_term = tf.zeros((), tf.float32)
                if call_losses:
                    call_term = tf.add_n([tf.cast(c, tf.float32) for c in call_losses]) \
                        * tf.cast(size, tf.float32) / global_rows
            grads = _dense(tape.gradient(num_j, variables), variables)
            if self._has_call_losses:
                grads += _dense(tape.gradient(call_term, variables), variables)
                del tape
            sq = tf.zeros((), tf.float32)
            if self._track_gradient_noise:
                def squared_norm():
                    # |G_j|^2 of this micro-batch's mean gradient ('sum' losses: mean over rows).
                    total = 2.0 * tf.add_n([tf.nn.l2_loss(tf.cast(g, tf.float32))
                                            for g in grads[:n_vars]])
                    per = size if self._loss_terms.sums_only else den_j
                    return total / tf.square(tf.maximum(tf.cast(per, tf.float32), 1e-12))

                sq = tf.cond(sampled, squared_norm, lambda: tf.zeros((), tf.float32))
            self._update_metrics(xj, yj, y_pred, swj)
            return (tf.cast(num_j, loss_dtype), tf.cast(den_j, loss_dtype),
                    tf.cast(call_term, loss_dtype), sq, grads)

        def all_reduced(values):
            return replica.all_reduce("sum", values) if distributed else values

        def safe(denominator):
            if self._loss_terms.sums_only:
                return tf.ones_like(denominator)
            return tf.where(denominator > 0, denominator, tf.ones_like(denominator))

        prenormalised = micro is None and not self._has_call_losses
        if prenormalised:
            # k = 1: one pass, and the loss is divided by its (global) denominator before the
            # backward pass, as Keras does: the denominator depends on the data only, and the
            # gradients need no second pass over them.
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                numerator, denominator = self._loss_terms(y, y_pred, sample_weight)
                self._call_losses()  # raises if the model adds losses nobody declared
                totals = all_reduced(tf.stack([tf.cast(numerator, loss_dtype),
                                               tf.cast(denominator, loss_dtype)]))
                safe_denominator = tf.stop_gradient(safe(totals[1]))
                scaled = numerator / tf.cast(safe_denominator, numerator.dtype)
            grads = _dense(tape.gradient(scaled, variables), variables)
            self._update_metrics(x, y, y_pred, sample_weight)
            global_numerator, global_call = tf.stop_gradient(totals[0]), 0.0
            num_micro = tf.ones((), tf.int32)
            micro_sq = tf.zeros((), tf.float32)
            if self._track_gradient_noise:
                # |G|^2 of this replica's own mean gradient.
                per = num_rows if self._loss_terms.sums_only else denominator
                ratio = tf.cast(safe_denominator, tf.float32) / tf.maximum(
                    tf.cast(per, tf.float32), 1e-12)
                micro_sq = 2.0 * tf.add_n([tf.nn.l2_loss(tf.cast(g, tf.float32))
                                           for g in grads]) * tf.square(ratio)
        elif micro is None:
            # k = 1 with call-time losses: one pass through the general path, no loop.
            numerator, denominator, call_total, micro_sq, accumulators = micro_step(
                x, y, sample_weight, num_rows)
            num_micro = tf.ones((), tf.int32)
        else:
            split_axis = 0 if self.time_window is None else 1
            num_items = num_rows if split_axis == 0 else tf.shape(first)[1]  # rows or steps
            micro_rows = tf.minimum(num_items, micro)
            num_micro = (num_items + micro_rows - 1) // tf.maximum(micro_rows, 1)

            def take(tensor, start, size):
                if tensor is None:
                    return None
                if split_axis == 1:
                    return _time_slice(tensor, start, size)
                return tensor[start:start + size]

            def body(j, numerator, denominator, call_total, micro_sq, *accumulators):
                start = j * micro_rows
                size = tf.minimum(micro_rows, num_items - start)
                part = [tf.nest.map_structure(lambda t: take(t, start, size), s)
                        for s in (x, y, sample_weight)]
                if split_axis == 1:  # a window's call losses weigh rows x (its share of steps)
                    size = _window_share(num_rows, size, num_items)
                num_j, den_j, call_j, sq_j, grads = micro_step(*part, size)
                return (j + 1, numerator + num_j, denominator + den_j, call_total + call_j,
                        micro_sq + sq_j, *[a + g for a, g in zip(accumulators, grads)])

            copies = 2 if self._has_call_losses else 1
            zeros = [tf.zeros_like(v) for v in variables] * copies
            loop_vars = (tf.constant(0), tf.zeros((), loss_dtype), tf.zeros((), loss_dtype),
                         tf.zeros((), loss_dtype), tf.zeros((), tf.float32), *zeros)
            # parallel_iterations=1: one micro-batch's activations alive at a time.
            result = tf.while_loop(
                lambda j, *_: j < num_micro, body, loop_vars, parallel_iterations=1)
            _, numerator, denominator, call_total, micro_sq = result[:5]
            accumulators = list(result[5:])

        if not prenormalised:
            totals = all_reduced(tf.stack([numerator, denominator, call_total]))
            global_numerator, global_call = totals[0], totals[2]
            safe_denominator = safe(totals[1])
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

        self._record_step_measurements(grads, data_grads, micro_sq, num_micro, num_rows,
                                       replica, num_replicas, sampled)
        return grads, loss, num_rows

    def _update_metrics(self, x, y, y_pred, sample_weight):
        """Updates the compiled metrics on one micro-batch.

        ``compute_metrics`` also reads every metric's result; inside the micro-batch loop that read
        is wasted, so it is skipped unless a subclass overrides ``compute_metrics``.
        """
        if type(self).compute_metrics is not keras.Model.compute_metrics:
            self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
            return
        compiled = getattr(self, "_compile_metrics", None)
        if compiled is not None:
            compiled.update_state(y, y_pred, sample_weight)

    def _call_losses(self):
        """Losses added during the forward pass (activity regularizers, add_loss).

        Raises when there are some but the model was not built with ``has_call_losses``: the
        step would otherwise drop them or weight them wrongly.
        """
        losses = []
        for layer in self._flatten_layers(include_self=True):
            losses.extend(layer._get_own_losses())
        if losses and not self._has_call_losses:
            raise ValueError(
                "The model adds losses in its forward pass; build the virtual-batch model "
                "with has_call_losses=True so they are weighted exactly.")
        return losses

    def _coming_update(self):
        """The 1-based count of the update this step performs."""
        return tf.cast(self.optimizer.iterations, tf.int64) + 1

    def _record_step_measurements(self, grads, data_grads, micro_sq, num_micro, num_rows,
                                  replica, num_replicas, sampled):
        """Fills ``measurements``: the noise scale on sampled updates, the gradient norms every
        ``measure_every_n_updates`` updates and on the update ``record_update`` names.

        On one device each part sits in a ``tf.cond``, so an update that records nothing costs two
        scalar comparisons. Under a distribution strategy every update records (the values of
        the noise scale still change on sampled updates only): all-reduces and the cross-replica
        writes of ``ONLY_FIRST_REPLICA`` variables cannot run inside a ``tf.cond`` there.
        """
        distributed = replica is not None and num_replicas > 1
        gated = not tf.distribute.has_strategy()
        if self._track_gradient_noise:
            if gated:
                def noise():
                    self._record_noise(data_grads, micro_sq, num_micro, num_rows, replica,
                                       distributed, sampled)
                    return tf.constant(True)

                tf.cond(sampled, noise, lambda: tf.constant(False))
            else:
                self._record_noise(data_grads, micro_sq, num_micro, num_rows, replica,
                                   distributed, sampled)
        every = getattr(self, "_measure_every", 1)
        if every == 1 or (every > 1 and not gated):
            self._record_norms(grads, replica, distributed)
        elif every > 1:
            def norms():
                self._record_norms(grads, replica, distributed)
                return tf.constant(True)

            coming = self._coming_update()
            due = tf.logical_or(tf.equal(coming % every, 0),
                                tf.equal(coming, self.measurements.record_update))
            tf.cond(due, norms, lambda: tf.constant(False))

    def _record_norms(self, grads, replica, distributed):
        m = self.measurements
        full = list(grads)
        if distributed:
            full = replica.all_reduce("sum", full)
        # sqrt(2 * l2_loss): one fused pass per gradient; tf.norm costs ~13% of a small step.
        norms = tf.stack([tf.sqrt(2.0 * tf.nn.l2_loss(tf.cast(g, tf.float32)))
                          for g in full]) if full else \
            tf.zeros([0])
        m.variable_gradient_norms.assign(norms)
        m.gradient_norm.assign(tf.norm(norms))

    def _record_noise(self, data_grads, micro_sq, num_micro, num_rows, replica, distributed,
                      sampled):
        """The noise scale's ingredients of this update, and their moving averages.

        With B_small = b and B_big = k*b rows at the same weights (McCandlish et al. 2018):
        |G|^2 ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small) and
        tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big), each averaged with decay
        ``noise_decay`` per sample. An update with a single micro-batch (B_big = B_small) is
        counted as sampled but does not feed the averages. Nothing changes unless ``sampled``.
        """
        m = self.measurements
        data = list(data_grads)
        counts = tf.stack([micro_sq, tf.cast(num_micro, tf.float32),
                           tf.cast(num_rows, tf.float32)])
        if distributed:
            data = replica.all_reduce("sum", data)
            counts = replica.all_reduce("sum", counts)
        micro_sq_total, micro_count, rows = counts[0], counts[1], counts[2]
        micro_sq_mean = micro_sq_total / tf.maximum(micro_count, 1.0)
        batch_sq = 2.0 * tf.add_n([tf.nn.l2_loss(tf.cast(g, tf.float32)) for g in data])
        if self._loss_terms.sums_only:  # 'sum' losses: the gradient of the mean over rows
            batch_sq = batch_sq / tf.square(tf.maximum(rows, 1.0))
        micro_rows = rows / tf.maximum(micro_count, 1.0)
        for variable, value in ((m.micro_gradient_sq_norm, micro_sq_mean),
                                (m.batch_gradient_sq_norm, batch_sq),
                                (m.num_micro_batches, micro_count), (m.batch_size, rows),
                                (m.micro_batch_size, micro_rows)):
            variable.assign(tf.where(sampled, value, variable))

        small_sq, big_sq = tf.cast(micro_sq_mean, tf.float64), tf.cast(batch_sq, tf.float64)
        b_small, b_big = tf.cast(micro_rows, tf.float64), tf.cast(rows, tf.float64)
        defined = b_big > b_small * (1.0 + 1e-6)
        gradient_sq = (b_big * big_sq - b_small * small_sq) / tf.where(
            defined, b_big - b_small, tf.ones_like(b_big))
        inverse_gap = tf.where(defined, 1.0 / tf.maximum(b_small, 1e-12)
                               - 1.0 / tf.maximum(b_big, 1e-12), tf.ones_like(b_big))
        trace = (small_sq - big_sq) / inverse_gap
        state = tf.convert_to_tensor(m.noise_scale)
        decay = tf.convert_to_tensor(m.noise_decay)
        fed = tf.stack([decay * state[0] + (1.0 - decay) * gradient_sq,
                        decay * state[1] + (1.0 - decay) * trace,
                        decay * state[2] + (1.0 - decay),
                        state[3] + 1.0, state[4] + 1.0])
        kept = tf.concat([state[:4], state[4:] + tf.cast(sampled, tf.float64)], axis=0)
        m.noise_scale.assign(tf.where(tf.logical_and(defined, sampled), fed, kept))


def _time_slice(tensor, start, size):
    """Steps [start, start + size) of a (rows, time, ...) tensor; per-row tensors pass whole."""
    if tensor.shape.rank is not None and tensor.shape.rank < 2:
        return tensor
    return tensor[:, start:start + size]


def _window_share(num_rows, size, num_steps):
    """Rows-equivalent weight of one window: rows x window steps / batch steps."""
    return tf.cast(num_rows, tf.float32) * tf.cast(size, tf.float32) \
        / tf.cast(num_steps, tf.float32)


def _dense(grads, variables):
    """Gradients as dense tensors of each variable's dtype (zeros where there is no path).

    Embedding gradients arrive as IndexedSlices; summed over micro-batches they are dense anyway.
    """
    return [tf.zeros_like(v) if g is None else tf.cast(tf.convert_to_tensor(g), v.dtype)
            for g, v in zip(grads, variables)]


def as_virtual_batch_model(model, micro_batch_size=None, track_gradient_noise=False,
                           has_call_losses=None, virtual_batch_size=None,
                           measure_every_n_updates=1):
    """Returns a ``VirtualBatchModel`` sharing ``model``'s layers and weights.

    ``model`` must be functional or a built Sequential model (it has ``inputs`` and ``outputs``).
    ``virtual_batch_size`` (B, when known) lets k = 1 skip the micro-batch loop.
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
    vb.configure_virtual_batches(micro_batch_size, track_gradient_noise, has_call_losses,
                                 virtual_batch_size, measure_every_n_updates)
    return vb
