"""Which measurements a run publishes to TensorBoard: gin factories called with a run context.

A run lists factories in ``train.measurements``::

    train.measurements = [@measurements.gradient_norms, @measurements.generalization_gap,
                          @measurements.weight_distance, @measurements.gradient_noise_scale,
                          @measurements.sharpness, @measurements.throughput]
    measurements.sharpness.epsilon = 5e-4

The runner builds a ``MeasurementContext`` (TensorBoard directory, run directory, a fixed training
subset, validation data, batch sizes, logging frequency), calls every factory once without effects
(``check``: bad settings fail before a run directory exists), then again with the run's
directories once the model exists (``build``). A factory returns a Keras callback, or None when
its measurement does not apply to this run (it logs why): so one list serves every run. Each
factory's own settings are gin parameters (``measurements.gradient_norms.per_layer = False``).
``train.measurements = None`` (the default) means ``DEFAULT``: the cheap ones, plus the gradient
noise scale, which switches itself on only when the virtual batch is split (k > 1). Sharpness is
opt-in (about a dozen passes over the subset at the end). The callbacks are usable without gin in
a plain ``model.fit``; see ``callbacks/`` and ``docs/measurement.md`` (tag names).
"""

import dataclasses
from typing import Any, Optional

import gin
from absl import logging

from callbacks import summary_writer
from callbacks.generalization_gap import GeneralizationGap, fixed_subset
from callbacks.gradient_noise_scale import UNDEFINED_NOTE, GradientNoiseScale
from callbacks.gradient_norm import GradientNorm
from callbacks.sharpness import Sharpness
from callbacks.throughput import Throughput
from callbacks.weight_distance import WeightDistance


@dataclasses.dataclass(frozen=True)
class MeasurementContext:
    """What a measurement factory may use about the run.

    Attributes:
      log_dir: the run's TensorBoard directory (None: keep values in memory only).
      run_dir: the run directory.
      train_subset: a fixed, seeded (x, y) sample of the training set (``train.gap_subset_size``
        rows); for data that only comes as a pipeline (stateful streams), a ``tf.data.Dataset`` of
        its first batches (about ``train.gap_subset_size`` rows); None when neither exists.
      validation_data: (x, y) of the validation set, or None.
      batch_size: the virtual batch B (rows per update).
      micro_batch_size: b, or None when the batch is not split.
      num_micro_batches: k = B / b (1 when not split).
      eval_batch_size: batch size for evaluations.
      examples_per_epoch: training examples per epoch, when known.
      every_n_updates: the run's logging frequency for per-update measurements
        (``train.gradient_norm_every``).
      track_gradient_noise: whether the model records micro-batch gradient norms.
      seed: the run's seed.
      time_windows: the micro-batches are consecutive time windows of the same streams
        (stateful stream data), not independent rows.
      dry_run: the factories are only called to check their settings (``check``): build, but log
        and write nothing.
    """

    log_dir: Optional[str]
    run_dir: Optional[str]
    train_subset: Any
    validation_data: Any
    batch_size: int
    micro_batch_size: Optional[int]
    num_micro_batches: int
    eval_batch_size: int
    examples_per_epoch: Optional[int]
    every_n_updates: int
    track_gradient_noise: bool
    seed: int = 0
    time_windows: bool = False
    dry_run: bool = False


def make_context(data, log_dir, run_dir, batch_size, micro_batch_size, num_micro_batches,
                 eval_batch_size, subset_size, every_n_updates, track_gradient_noise, seed,
                 time_windows=False, pipelines=None):
    """The context of a runner run from its ``experiments.data.Data`` (and ``Pipelines``)."""
    _positive_int(every_n_updates, "train.gradient_norm_every")
    if subset_size is not None:
        _positive_int(subset_size, "train.gap_subset_size")
    subset = None
    if data.x_train is not None:
        subset = fixed_subset(data.x_train, data.y_train, subset_size, seed)
    elif pipelines is not None:
        # The first batches of the training pipeline (in order: streams stay continuous).
        rows = pipelines.batch_size or batch_size
        batches = pipelines.steps_per_epoch if subset_size is None else -(-subset_size // rows)
        subset = pipelines.train.take(max(1, min(batches, pipelines.steps_per_epoch)))
    validation = (data.x_validation, data.y_validation) if data.num_validation else None
    return MeasurementContext(
        log_dir=log_dir, run_dir=run_dir, train_subset=subset, validation_data=validation,
        batch_size=batch_size, micro_batch_size=micro_batch_size,
        num_micro_batches=num_micro_batches, eval_batch_size=eval_batch_size or batch_size,
        examples_per_epoch=data.num_train, every_n_updates=every_n_updates,
        track_gradient_noise=bool(track_gradient_noise), seed=seed,
        time_windows=bool(time_windows))


def _positive_int(value, binding):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{binding} must be a positive integer, got {value!r}.")
    return value


def _every(value, binding, context):
    return context.every_n_updates if value is None else _positive_int(value, binding)


# ----------------------------------------------------------------------------------------------
# Factories.

@gin.configurable(module="measurements")
def gradient_norms(context, every_n_updates=None, per_layer=True, update_ratio=True):
    """Global and per-layer gradient norms, update-to-weight ratios (``gradients/*``,
    ``update_ratio/*``). ``every_n_updates`` None: ``train.gradient_norm_every``."""
    every = _every(every_n_updates, "measurements.gradient_norms.every_n_updates", context)
    return GradientNorm(context.log_dir, every_n_updates=every, per_layer=per_layer,
                        update_ratio=update_ratio)


@gin.configurable(module="measurements")
def generalization_gap(context):
    """Validation minus train (fixed subset, inference mode) per epoch and at the end."""
    if context.train_subset is None:
        if not context.dry_run:
            logging.info("Generalization gap not measured: no training data to take a fixed "
                         "subset from.")
        return None
    return GeneralizationGap(context.train_subset, context.validation_data,
                             log_dir=context.log_dir, batch_size=context.eval_batch_size)


@gin.configurable(module="measurements")
def gradient_noise_scale(context, every_n_updates=None, decay=0.99, sample_every_n_updates=1):
    """B_simple (McCandlish et al. 2018) from the k micro-batches of each update; None for k = 1.
    ``every_n_updates`` None: ``train.gradient_norm_every``. The train step keeps the moving
    averages (decay per sample); a sampled update costs k + 1 passes over the gradients there,
    so ``sample_every_n_updates`` > 1 makes the measurement cheaper on small micro-batches."""
    every = _every(every_n_updates, "measurements.gradient_noise_scale.every_n_updates", context)
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        raise ValueError(
            f"measurements.gradient_noise_scale.decay must be in [0, 1), got {decay!r}.")
    note = None
    if context.num_micro_batches <= 1:
        note = UNDEFINED_NOTE
    elif context.time_windows:
        note = STREAM_NOTE
    if note is not None:
        if not context.dry_run:
            logging.info(note)
            summary_writer.text(context.log_dir, "noise_scale/note", note)
        return None
    if not context.track_gradient_noise:
        raise ValueError(
            "measurements.gradient_noise_scale needs the micro-batch gradient norms: set "
            "train.track_gradient_noise = True (or leave it None, which turns it on when k > 1).")
    _positive_int(sample_every_n_updates,
                  "measurements.gradient_noise_scale.sample_every_n_updates")
    return GradientNoiseScale(context.log_dir, every_n_updates=every, decay=decay,
                              sample_every_n_updates=sample_every_n_updates)


gradient_noise_scale.needs_gradient_noise = True
STREAM_NOTE = (
    "The gradient noise scale is not measured on stream data: the micro-batches of an update are "
    "consecutive time windows of the same streams, not independent samples.")


@gin.configurable(module="measurements")
def sharpness(context, epsilon=1e-3, projection_dim=None, max_iterations=10, subset_size=None,
              tag="sharpness"):
    """Keskar sharpness at the end of training on the fixed training subset (opt-in).

    ``projection_dim`` None: the full space (A = identity); p: a random p-dimensional subspace
    (Keskar et al. use p = 100). ``subset_size`` None: the whole fixed subset
    (``train.gap_subset_size`` rows); else its first ``subset_size`` rows.
    """
    if context.train_subset is None or not isinstance(context.train_subset, tuple):
        raise ValueError(
            "measurements.sharpness needs training arrays for its fixed subset; this data source "
            "only gives a pipeline. Remove @measurements.sharpness from train.measurements.")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or epsilon <= 0:
        raise ValueError(f"measurements.sharpness.epsilon must be positive, got {epsilon!r}.")
    if projection_dim is not None:
        _positive_int(projection_dim, "measurements.sharpness.projection_dim")
    _positive_int(max_iterations, "measurements.sharpness.max_iterations")
    x, y = context.train_subset
    if subset_size is not None:
        _positive_int(subset_size, "measurements.sharpness.subset_size")
        x, y = x[:subset_size], y[:subset_size]
    return Sharpness((x, y), log_dir=context.log_dir, epsilon=float(epsilon),
                     projection_dim=projection_dim, max_iterations=max_iterations,
                     batch_size=context.eval_batch_size, seed=context.seed, tag=tag)


@gin.configurable(module="measurements")
def weight_distance(context, every_n_updates=None, per_layer=True):
    """||w - w_0|| (Hoffer et al. 2017) at epoch ends and every ``every_n_updates`` updates
    (None: ``train.gradient_norm_every``)."""
    every = _every(every_n_updates, "measurements.weight_distance.every_n_updates", context)
    return WeightDistance(context.log_dir, every_n_updates=every, per_layer=per_layer)


@gin.configurable(module="measurements")
def throughput(context):
    """Examples/s, updates/s, seconds per epoch, peak memory. Keep it last in the list so that
    ``throughput/epoch_seconds`` includes the other measurements' end-of-epoch work."""
    return Throughput(context.log_dir, examples_per_epoch=context.examples_per_epoch,
                      batch_size=context.batch_size)


DEFAULT = (gradient_norms, generalization_gap, weight_distance, gradient_noise_scale, throughput)


# ----------------------------------------------------------------------------------------------
# What the runner calls.

def resolve(factories):
    """Checks ``train.measurements`` (None: ``DEFAULT``) and returns the factories as a tuple."""
    if factories is None:
        return DEFAULT
    if not isinstance(factories, (list, tuple)):
        raise ValueError(
            "train.measurements must be a list of measurement factories such as "
            f"[@measurements.gradient_norms, @measurements.sharpness], got {factories!r}.")
    for factory in factories:
        if not callable(factory) or isinstance(factory, type):
            raise ValueError(
                f"train.measurements contains {factory!r}, which is not a measurement factory: "
                "write @measurements.<name> without parentheses (the runner calls it with the "
                "run's context).")
    return tuple(factories)


def needs_gradient_noise(factories):
    """Whether a listed factory reads the micro-batch gradient norms."""
    return any(getattr(f, "needs_gradient_noise", False) for f in factories)


def track_gradient_noise(setting, factories, num_micro_batches, time_windows=False):
    """``train.track_gradient_noise``: None means on when k > 1 (independent micro-batches, not
    stream windows) and a listed factory needs it."""
    if setting is None:
        return num_micro_batches > 1 and not time_windows and needs_gradient_noise(factories)
    if not isinstance(setting, bool):
        raise ValueError(f"train.track_gradient_noise must be True, False or None, got "
                         f"{setting!r}.")
    return setting


def check(factories, context):
    """Calls every factory once without effects, so that bad settings fail before a run starts."""
    build(factories, dataclasses.replace(context, log_dir=None, run_dir=None, dry_run=True))


def build(factories, context, log_dir=None, run_dir=None):
    """Calls each factory with ``context`` (with these directories); returns the callbacks
    (skipping None)."""
    if not factories:
        return []
    if log_dir is not None or run_dir is not None:
        context = dataclasses.replace(context, log_dir=log_dir, run_dir=run_dir)
    callbacks = []
    for factory in factories:
        callback = factory(context)
        if callback is not None:
            callbacks.append(callback)
    return callbacks


def results(callbacks):
    """The final values of every measurement callback, for the run's result.json."""
    merged = {}
    for callback in callbacks:
        if hasattr(callback, "result"):
            merged.update(callback.result())
    return merged
