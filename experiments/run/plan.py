"""The plan of one run: everything resolved and checked before the run directory exists.

Order matters for honesty: the strategy is created first (multi-worker and logical devices must
exist before TensorFlow starts), then the data is loaded, the ``BatchLayout`` built and every
measurement setting checked, so bad input never leaves a directory that looks like a run.
"""

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from experiments.engine import distribute
from experiments.inputs import layout as layout_lib
from experiments.inputs import pipelines as pipelines_lib
from experiments.inputs.dataset import Data, Pipelines
from experiments.inputs.layout import BatchLayout
from experiments.run import measurements as measurements_lib
from experiments.run import seeding
from experiments.run.settings import RunSettings


@dataclasses.dataclass
class Plan:
    """A run's settings with what was resolved from them."""

    settings: RunSettings
    strategy: tf.distribute.Strategy
    data: Data
    layout: BatchLayout
    pipelines: Pipelines
    track_gradient_noise: bool
    measurement_context: Any  # measurements.MeasurementContext


def build(settings):
    """Resolves ``settings`` into a ``Plan``; raises before anything is written."""
    strategy = distribute.resolve(settings.strategy)
    seeding.seed_everything(settings.seed, settings.deterministic_ops)
    set_dtype_policy(settings.model.dtype_policy)
    data_settings = settings.data
    data = data_settings.data_fn()
    layout = layout_lib.build(data, data_settings.batch_size, data_settings.micro_batch_size,
                              data_settings.eval_batch_size, data_settings.batch_size_schedule)
    pipelines = pipelines_lib.make(data, layout, seed=settings.seed,
                                   shuffle=data_settings.shuffle)
    measured = settings.measurements
    track = measurements_lib.track_gradient_noise(measured, layout)
    context = measurements_lib.make_context(data, pipelines, layout, measured, track,
                                            settings.seed)
    measurements_lib.check(measured.enabled, context)  # bad settings fail before the run
    return Plan(settings=settings, strategy=strategy, data=data, layout=layout,
                pipelines=pipelines, track_gradient_noise=track, measurement_context=context)


def set_dtype_policy(dtype_policy):
    keras.backend.set_floatx("float64" if dtype_policy == "float64" else "float32")
    keras.config.set_dtype_policy(dtype_policy)
