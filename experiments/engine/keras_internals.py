"""The one module that touches private Keras and TensorFlow API; everything else uses public API.

Each function or class below wraps one private member that batchlab needs and no public API
provides. When Keras or TensorFlow is upgraded, this file is the list to recheck
(``tests/test_architecture.py`` keeps every other module of ``experiments/`` and ``callbacks/``
free of ``keras.src``, ``tensorflow.python`` and private members of objects that are not their
own). Every touch was checked on Keras 3.15.1 with TensorFlow 2.21. The one private member of
another library, gin's registry, is here too, so that one file lists every private touch.

Touches, and why no public API does the job:

- ``Layer._flatten_layers`` (``flatten_layers``): every layer of a model, nested ones included.
  ``model.layers`` lists direct children only, and a layer that holds sublayers as attributes
  (wrappers, custom blocks) exposes them through no public list; Keras 3 layers are not
  ``tf.Module``, so ``submodules`` does not exist either.
- ``Layer._get_own_losses`` (``forward_pass_losses``): the losses the last forward pass added
  (``add_loss``, activity regularizers). The public ``layer.losses`` also holds the weight
  regularizers' penalties, which the step adds once per update, not per micro-batch.
- ``keras.src.backend.get_keras_mask`` (``keras_mask``): the mask Keras attached to an output
  tensor (the ``_keras_mask`` attribute); ``keras.backend`` does not export it.
- ``model._compile_loss._flat_losses`` (``compiled_losses``, ``compiled_loss_weight``): the
  resolved loss objects of ``model.compile`` (a name such as ``"mse"`` resolved by Keras' own
  rules) and their ``loss_weights``; ``model.loss`` is only what the user passed, and Keras
  keeps the weights under no public name.
- ``model._compile_metrics`` (``compiled_metrics``): the container of the compiled metrics, to
  update them without reading their results (``compute_metrics`` reads every result) and to see
  which metrics were compiled; ``model.metrics`` mixes it with trackers and layer metrics.
- ``MeanMetricWrapper._fn`` (``wrapped_function``): the function a metric wrapper calls, to tell
  Keras' own metric functions from user ones (``LossFunctionWrapper`` has it public as ``fn``).
- ``Trainer._loss_tracker`` (``loss_tracker``): the mean that ``fit`` reports as ``loss``, which
  a custom ``train_step`` updates as Keras' own does. Public API reaches it only by its name in
  ``model.metrics``, which a compiled metric may share.
- ``Trainer._symbolic_build`` (``symbolic_build``): creates a model's, its compiled loss' and
  metrics' variables from the dataset's element spec, as ``model.fit`` does before its first
  call; variables created inside the first ``tf.function`` call on several replicas break the
  graph, and ``model.build`` builds neither the compiled loss nor the metrics.
- ``StrategyExtended._in_multi_worker_mode`` (``in_multi_worker_mode``): whether a strategy spans
  several workers, as each strategy itself decides (what Keras' own ``fit`` asks); the public
  ``cluster_resolver`` is None on most strategies, and its cluster spec would have to be
  counted per strategy the way each one counts its workers (a TPU pod is one worker).
- ``TensorBoard._should_trace`` (``tensorboard_profiles``): whether a Keras ``TensorBoard``
  profiles some batches; ``profile_batch`` is not stored publicly.
- ``TensorBoard._should_write_train_graph``, ``_log_epoch_metrics``, ``_collect_learning_rate``,
  ``_compute_steps_per_second``, ``_pop_writer`` (``EpochScalarsTensorBoard``): Keras'
  ``TensorBoard`` writes its per-epoch and evaluation scalars through eager ``tf.summary`` calls
  with no public hook to write them otherwise; the class redirects exactly those scalars and
  keeps the rest of Keras' callback.
- ``TensorBoard._prev_summary_state`` and ``_pop_writer`` (``release_summary_contexts``): the
  default writer and ``tf.summary.record_if`` a Keras ``TensorBoard`` with ``update_freq`` other
  than 'epoch' pushes in ``on_train_begin`` and pops only in ``on_train_end``; no public call
  pops them when training ends by an exception.
- ``keras.src.utils.naming.reset_uids`` (``reset_layer_names``): starts automatic layer names
  afresh for each run, so a checkpoint's variable names do not depend on the runs built before it
  in the process; the public ``keras.backend.clear_session`` also clears TensorFlow's kernel
  cache, which makes earlier runs' data iterators wait minutes when they are destroyed.
- ``Optimizer._velocities``, ``_velocity_hats``, ``_average_gradients``, ``_get_variable_index``
  (``second_moments``): the running second moments of Adam, AdamW, Nadam and RMSprop (AMSGrad's
  running maxima, centred RMSprop's mean gradients), for the
  preconditioned gradient noise scale (the optimizer's diagonal preconditioner); Keras keeps
  them under no public name.
- ``Optimizer._learning_rate`` (``learning_rate_object``): what the optimizer was given as its
  learning rate (a variable, a ``LearningRateSchedule`` or a callable), for AdaScale to wrap it
  (``engine.adascale``); the public ``learning_rate`` property gives only its current value.
- ``tensorflow.python.framework.config.is_op_determinism_enabled``
  (``op_determinism_enabled``): whether ``tf.config.experimental.enable_op_determinism`` was
  called in this process, where a graph may not read the clock (``tf.timestamp`` fails);
  TensorFlow exports the setter but not the getter. ``disable_op_determinism``
  (``set_op_determinism``): the switch back, unexported too, so that a run without
  ``deterministic_ops`` after one with it (a sweep, a study, a test session in one process)
  runs as it would in a fresh process.
- ``ProgbarLogger.progbar.target`` (``retarget_progress_bars``, Keras 3.15): the running
  progress bar and its total, undocumented attributes; a batch changed mid-epoch changes the
  epoch's count of updates, and the logger reads ``params['steps']`` only when an epoch begins.
- ``Layer._seed_generators`` (``distinct_replica_seeds``): the ``SeedGenerator`` objects a layer
  draws its randomness from (dropout masks, noise). Their state variables are mirrored, so on
  several replicas every replica draws the same numbers; batchlab offsets the seed each replica
  reads by its replica id. ``model.seed_generators`` does not exist in Keras 3.15.
- ``keras.src.losses.loss.squeeze_or_expand_to_same_rank`` (``same_rank``): the shape alignment
  Keras applies to ``y_true`` and ``y_pred`` before calling a plain loss function (a label of
  shape (n,) against an output of shape (n, 1)); without it the function broadcasts to (n, n).
  Keras exports neither it nor ``LossFunctionWrapper``, which applies it.
- ``gin.config._REGISTRY`` (``gin_selectors``, gin-config 0.5.0): every registered configurable's
  selector, to suggest the nearest name for a misspelt one; gin lists them nowhere publicly.
"""

import contextlib
import dataclasses
from typing import Optional

import gin
import keras
import tensorflow as tf
from keras.src import backend as _keras_backend
from keras.src.losses import loss as _keras_loss
from tensorflow.python.framework import config as _tf_config
from tensorflow.python.framework import ops as _tf_ops


def flatten_layers(model, include_self):
    """Every layer of ``model``, nested ones included (and ``model`` first if ``include_self``)."""
    return model._flatten_layers(include_self=include_self)  # pylint: disable=protected-access


def own_metrics(layer):
    """The metrics a layer tracks itself (updated in its forward pass), not the compiled ones."""
    return list(getattr(layer, "_metrics", None) or ())  # pylint: disable=protected-access


def graph_nodes(layer):
    """How many times ``layer`` was called on a functional graph (its inbound nodes)."""
    return len(getattr(layer, "_inbound_nodes", None) or ())  # pylint: disable=protected-access


def forward_pass_losses(model):
    """The losses that the last forward pass of ``model`` added, in every layer (``add_loss``,
    activity regularizers), without the weight regularizers' penalties."""
    losses = []
    for layer in flatten_layers(model, include_self=True):
        losses.extend(layer._get_own_losses())  # pylint: disable=protected-access
    return losses


def keras_mask(tensor):
    """The mask Keras attached to ``tensor`` (None when it has none)."""
    return _keras_backend.get_keras_mask(tensor)


def same_rank(y_true, y_pred):
    """``(y_true, y_pred)`` aligned as Keras aligns them before a plain loss function: a
    trailing axis of 1 squeezed, or a rank-1 tensor expanded, when their ranks differ by one."""
    return _keras_loss.squeeze_or_expand_to_same_rank(y_true, y_pred)


def compiled_losses(model):
    """The loss objects ``model.compile`` resolved, one per output (empty before they are built
    or without a compiled loss); an entry is None for an output without a loss."""
    compiled = getattr(model, "_compile_loss", None)
    entries = getattr(compiled, "_flat_losses", None) or []
    return [getattr(entry, "loss", entry) for entry in entries]


def compiled_loss_weight(model):
    """The weight ``compile(loss_weights=...)`` gave a one-output model's loss, as Keras resolved
    it (None before the compiled loss is built, without a weight, or with several losses)."""
    compiled = getattr(model, "_compile_loss", None)
    entries = [entry for entry in getattr(compiled, "_flat_losses", None) or []
               if entry is not None]
    if len(entries) != 1:
        return None
    weight = getattr(entries[0], "weight", None)
    return None if weight is None else float(weight)


def compiled_metrics(model):
    """The container of ``model``'s compiled metrics (a Keras metric with ``update_state``,
    ``built`` and ``metrics``), or None when none were compiled."""
    return getattr(model, "_compile_metrics", None)


def wrapped_function(loss_or_metric):
    """The function a Keras loss or metric wrapper calls, or None when it wraps none."""
    return getattr(loss_or_metric, "_fn", None) or getattr(loss_or_metric, "fn", None)


def loss_tracker(model):
    """The ``keras.metrics.Mean`` named ``loss`` that ``fit`` reports (None before ``compile``)."""
    return getattr(model, "_loss_tracker", None)


def symbolic_build(model, element_spec):
    """Creates the variables of ``model``, its compiled loss and metrics from ``element_spec``
    (a dataset's), as ``model.fit`` does before its first call."""
    model._symbolic_build(data_batch=element_spec)  # pylint: disable=protected-access


def in_multi_worker_mode(strategy):
    """Whether ``strategy`` runs on several workers."""
    return strategy.extended._in_multi_worker_mode()  # pylint: disable=protected-access


def tensorboard_profiles(callback):
    """Whether a ``keras.callbacks.TensorBoard`` profiles some batches (``profile_batch``); True
    when the callback does not say, so that callers keep its per-batch hooks."""
    return bool(getattr(callback, "_should_trace", True))


def retarget_progress_bars(callback_list, steps):
    """Sets the total of the running Keras progress bar (``ProgbarLogger.progbar.target``) of
    ``callback_list`` to ``steps``: the logger builds its bar once per epoch from the epoch's
    first count of updates, and a batch changed mid-epoch changes that count."""
    for callback in callback_list.callbacks:
        if isinstance(callback, keras.callbacks.ProgbarLogger) and callback.progbar is not None:
            callback.progbar.target = steps


def reset_layer_names():
    """Starts Keras' automatic layer names afresh (``dense``, not ``dense_3`` for the second
    model a process builds): ``keras.src.utils.naming.reset_uids``, the counter reset that
    ``keras.backend.clear_session`` does besides clearing TensorFlow's caches."""
    from keras.src.utils import naming  # noqa: PLC0415

    naming.reset_uids()


def gin_selectors():
    """The selector of every configurable registered with gin (``module.name``)."""
    return [selector for selector, _ in gin.config._REGISTRY.items()]  # pylint: disable=W0212


class EpochScalarsTensorBoard(keras.callbacks.TensorBoard):
    """``keras.callbacks.TensorBoard`` whose per-epoch scalars (``epoch_*``, the learning rate and
    steps per second included) and evaluation scalars (``evaluation_*_vs_iterations``) go to
    ``write_scalars`` instead of eager ``tf.summary.scalar`` calls: the same tags, steps and
    subdirectories (``train``, ``validation``). Histograms, images, graphs, profiling and
    per-batch scalars are Keras' own. Subclasses define ``write_scalars``."""

    def write_scalars(self, values, step, subdir):
        """Writes ``{tag: float}`` at ``step`` under ``log_dir/subdir``."""
        raise NotImplementedError

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        optimizer = getattr(self.model, "optimizer", None)
        self._batch_scalars_at = 0 if optimizer is None else int(optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        # Again here: a resumed run restores its update count after ``on_train_begin``, which
        # would otherwise see update 0 and write ``batch_*`` at the first call's end.
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            self._batch_scalars_at = int(optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        """Keras writes ``batch_*`` scalars after every call even with ``update_freq='epoch'``,
        where no writer is set and they are dropped: skipped then, unless the callback profiles
        or still has to write the train graph. With ``update_freq = N`` they go to
        ``write_scalars`` keyed by the update count (Keras keys them by its count of calls since
        this ``fit`` began: a resumed run would start again at 1, and a call may hold several
        updates), after each call that reaches a multiple of N."""
        if (self.update_freq == "epoch" and not self.write_steps_per_second
                and not tensorboard_profiles(self)
                and not getattr(self, "_should_write_train_graph", True)):
            return
        if self.update_freq == "epoch" or not isinstance(logs, dict):
            super().on_train_batch_end(batch, logs)
            return
        super().on_train_batch_end(batch, None)  # the graph, profiling, steps per second
        update = int(self.model.optimizer.iterations.numpy())
        previous, self._batch_scalars_at = self._batch_scalars_at, update
        if update // self.update_freq > previous // self.update_freq:  # (Cadence.crossed)
            self.write_scalars({f"batch_{k}": float(v) for k, v in logs.items()}, update,
                               "train")

    def _log_epoch_metrics(self, epoch, logs):
        """Keras' own, with ``write_scalars`` in place of its writers (called by
        ``on_epoch_end``, before histograms and embeddings)."""
        if not logs:
            return
        train_logs = {k: v for k, v in logs.items() if not k.startswith("val_")}
        val_logs = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        train_logs = self._collect_learning_rate(train_logs)
        scaling = getattr(self.model, "learning_rate_scaling", None)
        if scaling is not None and "learning_rate" in train_logs:
            # Under AdaScale the optimizer's rate reads lr(tau + r) * r after an update, a rate
            # no update applied: the last update's own rate instead.
            train_logs["learning_rate"] = scaling.applied_learning_rate()
        if self.write_steps_per_second:
            train_logs["steps_per_second"] = self._compute_steps_per_second()
        self.write_scalars({f"epoch_{k}": v for k, v in train_logs.items()}, epoch, "train")
        self.write_scalars({f"epoch_{k}": v for k, v in val_logs.items()}, epoch, "validation")

    def on_test_end(self, logs=None):
        """Keras' own, with ``write_scalars`` in place of its validation writer; the step is the
        optimizer's update count."""
        optimizer = self.model.optimizer
        if optimizer is not None and hasattr(optimizer, "iterations") and logs:
            self.write_scalars({f"evaluation_{k}_vs_iterations": v for k, v in logs.items()},
                               int(optimizer.iterations.numpy()), "validation")
        self._pop_writer()


def release_summary_contexts(callback):
    """Exits what a Keras ``TensorBoard`` pushed for its per-batch summaries when training ended
    by an exception (``on_train_end`` never ran): left pushed, its ``record_if`` keeps deciding
    every later ``tf.summary`` write of the thread, so the next run in the process (a sweep's next
    variant, a relaunch) lost its notes and its HParams session. A no-op for other callbacks."""
    while getattr(callback, "_prev_summary_state", None):
        callback._pop_writer()  # pylint: disable=protected-access


# Optimizers whose update divides by a function of the second moment, and which one (Keras 3):
# Adam, AdamW: alpha_t m / (sqrt(v) + eps) with alpha_t = lr sqrt(1 - beta_2^t) / (1 - beta_1^t)
# (v the running maximum with amsgrad); Nadam: m_hat / (sqrt(v / (1 - beta_2^t)) + eps);
# RMSprop: g / sqrt(v + eps), centred g / sqrt(v - mean(g)^2 + eps).
_SECOND_MOMENT_OPTIMIZERS = {"Adam": "adam", "AdamW": "adam", "Nadam": "nadam",
                             "RMSprop": "rmsprop"}


def has_second_moments(optimizer):
    """Whether ``second_moments`` knows this optimizer's second moments."""
    return type(optimizer).__name__ in _SECOND_MOMENT_OPTIMIZERS


@dataclasses.dataclass(frozen=True)
class SecondMoments:
    """What an adaptive optimizer divides its step by: ``form`` ('adam', 'nadam' or 'rmsprop',
    see ``_SECOND_MOMENT_OPTIMIZERS``), the per-variable second moments (AMSGrad's running
    maxima when it is on), ``beta_2`` (None for RMSprop), ``epsilon``, and the centred
    RMSprop's mean gradients (else None)."""

    form: str
    velocities: list
    beta_2: Optional[float]
    epsilon: float
    averages: Optional[list]


def second_moments(optimizer, variables):
    """``SecondMoments`` of ``optimizer`` for ``variables``, or None for an optimizer without
    them (SGD). Builds the optimizer if it is not yet built."""
    form = _SECOND_MOMENT_OPTIMIZERS.get(type(optimizer).__name__)
    if form is None:
        return None
    if not optimizer.built:
        optimizer.build(variables)
    index = [optimizer._get_variable_index(v) for v in variables]
    moments = optimizer._velocity_hats if getattr(optimizer, "amsgrad", False) \
        else optimizer._velocities
    averages = None
    if getattr(optimizer, "centered", False):
        averages = [optimizer._average_gradients[i] for i in index]
    beta_2 = None if form == "rmsprop" else float(optimizer.beta_2)
    return SecondMoments(form, [moments[i] for i in index], beta_2, float(optimizer.epsilon),
                         averages)


CLIPPING = ("clipnorm", "global_clipnorm", "clipvalue")


def clips_gradients(optimizer):
    """Whether the optimizer clips the gradients it applies (``clipnorm``, ``global_clipnorm``
    or ``clipvalue``)."""
    return any(getattr(optimizer, name, None) for name in CLIPPING)


def clip_gradients(optimizer, grads):
    """The optimizer's own clipping of ``grads`` (``_clip_gradients``: what ``apply`` does)."""
    return optimizer._clip_gradients(list(grads))


def _gradient_registry():
    """TensorFlow's process-wide registry of gradient functions ({} where it is not found)."""
    registry = getattr(getattr(_tf_ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else {}


def _custom_gradient_names():
    """The names the registry holds for ``tf.custom_gradient`` functions traced in graphs
    (``CustomGradient-<n>``)."""
    return {name for name in _gradient_registry() if str(name).startswith("CustomGradient-")}


@contextlib.contextmanager
def released_custom_gradients():
    """Removes, when the block ends, the ``tf.custom_gradient`` functions registered while it
    ran. Every traced train step registers one (the optimizer's all-reduce is a custom gradient,
    also on one device) and nothing removes it: it holds that run's whole traced graph for the
    life of the process (a study worker trains many runs in one process; BUILD.md, "Stop 35"
    has the memory). Nothing differentiates a finished run's graphs."""
    before = _custom_gradient_names()
    try:
        yield
    finally:
        registry = _gradient_registry()
        for name in _custom_gradient_names() - before:
            registry.pop(name, None)


def custom_gradient_count():
    """How many ``tf.custom_gradient`` functions the gradient registry holds (for tests)."""
    return len(_custom_gradient_names())


def learning_rate_object(optimizer):
    """The optimizer's learning rate as given: its variable, schedule or callable."""
    return optimizer._learning_rate


def op_determinism_enabled():
    """Whether op determinism is on in this process (no clock inside a graph then)."""
    return bool(_tf_config.is_op_determinism_enabled())


def set_op_determinism(enabled):
    """Turns op determinism on or off in this process, so that a run's ``deterministic_ops``
    holds for that run and not for the runs this process trains after it."""
    if enabled:
        _tf_config.enable_op_determinism()
    else:
        _tf_config.disable_op_determinism()


# Multiplier of the replica id in the first seed component: a replica's stream of random numbers
# is that of another initial seed, far from any seed of a neighbouring generator.
_REPLICA_SEED_STRIDE = 1000003


def distinct_replica_seeds(model):
    """Makes every replica draw its own random numbers from ``model``'s seed generators.

    Keras' ``SeedGenerator`` keeps its state in a variable, which a distribution strategy mirrors:
    each replica reads the same state, so row i of every replica's share gets the same dropout
    mask, and a batch on R replicas has R times fewer independent masks than on one device (its
    replicas' gradients are then correlated, which also biases a noise scale estimated from them).
    Each generator's ``next`` is wrapped so that the seed it returns in a replica context is
    offset by that replica's id (global over the workers); the state variable advances as before,
    identically on every replica, so checkpoints and exact resume are unchanged. Outside a
    replica context, or with one replica, the seed is Keras' own. Idempotent.
    """
    for layer in flatten_layers(model, include_self=True):
        generators = getattr(layer, "_seed_generators", None) or ()  # pylint: disable=W0212
        for generator in generators:
            if getattr(generator, "_batchlab_per_replica", False):
                continue
            keras_next = generator.next

            def per_replica_next(ordered=True, keras_next=keras_next):
                seed = keras_next(ordered)
                context = tf.distribute.get_replica_context()
                if context is None or context.num_replicas_in_sync == 1:
                    return seed
                replica = tf.cast(context.replica_id_in_sync_group, seed.dtype)
                return seed + tf.stack([replica * _REPLICA_SEED_STRIDE,
                                        tf.zeros((), seed.dtype)])

            generator.next = per_replica_next
            generator._batchlab_per_replica = True  # pylint: disable=protected-access
