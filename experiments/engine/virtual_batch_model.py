"""The virtual-batch model: one ``train_step`` call, one exact optimizer update, memory of one
micro-batch.

``VirtualBatchModel.train_step`` computes the gradient of the whole virtual batch from its
micro-batches (``accumulation``), applies it once, and fills the step's measurements
(``step_measurements``). With k = 1 (no micro-batches) there is no loop: the step costs what
Keras' own step costs. Because one ``train_step`` is one update, ``fit`` steps,
``optimizer.iterations``, learning-rate schedules and callbacks' batch hooks all count updates.

BatchNormalization sees one micro-batch at a time: it normalises with per-micro-batch statistics,
which is Ghost Batch Normalization (Hoffer et al. 2017). Dropout draws a fresh mask per
micro-batch. User documentation: docs/virtual_batches.md.

What measurements and loops may use is public: ``measurements``, ``tracks_gradient_noise``,
``measures_gradient_norms``, ``learning_rate_scaling`` (AdaScale, ``adascale``), ``micro_batch_size``, ``time_window``, ``evaluation_loop``.
"""

import keras
import tensorflow as tf
from absl import logging

from experiments.common import checks
from experiments.engine import accumulation, keras_internals, loss_terms, noise_scale, states
from experiments.engine.step_measurements import StepMeasurements, is_sampled, record


class VirtualBatchModel(keras.Model):
    """A Keras model whose ``train_step`` performs one exact update per virtual batch.

    Build it from any functional or Sequential model with ``as_virtual_batch_model``; the layers and
    weights are shared, only the training step differs.
    """

    def configure_virtual_batches(self, micro_batch_size=None, track_gradient_noise=False,
                                  has_call_losses=None, measure_gradient_norms=True):
        """Sets the micro-batch size ``b`` (None: the whole batch at once, k = 1).

        Args:
          micro_batch_size: rows per micro-batch; the virtual batch is whatever the pipeline yields
            (k = ceil(rows / b) per update, so a batch that grows during training stays exact).
          track_gradient_noise: also record the per-micro-batch squared gradient norms needed by the
            gradient noise scale estimator (one extra sum of squares per micro-batch).
          has_call_losses: whether the model adds losses during its forward pass (activity
            regularizers, ``add_loss``). Detected from activity regularizers when None. Each
            micro-batch's call losses are weighted by its share of the rows: exact for a loss
            that is a mean over the batch's rows (Keras' activity regularizers are), k times too
            weak for one that sums over them.
          measure_gradient_norms: fill the gradient norms of ``measurements`` on the update the
            loop measures (``StepMeasurements.measured_update``; every update when distributed);
            False: never (a step without the check; benchmarks/bench_virtual_batch.py). The
            gradient noise scale's ingredients and averages are updated on every sampled update
            regardless.
        """
        self._measure_norms = bool(measure_gradient_norms)
        self._micro_batch_size = checks.optional_positive_int(micro_batch_size,
                                                              "micro_batch_size")
        self._track_gradient_noise = bool(track_gradient_noise)
        if has_call_losses is None:
            has_call_losses = any(
                getattr(layer, "activity_regularizer", None) is not None
                for layer in states.layers(self))
        self._has_call_losses = bool(has_call_losses)
        self.measurements = StepMeasurements(len(self.trainable_variables))
        replicas = self.distribute_strategy.num_replicas_in_sync
        if replicas > 1:
            # Mirrored seed states would give every replica the same dropout masks.
            keras_internals.distinct_replica_seeds(self)
        if replicas > 1 and micro_batch_size is not None and any(
                getattr(layer, "synchronized", False) for layer in states.layers(self)
                if isinstance(layer, keras.layers.BatchNormalization)):
            raise ValueError(
                "BatchNormalization(synchronized=True) all-reduces its statistics in the forward "
                "pass, which cannot run inside the micro-batch loop on several replicas "
                f"(train.micro_batch_size={micro_batch_size}): train at k = 1 on the replicas, "
                "or use synchronized=False (each replica and micro-batch then normalises with "
                "its own statistics).")
        if replicas > 1 and states.batch_normalization_statistics(self):
            logging.warning(
                "The model has BatchNormalization and trains on %d replicas: each replica "
                "normalises its rows with their own statistics (as in data-parallel training "
                "without synchronized BatchNormalization), and the moving averages are averaged "
                "over the replicas that had rows after every update. BatchNormalization("
                "synchronized=True) normalises with the whole batch's statistics instead.",
                replicas)
        if micro_batch_size is not None and states.has_batch_normalization(self):
            logging.warning(
                "The model has BatchNormalization and each virtual batch is split into "
                "micro-batches of %d rows: BatchNormalization normalises each micro-batch with "
                "its own statistics and updates its moving averages once per micro-batch "
                "(Ghost Batch Normalization, Hoffer et al. 2017), so training differs from one "
                "pass over the whole batch.", micro_batch_size)

    def configure_time_windows(self, window_length):
        """Splits every batch along time (axis 1) into consecutive windows of ``window_length``.

        For stateful models fed by a stream pipeline: a batch of shape (S, k*T, ...) holds k
        consecutive windows of the same S streams. The step runs them in order inside the same
        micro-batch loop, the RNN state carried from one window to the next (truncated BPTT with
        one update every k windows; gradients never cross a window boundary). Targets and per-step
        sample weights are split the same way; per-row sample weights go whole to every window.
        """
        checks.positive_int(window_length, "window_length")
        if self.tracks_gradient_noise:
            raise ValueError(
                "The gradient noise scale needs independent micro-batches; consecutive windows of "
                "the same streams are not. Turn off measurements.track_gradient_noise for stream "
                "data.")
        self._time_window = window_length

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, **kwargs):
        """Keras' ``compile``. The step reduces the loss itself (``loss_terms``), so it keeps
        ``loss_weights``' weight of the one output (``loss_weight``) to multiply the loss by, as
        Keras does."""
        super().compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights, **kwargs)
        check_optimizer(self.optimizer)  # as compiled (Keras may have wrapped it)
        self._loss_weight = single_loss_weight(loss_weights, self.output_names)
        self._loss_terms = None

    @property
    def loss_weight(self):
        """The compiled loss' weight (``compile(loss_weights=...)``; 1 when none was given)."""
        return getattr(self, "_loss_weight", 1.0)

    def _compiled_loss_terms(self):
        if getattr(self, "_loss_terms", None) is None:
            self._loss_terms = loss_terms.of_model(self)
        return self._loss_terms

    # -- Public contract for callbacks and loops -------------------------------------------------
    @property
    def micro_batch_size(self):
        return getattr(self, "_micro_batch_size", None)

    @property
    def time_window(self):
        """Steps per window when batches are split along time (stateful streams), else None."""
        return getattr(self, "_time_window", None)

    @property
    def tracks_gradient_noise(self):
        """Whether the step records what the gradient noise scale needs."""
        return getattr(self, "_track_gradient_noise", False)

    @property
    def measures_gradient_norms(self):
        """Whether the step fills the gradient norms of ``measurements`` on measured updates."""
        return getattr(self, "_measure_norms", True)

    @property
    def learning_rate_scaling(self):
        """``engine.adascale.AdaScale`` when the learning rate follows the batch, else None."""
        return self.__dict__.get("_learning_rate_scaling")

    @learning_rate_scaling.setter
    def learning_rate_scaling(self, scaling):
        self.__dict__["_learning_rate_scaling"] = scaling

    @property
    def evaluation_loop(self):
        """The loop that evaluates this model when Keras' cannot (``custom_loop.CustomLoop``
        under several replicas), or None."""
        return getattr(self, "_evaluation_loop", None)

    def use_loop_for_evaluation(self, loop):
        """Routes ``evaluate`` through ``loop`` (a ``CustomLoop``); None restores Keras'."""
        self._evaluation_loop = loop

    # -- Keras hooks -----------------------------------------------------------------------------
    def train_step(self, data):
        if not hasattr(self, "measurements"):
            self.configure_virtual_batches()
        check_optimizer(self.optimizer)  # also an optimizer set after compile
        grads, loss, num_rows = self.virtual_batch_gradients(data)
        scaling = self.learning_rate_scaling
        if scaling is not None:  # AdaScale: this update's gain, from its own noise sample
            scaling.before_update(self.measurements)
        self._apply(grads)
        if scaling is not None:
            scaling.after_update()
        states.average_over_replicas(states.batch_normalization_statistics(self), num_rows)
        keras_internals.loss_tracker(self).update_state(loss, sample_weight=num_rows)
        return self.get_metrics_result()

    def _apply(self, grads):
        """``optimizer.apply`` of this replica's share of the gradient. The optimizer sums the
        shares over replicas after its clipping, so under several replicas a clipping optimizer
        would clip each share, not the gradient of the batch (an update up to R times the clip):
        there the step sums the shares and clips the sum as the optimizer would; each replica
        then hands the optimizer 1/R of it, which its clipping leaves as it is (a norm or value
        within the clip stays; the settings are not changed: the replicas trace concurrently)."""
        optimizer, variables = self.optimizer, self.trainable_variables
        replica = tf.distribute.get_replica_context()
        replicas = replica.num_replicas_in_sync if replica is not None else 1
        if replicas > 1 and keras_internals.clips_gradients(optimizer):
            clipped = keras_internals.clip_gradients(optimizer, replica.all_reduce("sum", grads))
            grads = [g / replicas for g in clipped]
        optimizer.apply(grads, variables)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False, **kwargs):
        """``keras.Model.evaluate``, or the evaluation loop's when one is set.

        Under MultiWorkerMirroredStrategy Keras' own evaluate fails (keras-team/keras#20585);
        callbacks that call ``model.evaluate`` then go through ``custom_loop.CustomLoop``.
        """
        loop = self.evaluation_loop
        if loop is None:
            return super().evaluate(x, y, batch_size=batch_size, verbose=verbose,
                                    sample_weight=sample_weight, steps=steps,
                                    callbacks=callbacks, return_dict=return_dict, **kwargs)
        return loop.evaluate(x, y, batch_size=batch_size, sample_weight=sample_weight,
                             steps=steps, return_dict=return_dict)

    def replicated_test_step(self, data):
        """``test_step`` for one batch spread over several replicas: the loss Keras' own
        ``test_step`` gives on the whole batch on one device (a masked or weighted mean over its
        rows: one all-reduce of each replica's numerator, denominator and call-time losses,
        as the train step does; weight regularizers' penalty once), where Keras' step on each
        replica gives that replica's mean and the loop's read averages them by rows. The metrics
        are Keras' (sums over every replica's rows)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        first = next(t for t in tf.nest.flatten(x) if t is not None)
        rows = tf.cast(tf.shape(first)[0], tf.float32)
        terms = self._compiled_loss_terms()
        y_pred = self(x, training=False)
        numerator, denominator = terms(y, y_pred, sample_weight)
        forward = keras_internals.forward_pass_losses(self)
        call_term = tf.add_n([tf.cast(c, tf.float32) for c in forward]) * rows if forward \
            else tf.zeros((), tf.float32)
        totals = tf.distribute.get_replica_context().all_reduce("sum", tf.stack([
            tf.cast(numerator, tf.float32), tf.cast(denominator, tf.float32), call_term, rows]))
        loss = totals[0] / accumulation.safe_denominator(terms.sums_only, totals[1]) \
            + totals[2] / tf.maximum(totals[3], 1.0)
        penalty = accumulation.weight_penalty(self.trainable_variables, tf.float32)
        if penalty is not None:
            loss += penalty
        keras_internals.loss_tracker(self).update_state(loss, sample_weight=rows)
        accumulation.update_metrics(self, x, y, y_pred, sample_weight)

    # -- The update ------------------------------------------------------------------------------
    def virtual_batch_gradients(self, data):
        """Returns (replica-local gradients, virtual-batch loss, local row count).

        The optimizer's all-reduce (a sum over replicas) of the returned gradients gives exactly the
        gradient of the loss over the global virtual batch. Also updates the compiled metrics on
        every row and fills ``self.measurements``.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        first = next(t for t in tf.nest.flatten(x) if t is not None)
        num_rows = tf.shape(first)[0]
        ctx = self._step_context(num_rows)
        split = self.time_window or self.micro_batch_size
        if split is None and ctx.distributed and states.batch_normalization_statistics(self):
            # A replica may be handed no rows (a ragged last batch over R replicas): a pass over
            # 0 rows feeds NaN batch statistics to BatchNormalization; the loop runs no pass.
            # (Synchronized layers are not listed: their all-reduce cannot run in the loop.)
            split = num_rows
        if split is None and not ctx.has_call_losses:
            grads, loss, micro_sq = accumulation.single_pass(self, ctx, x, y, sample_weight,
                                                             num_rows)
            data_grads, num_micro = grads, tf.ones((), tf.int32)
        else:
            if split is None:
                acc = accumulation.one_micro_batch(self, ctx, x, y, sample_weight, num_rows)
            else:
                axis = 0 if self.time_window is None else 1
                acc = accumulation.accumulate_micro_batches(self, ctx, x, y, sample_weight,
                                                            split, axis, num_rows)
            grads, data_grads, loss = accumulation.normalise(ctx, acc)
            micro_sq, num_micro = acc.micro_sq, acc.num_micro
        grads, loss = accumulation.add_regularizers(ctx.variables, grads, loss, ctx.num_replicas)
        record(self.measurements, ctx, grads, data_grads, micro_sq, num_micro, num_rows)
        return grads, loss, num_rows

    def _step_context(self, num_rows):
        """What the accumulation functions share about this update."""
        terms = self._compiled_loss_terms()
        variables = self.trainable_variables
        replica = tf.distribute.get_replica_context()
        num_replicas = replica.num_replicas_in_sync if replica is not None else 1
        distributed = replica is not None and num_replicas > 1
        coming = tf.cast(self.optimizer.iterations, tf.int64) + 1
        sampled = preconditioner = None
        kind = self.measurements.traced_kind
        if self._track_gradient_noise:
            sampled = is_sampled(self.measurements, coming, kind)
            preconditioner = noise_scale.diagonal_preconditioner(self.optimizer, variables)
        global_rows = None
        if self._has_call_losses:  # call-time losses are weighted by rows / global rows
            global_rows = tf.cast(num_rows, tf.float32)
            if distributed:
                global_rows = replica.all_reduce("sum", global_rows)
        loss_dtype = tf.float64 if any(v.dtype == tf.float64 for v in variables) else tf.float32
        return accumulation.StepContext(
            variables=variables, loss_terms=terms, replica=replica,
            num_replicas=num_replicas, distributed=distributed, loss_dtype=loss_dtype,
            has_call_losses=self._has_call_losses, track_noise=self._track_gradient_noise,
            sampled=sampled, preconditioner=preconditioner, coming_update=coming,
            records_norms=self.measures_gradient_norms,
            global_rows=global_rows, measured=kind)


def check_optimizer(optimizer):
    """Refuses what a VirtualBatchModel's step cannot honour: the optimizer's own gradient
    accumulation, and a loss scale (Keras' train step multiplies the loss by it and
    ``optimizer.apply`` divides the gradients by it; this step computes the loss itself, so
    every update would be that many times too small)."""
    if getattr(optimizer, "gradient_accumulation_steps", None):
        raise ValueError(
            "The optimizer has gradient_accumulation_steps="
            f"{optimizer.gradient_accumulation_steps}: a VirtualBatchModel already "
            "accumulates micro-batches into one update; use micro_batch_size "
            "(train.micro_batch_size) instead of the optimizer's accumulation.")
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            "The optimizer is a LossScaleOptimizer (Keras puts one in under the "
            "'mixed_float16' policy): it divides the gradients by a loss scale that a "
            "VirtualBatchModel's step never multiplies the loss by, so every update would "
            "be that many times too small. Use the 'mixed_bfloat16' or 'float32' policy (or, "
            "for float16 without loss scaling, compile with auto_scale_loss=False).")
    if getattr(optimizer, "loss_scale_factor", None) is not None:
        raise ValueError(
            f"The optimizer has loss_scale_factor={optimizer.loss_scale_factor}: it divides "
            "the gradients by that factor, and a VirtualBatchModel's step never multiplies "
            "the loss by it, so every update would be that many times too small. Leave it "
            "unset (it guards float16 gradients against underflow; train in 'float32' or "
            "'mixed_bfloat16').")


def single_loss_weight(loss_weights, output_names):
    """The one output's weight in ``compile(loss_weights=...)`` (a float, a one-element list, or
    a dict keyed by the output's name); 1.0 for None."""
    if loss_weights is None:
        return 1.0
    if isinstance(loss_weights, dict):
        unknown = set(loss_weights) - set(output_names or ())
        if unknown or len(loss_weights) != 1:
            raise ValueError(
                f"loss_weights={loss_weights!r} must name the model's one output "
                f"({', '.join(output_names or ()) or 'unnamed'}).")
        loss_weights = next(iter(loss_weights.values()))
    elif isinstance(loss_weights, (list, tuple)):
        if len(loss_weights) != 1:
            raise ValueError(f"loss_weights={loss_weights!r}: the model has one output, so one "
                             "weight.")
        loss_weights = loss_weights[0]
    return float(loss_weights)


# Methods whose override a ``VirtualBatchModel`` would drop: it keeps the layers' graph and
# brings its own step, loss and metrics.
_REPLACED_METHODS = ("call", "train_step", "test_step", "compute_loss", "compute_metrics")


def _check_wrappable(model):
    """Refuses, before training, a model whose virtual batches would silently differ from it."""
    outputs = len(model.outputs)
    if outputs != 1:
        raise ValueError(
            f"Virtual batches support models with one output; {model.name} has {outputs}. Keras "
            "would add the outputs' losses; combine the outputs into one (or train at k = 1 "
            "with plain Keras).")
    for name in _REPLACED_METHODS:
        owner = next((cls for cls in type(model).__mro__ if name in vars(cls)), None)
        if owner is not None and not owner.__module__.startswith("keras."):
            raise ValueError(
                f"{type(model).__name__} overrides {name}(), which a virtual-batch model does "
                "not run: it rebuilds the model from its inputs and outputs with its own step, "
                "loss and metrics. Move the behaviour into layers (add_loss for an extra loss "
                "term, as a mean over the batch's rows) or train with plain Keras.")


def as_virtual_batch_model(model, micro_batch_size=None, track_gradient_noise=False,
                           has_call_losses=None, virtual_batch_size=None,
                           measure_gradient_norms=True):
    """Returns a ``VirtualBatchModel`` sharing ``model``'s layers and weights.

    ``model`` must be functional or a built Sequential model (it has ``inputs`` and ``outputs``).
    ``virtual_batch_size`` (B, when known): with ``micro_batch_size >= B`` one pass over the batch
    is the same update, so the step is built without the micro-batch loop (k = 1). batchlab runs
    decide this once, in ``inputs.layout.BatchLayout``, and pass no micro-batch size for k = 1.
    """
    if micro_batch_size is not None and virtual_batch_size is not None \
            and micro_batch_size >= virtual_batch_size:
        micro_batch_size = None
    if isinstance(model, VirtualBatchModel):
        vb = model
    else:
        try:
            inputs, outputs = model.inputs, model.outputs
        except (AttributeError, ValueError) as err:
            raise ValueError(
                "Virtual batches need a functional or Sequential model with an Input; "
                f"{type(model).__name__} has no defined inputs ({err}).") from err
        _check_wrappable(model)
        vb = VirtualBatchModel(inputs=inputs, outputs=outputs, name=model.name)
    vb.configure_virtual_batches(micro_batch_size, track_gradient_noise, has_call_losses,
                                 measure_gradient_norms)
    return vb
