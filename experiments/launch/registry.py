"""The one place where everything gin can name is registered, before any gin file is parsed.

Importing this module imports every batchlab module that defines configurables (each registers
its own, where it is defined) and registers the
Keras built-ins a user may name, under stable module names (``keras.optimizers.Adam``,
``keras.losses.MeanSquaredError``, ...). ``gin.tf`` is not used: it is broken with Keras 3.
"""

import gin
import keras

from callbacks import summary_writer
from experiments.engine import distribute  # noqa: F401  (strategies, fit.loop)
from experiments.inputs import arrays, nqm, stream_sources, streams, synthetic  # noqa: F401
from experiments.inputs import tf_sources  # noqa: F401  (tf_data, tfrecord_files)
from experiments.inputs import adaptive_batch  # noqa: F401  (adaptive_batch_size)
from experiments.launch import comparison, study, sweep  # noqa: F401
from experiments.models import builders, learning_rate_scaling, metrics, schedules  # noqa: F401
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
    # Added to a run with `train.extra_callbacks = [@keras.callbacks.EarlyStopping()]`.
    "keras.callbacks": (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau,
                        keras.callbacks.CSVLogger, keras.callbacks.TerminateOnNaN,
                        keras.callbacks.LearningRateScheduler, keras.callbacks.ModelCheckpoint,
                        keras.callbacks.TensorBoard, keras.callbacks.RemoteMonitor,
                        keras.callbacks.LambdaCallback),
}

# The optimizer classes gin can name (``gin_config`` leaves out an unchosen one's defaults).
OPTIMIZER_NAMES = tuple(cls.__name__ for cls in _KERAS_BUILTINS["keras.optimizers"])


def _register_keras_builtins():
    for module, classes in _KERAS_BUILTINS.items():
        for cls in classes:
            try:
                gin.external_configurable(cls, module=module)
            except ValueError:  # already registered (module imported twice)
                pass


def _register_run_tensorboard():
    """The TensorBoard callback every run has (``callbacks.summary_writer.TensorBoard``), as
    ``batchlab.TensorBoard``: Keras' options that the run does not set itself reach it from gin
    (``batchlab.TensorBoard.histogram_freq = 1``, ``update_freq``, ``embeddings_freq``, ...).
    Registered in place (``gin.configurable`` on the class), so the run's own call picks the
    bindings up."""
    try:
        gin.configurable("TensorBoard", module="batchlab")(summary_writer.TensorBoard)
    except ValueError:  # already registered (module imported twice)
        pass


_register_keras_builtins()
_register_run_tensorboard()
