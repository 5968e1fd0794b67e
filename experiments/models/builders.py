"""Model builders: one gin-configurable function per family of the Keras Sequential guide.

A builder takes the ``DataSpec`` of the data (input shape, output size, task, fixed batch size for
stateful models) and returns an uncompiled Keras model with an ``Input``. The output layer always
computes in float32 so that mixed-precision runs keep a stable loss. A user's own builder has the
same signature (``def my_model(spec): ...``) and is used after ``import`` in a gin file.
"""

import gin
import keras
import tensorflow as tf

from experiments.common import checks


def _output_layer(spec, name="output"):
    """Softmax for classes, sigmoid for a binary target, linear for regression."""
    if spec.task == "binary":
        return keras.layers.Dense(spec.num_outputs, activation="sigmoid", dtype="float32",
                                  name=name)
    if spec.task == "regression":
        return keras.layers.Dense(spec.num_outputs, dtype="float32", name=name)
    return keras.layers.Dense(spec.num_outputs, activation="softmax", dtype="float32", name=name)


def _widths(value, binding, allow_empty=False):
    """``value`` as a tuple of layer widths (positive integers), a ValueError naming ``binding``
    otherwise: ``mlp.hidden_units = 64`` means one layer, but written so it failed deep inside
    Keras ("'int' object is not iterable")."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{binding} is a list of layer widths, e.g. {binding} = (64, 64); got "
                         f"{value!r}.")
    widths = tuple(checks.positive_int(width, f"each of {binding}") for width in value)
    if not widths and not allow_empty:
        raise ValueError(f"{binding} needs at least one layer width, got {value!r}.")
    return widths


def _regularizer(l2):
    return keras.regularizers.L2(l2) if l2 else None


@gin.configurable
def mlp(spec, hidden_units=(64,), activation="relu", dropout=0.0, l2=0.0,
        batch_normalization=False, batch_norm_momentum=0.99):
    """Multilayer perceptron: multi-class (softmax), binary (sigmoid) or regression by ``spec.task``.

    ``batch_norm_momentum``: the BatchNormalization layers' moving-average momentum (Keras'
    default 0.99 leaves 0.99^N of the initial statistics after N updates of the averages: a
    run of few updates, as at a large batch, validates with stale ones;
    ``experiments.run.batch_norm_statistics``)."""
    layers = [keras.Input(spec.input_shape)]
    if len(spec.input_shape) > 1:
        layers.append(keras.layers.Flatten())
    for units in _widths(hidden_units, "mlp.hidden_units", allow_empty=True):
        layers.append(keras.layers.Dense(units, kernel_regularizer=_regularizer(l2)))
        if batch_normalization:
            layers.append(keras.layers.BatchNormalization(
                momentum=checks.fraction(batch_norm_momentum, "mlp.batch_norm_momentum")))
        layers.append(keras.layers.Activation(activation))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(_output_layer(spec))
    return keras.Sequential(layers, name="mlp")


@gin.configurable
def linear(spec, use_bias=False, kernel_initializer="zeros"):
    """A linear model y = x W (+ b) for regression: with Gaussian inputs, the squared error's
    gradient statistics have closed forms (the noise scale's known-answer study); zero weights
    start it at |delta|^2 = |W*|^2."""
    if spec.task != "regression":
        raise ValueError(f"linear is a regression model; this data's task is {spec.task!r}.")
    layers = [keras.Input(spec.input_shape)]
    if len(spec.input_shape) > 1:
        layers.append(keras.layers.Flatten())
    layers.append(keras.layers.Dense(spec.num_outputs, use_bias=use_bias, dtype="float32",
                                     kernel_initializer=kernel_initializer, name="output"))
    return keras.Sequential(layers, name="linear")


@gin.configurable
def vgg_convnet(spec, filters=(32, 64), dense_units=256, dropout=0.25):
    """VGG-like convnet: per block two 3×3 convolutions and a 2×2 max-pool, then a dense head."""
    layers = [keras.Input(spec.input_shape)]
    if len(spec.input_shape) == 2:  # grey images without a channel axis
        layers.append(keras.layers.Reshape((*spec.input_shape, 1)))
    for width in _widths(filters, "vgg_convnet.filters"):
        layers += [keras.layers.Conv2D(width, 3, activation="relu", padding="same"),
                   keras.layers.Conv2D(width, 3, activation="relu", padding="same"),
                   keras.layers.MaxPooling2D(2, padding="same")]
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers += [keras.layers.Flatten(), keras.layers.Dense(dense_units, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(2 * dropout))
    layers.append(_output_layer(spec))
    return keras.Sequential(layers, name="vgg_convnet")


def _sequence_input(spec, embedding_dim, mask_zero, batch_size=None):
    """Token ids get an Embedding; real-valued sequences go straight in."""
    layers = [keras.Input(spec.input_shape, batch_size=batch_size,
                          dtype="int32" if spec.vocabulary_size else None)]
    if spec.vocabulary_size:
        layers.append(keras.layers.Embedding(spec.vocabulary_size, embedding_dim,
                                             mask_zero=mask_zero))
    return layers


@gin.configurable
def lstm_classifier(spec, units=64, embedding_dim=32, mask_zero=False, dropout=0.0):
    """LSTM sequence classifier: the last state feeds the output layer."""
    layers = _sequence_input(spec, embedding_dim, mask_zero)
    layers.append(keras.layers.LSTM(units, dropout=dropout))
    layers.append(_output_layer(spec))
    return keras.Sequential(layers, name="lstm_classifier")


@gin.configurable
def conv1d_classifier(spec, filters=64, kernel_size=3, embedding_dim=32, dropout=0.5):
    """Conv1D sequence classifier: two conv/pool blocks, global average pooling."""
    layers = _sequence_input(spec, embedding_dim, mask_zero=False)
    layers += [keras.layers.Conv1D(filters, kernel_size, activation="relu", padding="same"),
               keras.layers.Conv1D(filters, kernel_size, activation="relu", padding="same"),
               keras.layers.MaxPooling1D(2, padding="same"),
               keras.layers.Conv1D(2 * filters, kernel_size, activation="relu", padding="same"),
               keras.layers.GlobalAveragePooling1D()]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(_output_layer(spec))
    return keras.Sequential(layers, name="conv1d_classifier")


@gin.configurable
def stacked_lstm(spec, units=(32, 32), embedding_dim=32, mask_zero=False,
                 return_sequences=False):
    """Stacked LSTM: every layer but the last returns sequences (all do if ``return_sequences``)."""
    units = _widths(units, "stacked_lstm.units")
    layers = _sequence_input(spec, embedding_dim, mask_zero)
    for i, width in enumerate(units):
        last = i == len(units) - 1
        layers.append(keras.layers.LSTM(width, return_sequences=return_sequences or not last))
    layers.append(_output_layer(spec))
    return keras.Sequential(layers, name="stacked_lstm")


@keras.saving.register_keras_serializable(package="batchlab")
class FixedBatchSize(keras.layers.Layer):
    """Passes its input through, failing on a batch whose size is not the model's fixed one.

    A stateful RNN keeps one state row per stream; Keras broadcasts a batch of another size into
    that state without a word when the batch size is only known at run time (keras#21183). This
    layer checks the static size at trace time and the dynamic one at run time.
    """

    def __init__(self, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.batch_size = int(batch_size)
        self.supports_masking = True

    def _message(self, got):
        return (f"A stateful model built for a fixed batch of {self.batch_size} streams received a "
                f"batch of {got} rows: feed it from a stream pipeline whose "
                f"stream_layout.num_streams (and train.batch_size) is {self.batch_size}.")

    def call(self, inputs):
        rows = inputs.shape[0]
        if rows is not None:
            if rows != self.batch_size:
                raise ValueError(self._message(rows))
            return inputs
        check = tf.debugging.assert_equal(
            tf.shape(inputs)[0], self.batch_size, message=self._message("another number of"))
        with tf.control_dependencies([check]):
            return tf.identity(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "batch_size": self.batch_size}


@gin.configurable
def stateful_stacked_lstm(spec, units=(32, 32), embedding_dim=32, return_sequences=True,
                          dropout=0.0):
    """Stateful stacked LSTM with the fixed batch size the stateful pipeline lays out.

    The batch size comes from ``spec.batch_size`` (``stream_layout.num_streams``); the time axis is
    left free, so the same model runs on windows of any length. With ``return_sequences``
    (language modelling) it predicts at every step of the window. ``dropout`` applies to each
    LSTM's inputs.
    """
    if not spec.batch_size:
        raise ValueError(
            "stateful_stacked_lstm needs the fixed batch size of a stateful stream pipeline: "
            "with stream data, set stream_layout.stateful = True to carry the state (False "
            "lays the windows out for a stateless baseline, e.g. @stacked_lstm); otherwise use "
            "a stream source (gin/data/stateful_*.gin). Rows of an ordinary pipeline are "
            "unrelated from batch to batch, so a carried state would mix examples.")
    units = _widths(units, "stateful_stacked_lstm.units")
    layers = _sequence_input(spec, embedding_dim, mask_zero=False, batch_size=spec.batch_size)
    layers.insert(1, FixedBatchSize(spec.batch_size, name="fixed_batch_size"))
    for i, width in enumerate(units):
        last = i == len(units) - 1
        layers.append(keras.layers.LSTM(width, stateful=True, dropout=dropout,
                                        return_sequences=return_sequences or not last))
    layers.append(_output_layer(spec))
    return keras.Sequential(layers, name="stateful_stacked_lstm")
