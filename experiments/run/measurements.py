"""Which measurements a run publishes to TensorBoard: gin factories called with a run context.

A run lists factories in ``measurements.enabled``, and sets the shared settings beside them::

    measurements.enabled = [@measurements.gradient_norms, @measurements.generalization_gap,
                            @measurements.weight_distance, @measurements.gradient_noise_scale,
                            @measurements.sharpness, @measurements.throughput]
    measurements.every_n_updates = 25        # logging cadence of per-update measurements
    measurements.gap_subset_size = 512       # rows of the fixed training subset
    measurements.sharpness.epsilon = 5e-4

The runner builds a ``MeasurementContext`` (TensorBoard directory, run directory, a fixed training
subset, validation data, the run's ``BatchLayout``, the settings), calls every factory once without effects
(``check``: bad settings fail before a run directory exists), then again with the run's
directories once the model exists (``build``). A factory returns a Keras callback, or None when
its measurement does not apply to this run (it logs why): so one list serves every run. Each
factory's own settings are gin parameters (``measurements.gradient_norms.per_layer = False``).
``measurements.enabled = None`` (the default) means ``DEFAULT``: the cheap ones, plus the gradient
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
from callbacks.noise_scale_probe import NoiseScaleProbe
from callbacks.gradient_norm import GradientNorm
from callbacks.hparams import HParamsLogger
from callbacks.periodic_evaluation import PeriodicEvaluation
from callbacks.sharpness import Sharpness
from callbacks.throughput import Throughput
from callbacks.weight_distance import WeightDistance
from experiments.common import checks
from experiments.inputs.layout import BatchLayout


@dataclasses.dataclass(frozen=True)
class MeasurementSettings:
    """The run's measurement settings (gin: ``measurements.*``); see ``measurements``."""

    enabled: tuple
    every_n_updates: int
    gap_subset_size: Optional[int]
    track_gradient_noise: Optional[bool]


@gin.configurable("measurements")
def measurement_settings(enabled=None, every_n_updates=25, gap_subset_size=512,
                         track_gradient_noise=None, also=()):
    """Checked measurement settings.

    Args:
      enabled: measurement factories, e.g. ``[@measurements.gradient_norms,
        @measurements.sharpness]``; None: ``DEFAULT``; ``[]``: none.
      every_n_updates: logging cadence (updates) of the per-update measurements (and each
        epoch's last update); the train step fills the gradient norms at this cadence too. 25
        keeps the default set within issue 19's cost targets on the smallest workload, the
        digits MLP (BUILD.md, "Stop 35", has what a logged point costs); set 10 or 1 for finer
        curves.
      gap_subset_size: rows of the fixed training subset used by the generalization gap and
        sharpness (None: the whole training set).
      track_gradient_noise: let the train step collect what the gradient noise scale needs; None:
        on when k > 1 (independent micro-batches) and the noise scale is enabled.
      also: factories added to ``enabled`` without restating it (a study adds
        ``@measurements.validation_curve`` and ``@measurements.hparams`` to every run this way,
        whatever the base experiment enables).
    """
    if track_gradient_noise is not None and not isinstance(track_gradient_noise, bool):
        raise ValueError("measurements.track_gradient_noise must be True, False or None, got "
                         f"{track_gradient_noise!r}.")
    enabled = resolve(enabled)
    return MeasurementSettings(
        enabled=_with_also(enabled, resolve(list(also or ()))),
        every_n_updates=checks.positive_int(every_n_updates, "measurements.every_n_updates"),
        gap_subset_size=checks.optional_positive_int(gap_subset_size,
                                                     "measurements.gap_subset_size"),
        track_gradient_noise=track_gradient_noise)


def _with_also(enabled, also):
    """``enabled`` plus ``also`` (those not already listed), before ``throughput`` so that its
    epoch time keeps covering every measurement."""
    extra = tuple(f for f in also if f not in enabled)
    if throughput in enabled:
        at = enabled.index(throughput)
        return enabled[:at] + extra + enabled[at:]
    return enabled + extra


@dataclasses.dataclass(frozen=True)
class MeasurementContext:
    """What a measurement factory may use about the run.

    Attributes:
      layout: the run's ``BatchLayout`` (B, b, k, eval batch, examples per epoch, streams).
      every_n_updates: the run's logging cadence for per-update measurements.
      track_gradient_noise: whether the model records micro-batch gradient norms.
      train_subset: a fixed, seeded (x, y) sample of the training set
        (``measurements.gap_subset_size`` rows); for data that only comes as a pipeline (stateful
        streams), a ``tf.data.Dataset`` of its first batches; None when neither exists.
      validation_data: (x, y) of the validation set, or None.
      validation_stream: stream data's held-out pipeline (windows of the S streams), else None:
        the validation curve evaluates it; measurements that need arrays do not.
      seed: the run's seed.
      log_dir: the run's TensorBoard directory (None: keep values in memory only).
      run_dir: the run directory.
      dry_run: the factories are only called to check their settings (``check``): build, but log
        and write nothing.
      num_replicas: replicas the strategy trains on (each one's share of a batch is a piece
        of the gradient noise scale).
      train_arrays: (x, y) of the whole training set when it comes as arrays, else None.
    """

    layout: BatchLayout
    every_n_updates: int
    track_gradient_noise: bool
    train_subset: Any = None
    validation_data: Any = None
    validation_stream: Any = None
    seed: int = 0
    log_dir: Optional[str] = None
    run_dir: Optional[str] = None
    dry_run: bool = False
    num_replicas: int = 1
    train_arrays: Any = None


def make_context(data, pipelines, layout, settings, track_gradient_noise, seed, num_replicas=1):
    """The context of a run from its ``Data``, ``Pipelines``, layout and settings."""
    subset_size = settings.gap_subset_size
    subset = None
    if data.x_train is not None:
        subset = fixed_subset(data.x_train, data.y_train, subset_size, seed)
    elif pipelines is not None:
        # The first batches of the training pipeline (in order: streams stay continuous).
        batches = pipelines.steps_per_epoch if subset_size is None \
            else -(-subset_size // layout.batch_size)
        subset = pipelines.train.take(max(1, min(batches, pipelines.steps_per_epoch)))
    validation = (data.x_validation, data.y_validation) if data.num_validation else None
    held_out = None
    if data.stream is not None and pipelines is not None:
        # The held-out streams, batched in windows as the epoch's validation reads them (the
        # model's state carried window to window, isolated from training's).
        held_out = pipelines.validation
    return MeasurementContext(
        layout=layout, every_n_updates=settings.every_n_updates,
        track_gradient_noise=bool(track_gradient_noise), train_subset=subset,
        validation_data=validation, validation_stream=held_out, seed=seed,
        num_replicas=num_replicas,
        train_arrays=None if data.x_train is None else (data.x_train, data.y_train))


def _every(value, binding, context):
    return context.every_n_updates if value is None else checks.positive_int(value, binding)


# ----------------------------------------------------------------------------------------------
# Factories.

@gin.configurable(module="measurements")
def gradient_norms(context, every_n_updates=None, per_layer=True, update_ratio=True):
    """Global and per-layer gradient norms, update-to-weight ratios (``gradients/*``,
    ``update_ratio/*``). ``every_n_updates`` None: ``measurements.every_n_updates``."""
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
                             log_dir=context.log_dir, batch_size=context.layout.eval_batch_size)


@gin.configurable(module="measurements")
def gradient_noise_scale(context, every_n_updates=None, horizon_examples=4096,
                         sample_every_n_updates=None):
    """B_simple (McCandlish et al. 2018) from the pieces of each update (k micro-batches, or
    each replica's share); None with a single piece. ``every_n_updates`` None:
    ``measurements.every_n_updates``; each logged update is sampled (raw estimates logged). The
    train step keeps moving averages over ``horizon_examples`` examples; a sample costs k + 1
    passes over the gradients there, so ``sample_every_n_updates`` (extra samples between the
    logged updates; None: none) trades time for the averages' variance."""
    every = _every(every_n_updates, "measurements.gradient_noise_scale.every_n_updates", context)
    checks.positive_number(horizon_examples, "measurements.gradient_noise_scale.horizon_examples")
    note = None
    if context.layout.time_windows:  # first: k = 1's advice (a smaller micro-batch) fails there
        note = STREAM_NOTE
    elif context.layout.largest_num_micro_batches <= 1 and context.num_replicas < 2:
        note = UNDEFINED_NOTE
    if note is not None:
        if not context.dry_run:
            logging.info(note)
            summary_writer.text(context.log_dir, "noise_scale/note", note)
        return None
    if not context.track_gradient_noise:
        raise ValueError(
            "measurements.gradient_noise_scale needs the micro-batch gradient norms: set "
            "measurements.track_gradient_noise = True (or leave it None, which turns it on when "
            "an update has two or more pieces: k > 1, or several replicas).")
    checks.optional_positive_int(sample_every_n_updates,
                                 "measurements.gradient_noise_scale.sample_every_n_updates")
    return GradientNoiseScale(context.log_dir, every_n_updates=every,
                              horizon_examples=horizon_examples,
                              sample_every_n_updates=sample_every_n_updates)


gradient_noise_scale.needs_gradient_noise = True


@gin.configurable(module="measurements")
def noise_scale_probe(context, sizes=None, num_draws=100, every_n_updates=None, at_end=True,
                      level=0.95):
    """B_simple at fixed weights with its interval (``callbacks.noise_scale_probe``; opt-in:
    each probe costs ``num_draws x sum(sizes)`` rows forward and backward). ``sizes`` None:
    b, 4b, 16b with b the micro-batch (B/4 when the batch is not split)."""
    if context.train_arrays is None:
        raise ValueError("measurements.noise_scale_probe draws rows from the training arrays; "
                         "this data source has none (stream data).")
    if sizes is None:
        layout = context.layout
        base = layout.micro_batch_size if layout.num_micro_batches > 1 \
            else max(1, layout.batch_size // 4)
        sizes = (base, 4 * base, 16 * base)
    if not isinstance(sizes, (list, tuple)):
        raise ValueError(f"measurements.noise_scale_probe.sizes must be a list of batch sizes, "
                         f"got {sizes!r}.")
    return NoiseScaleProbe(context.train_arrays, sizes=tuple(sizes), num_draws=num_draws,
                           every_n_updates=every_n_updates, at_end=at_end, level=level,
                           seed=context.seed, log_dir=context.log_dir)
STREAM_NOTE = (
    "The gradient noise scale is not measured on stream data: the micro-batches of an update are "
    "consecutive time windows of the same streams, not independent samples.")


@gin.configurable(module="measurements")
def sharpness(context, epsilon=1e-3, projection_dim=None, max_iterations=10, subset_size=None,
              tag="sharpness"):
    """Keskar sharpness at the end of training on the fixed training subset (opt-in).

    ``projection_dim`` None: the full space (A = identity); p: a random p-dimensional subspace
    (Keskar et al. use p = 100). ``subset_size`` None: the whole fixed subset
    (``measurements.gap_subset_size`` rows); else its first ``subset_size`` rows.
    """
    if context.train_subset is None or not isinstance(context.train_subset, tuple):
        raise ValueError(
            "measurements.sharpness needs training arrays for its fixed subset; this data source "
            "only gives a pipeline. Remove @measurements.sharpness from measurements.enabled.")
    checks.positive_number(epsilon, "measurements.sharpness.epsilon")
    checks.optional_positive_int(projection_dim, "measurements.sharpness.projection_dim")
    checks.positive_int(max_iterations, "measurements.sharpness.max_iterations")
    x, y = context.train_subset
    if checks.optional_positive_int(subset_size, "measurements.sharpness.subset_size"):
        x, y = x[:subset_size], y[:subset_size]
    return Sharpness((x, y), log_dir=context.log_dir, epsilon=float(epsilon),
                     projection_dim=projection_dim, max_iterations=max_iterations,
                     batch_size=context.layout.eval_batch_size, seed=context.seed, tag=tag)


@gin.configurable(module="measurements")
def weight_distance(context, every_n_updates=None, per_layer=True):
    """||w - w_0|| (Hoffer et al. 2017) at epoch ends and every ``every_n_updates`` updates
    (None: ``measurements.every_n_updates``)."""
    every = _every(every_n_updates, "measurements.weight_distance.every_n_updates", context)
    return WeightDistance(context.log_dir, every_n_updates=every, per_layer=per_layer)


@gin.configurable(module="measurements")
def throughput(context):
    """Examples/s, updates/s, seconds per epoch, peak memory. Keep it last in the list so that
    ``throughput/epoch_seconds`` includes the other measurements' end-of-epoch work."""
    return Throughput(context.log_dir, examples_per_epoch=context.layout.examples_per_epoch,
                      batch_size=context.layout.batch_size,
                      rows_trained=context.layout.rows_trained)


@gin.configurable(module="measurements")
def validation_curve(context, every_n_updates=None):
    """The validation metrics every ``every_n_updates`` updates and at the end
    (``validation_curve/*``; result.json ``measurements["curve"]``): steps to result.
    ``every_n_updates`` None: ``measurements.every_n_updates``."""
    every = _every(every_n_updates, "measurements.validation_curve.every_n_updates", context)
    validation = context.validation_data
    if validation is None:
        validation = context.validation_stream
    if validation is None:
        if not context.dry_run:
            logging.info("Validation curve not measured: this run has no validation data.")
        return None
    return PeriodicEvaluation(validation, every_n_updates=every,
                              log_dir=context.log_dir, batch_size=context.layout.eval_batch_size)


@gin.configurable("hparams", module="measurements")
def hparams_logger(context, values=gin.REQUIRED):
    """This run's hyperparameters ``values`` ({name: value}) and final metrics for the
    TensorBoard HParams dashboard, written into the run's TensorBoard directory."""
    if not isinstance(values, dict) or not values:
        raise ValueError(f"measurements.hparams.values must be a non-empty dict of name: value, "
                         f"got {values!r}.")
    return HParamsLogger(context.log_dir, values)


DEFAULT = (gradient_norms, generalization_gap, weight_distance, gradient_noise_scale, throughput)


# ----------------------------------------------------------------------------------------------
# What the runner calls.

def resolve(factories):
    """Checks ``measurements.enabled`` (None: ``DEFAULT``); returns the factories as a tuple."""
    if factories is None:
        return DEFAULT
    if not isinstance(factories, (list, tuple)):
        raise ValueError(
            "measurements.enabled must be a list of measurement factories such as "
            f"[@measurements.gradient_norms, @measurements.sharpness], got {factories!r}.")
    for factory in factories:
        if not callable(factory) or isinstance(factory, type):
            raise ValueError(
                f"measurements.enabled contains {factory!r}, which is not a measurement factory: "
                "write @measurements.<name> without parentheses (the runner calls it with the "
                "run's context).")
    return tuple(factories)


def needs_gradient_noise(factories):
    """Whether a listed factory reads the micro-batch gradient norms."""
    return any(getattr(f, "needs_gradient_noise", False) for f in factories)


def track_gradient_noise(settings, layout, num_replicas=1):
    """``measurements.track_gradient_noise``: None means on when an update has two or more
    independent pieces (k > 1 micro-batches, not stream windows, or several replicas) and an
    enabled factory needs it."""
    if settings.track_gradient_noise is None:
        return (layout.largest_num_micro_batches > 1 or num_replicas > 1) \
            and not layout.time_windows \
            and needs_gradient_noise(settings.enabled)
    return settings.track_gradient_noise


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


def per_measurement(callbacks):
    """Each measurement's result (``result()``), in order: what a checkpoint keeps of them."""
    return [dict(c.result()) if hasattr(c, "result") else {} for c in callbacks]


def results(callbacks, restored=None):
    """The final values of every measurement, for the run's result.json. ``restored``: the
    per-measurement results saved with the checkpoint a run resumed from; a measurement that has
    nothing of its own in this process (the run resumed after its last logged point) reports
    those, as the uninterrupted run would."""
    merged = {}
    for index, values in enumerate(per_measurement(callbacks)):
        if not values and restored and index < len(restored):
            values = restored[index]
        merged.update(values)
    return merged
