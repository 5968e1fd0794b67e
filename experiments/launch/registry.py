"""The one place where everything gin can name is registered, before any gin file is parsed.

Importing this module imports every batchlab module that defines configurables (each registers
its own, where it is defined) and registers the
Keras built-ins a user may name, under stable module names (``keras.optimizers.Adam``,
``keras.losses.MeanSquaredError``, ...). ``gin.tf`` is not used: it is broken with Keras 3.
"""

import gin
import keras

from experiments.engine import distribute  # noqa: F401  (strategies, fit.loop)
from experiments.inputs import arrays, stream_sources, streams, synthetic  # noqa: F401
from experiments.launch import study, sweep  # noqa: F401
from experiments.models import builders, metrics, schedules  # noqa: F401
from experiments.run import measurements, runner, settings  # noqa: F401

_KERAS_BUILTINS = {
    "keras.optimizers": (keras.optimizers.SGD, keras.optimizers.Adam, keras.optimizers.AdamW,
                         keras.optimizers.RMSprop, keras.optimizers.Adagrad,
                         keras.optimizers.Nadam, keras.optimizers.Lion),
    "keras.optimizers.schedules": (keras.optimizers.schedules.ExponentialDecay,
                                   keras.optimizers.schedules.PiecewiseConstantDecay,
                                   keras.optimizers.schedules.CosineDecay,
                                   keras.optimizers.schedules.PolynomialDecay,
                                   keras.optimizers.schedules.InverseTimeDecay),
    "keras.losses": (keras.losses.SparseCategoricalCrossentropy,
                     keras.losses.CategoricalCrossentropy, keras.losses.BinaryCrossentropy,
                     keras.losses.MeanSquaredError, keras.losses.MeanAbsoluteError,
                     keras.losses.Huber),
    "keras.metrics": (keras.metrics.SparseCategoricalAccuracy, keras.metrics.BinaryAccuracy,
                      keras.metrics.MeanAbsoluteError, keras.metrics.MeanSquaredError),
    "keras.regularizers": (keras.regularizers.L2, keras.regularizers.L1,
                           keras.regularizers.L1L2),
}


def _register_keras_builtins():
    for module, classes in _KERAS_BUILTINS.items():
        for cls in classes:
            try:
                gin.external_configurable(cls, module=module)
            except ValueError:  # already registered (module imported twice)
                pass


_register_keras_builtins()
