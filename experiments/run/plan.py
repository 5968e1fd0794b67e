"""The plan of one run: everything resolved and checked before the run directory exists, and
the model it describes.

Order matters for honesty: the strategy is created first (multi-worker and logical devices must
exist before TensorFlow starts), then the data is loaded, the ``BatchLayout`` built and every
measurement setting checked, so bad input never leaves a directory that looks like a run.

The run's mode (``modes``) adjusts the settings once the layout is known, before the ``Plan`` is
built; a ``Plan`` is frozen: every part of a run reads the same one. ``build_model`` is here, not in
the runner, so that the micro-batch finder's probes build their model exactly as a run does.
"""

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from experiments.engine import distribute, keras_internals
from experiments.engine.virtual_batch_model import as_virtual_batch_model
from experiments.inputs import layout as layout_lib
from experiments.inputs import pipelines as pipelines_lib
from experiments.inputs.dataset import Data, Pipelines
from experiments.inputs.layout import BatchLayout
from experiments.run import measurements as measurements_lib
from experiments.run import seeding, stateful, steering
from experiments.run.settings import RunSettings


@dataclasses.dataclass(frozen=True)
class Plan:
    """A run's settings (as its mode adjusted them) with what was resolved from them."""

    mode: Any  # modes.RunMode
    settings: RunSettings
    strategy: tf.distribute.Strategy
    data: Data
    layout: BatchLayout
    pipelines: Pipelines
    track_gradient_noise: bool
    measurement_context: Any  # measurements.MeasurementContext


def build(settings, run_mode):
    """Resolves ``settings`` into a ``Plan`` for ``run_mode`` (a ``modes.RunMode``); raises before
    anything is written."""
    # Keras' automatic layer names start afresh: the names a model gets (and so the variable
    # names its checkpoints hold) do not depend on the runs this process built before. A sweep's
    # variant, resumed first in a relaunch, then finds its checkpoint's names. (Not
    # ``keras.backend.clear_session``: clearing TensorFlow's kernel cache while an earlier run's
    # data iterators still exist makes destroying them wait, for minutes at the process's exit.)
    keras_internals.reset_layer_names()
    strategy = distribute.resolve(settings.strategy)
    seeding.seed_everything(settings.seed, settings.deterministic_ops)
    set_dtype_policy(settings.model.dtype_policy)
    data_settings = settings.data
    data = data_settings.data_fn()
    layout = layout_lib.build(data, data_settings.batch_size, data_settings.micro_batch_size,
                              data_settings.eval_batch_size, data_settings.batch_size_schedule)
    settings = run_mode.adjust(settings, layout)  # e.g. a range test's epochs from its ramp
    _check_stages_reached(layout, settings.epochs)
    pipelines = pipelines_lib.make(data, layout, seed=settings.seed,
                                   shuffle=data_settings.shuffle)
    measured = settings.measurements
    replicas = strategy.num_replicas_in_sync
    track = measurements_lib.track_gradient_noise(measured, layout, replicas)
    if steering.needs_noise(settings, layout):  # AdaScale's gain or the adaptive batch
        steering.check_noise_available(settings, layout, replicas)
        track = True
    # fit.loop = 'keras' cannot change the batch while training: refused here, not mid-run
    distribute.fit(None, None, 0, (), strategy, check_only=True, controller=layout.adaptive)
    context = measurements_lib.make_context(data, pipelines, layout, measured, track,
                                            settings.seed, replicas)
    measurements_lib.check(measured.enabled, context)  # bad settings fail before the run
    return Plan(mode=run_mode, settings=settings, strategy=strategy, data=data, layout=layout,
                pipelines=pipelines, track_gradient_noise=track, measurement_context=context)


def _check_stages_reached(layout, epochs):
    """Every boundary of a batch-size schedule must fall inside training: a stage that would
    start after the last update never trains, and the run would silently not be the one asked
    for."""
    schedule = layout.batch_size_schedule
    if schedule is None or layout.adaptive:  # an adaptive batch decides its stages later
        return
    reached = {stage["stage"] for stage in layout.stages(epochs)}
    for stage in range(1, len(schedule.boundaries) + 1):
        if stage not in reached:
            raise ValueError(
                f"{schedule.stage_name(stage)} starts after training ends (train.epochs = "
                f"{epochs}, {sum(layout.updates_in(e) for e in range(epochs))} updates): that "
                "stage would never train. Move the boundary earlier or train longer.")


def set_dtype_policy(dtype_policy):
    keras.backend.set_floatx("float64" if dtype_policy == "float64" else "float32")
    keras.config.set_dtype_policy(dtype_policy)


def build_model(plan):
    """The compiled ``VirtualBatchModel`` of the plan, in the strategy's scope, and the
    callbacks a stateful model needs."""
    settings, layout = plan.settings, plan.layout
    measured = settings.measurements
    with plan.strategy.scope():
        model = as_virtual_batch_model(
            stateful.build_model(settings.model.model_fn, plan.data),
            micro_batch_size=None if layout.time_windows else layout.split_size,
            track_gradient_noise=plan.track_gradient_noise,
            # Nothing measured: the step skips the gradient norms too.
            measure_gradient_norms=bool(measured.enabled))
        model.compile(optimizer=_make_optimizer(settings.model.optimizer),
                      loss=settings.model.loss, metrics=list(settings.model.metrics))
        steering.attach(model, settings, layout, plan.track_gradient_noise)
        state_callbacks = stateful.prepare(model, plan.data, layout)
    return model, state_callbacks


def _make_optimizer(optimizer):
    """An optimizer instance from ``train.optimizer`` (an instance, or a class or factory)."""
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer
    if callable(optimizer):
        return optimizer()
    raise ValueError(f"train.optimizer must be an optimizer or its class, got {optimizer!r}.")
