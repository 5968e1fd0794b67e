"""Model builders: one gin-configurable function per family of the Keras Sequential guide.

A builder takes the ``DataSpec`` of the data (input shape, output size, task, fixed batch size for
stateful models) and returns an uncompiled Keras model with an ``Input``. The output layer always
computes in float32 so that mixed-precision runs keep a stable loss. A user's own builder has the
same signature (``def my_model(spec): ...``) and is used after ``import`` in a gin file.
"""

import gin
import keras


def _output_layer(spec, name="output"):
    """Softmax for classes, sigmoid for a binary target, linear for regression."""
    if spec.task == "binary":
        return keras.layers.Dense(spec.num_outputs, activation="sigmoid", dtype="float32",
                                  name=name)
    if spec.task == "regression":
        return keras.layers.Dense(spec.num_outputs, dtype="float32", name=name)
    return keras.layers.Dense(spec.num_outputs, activation="softmax", dtype="float32", name=name)


def _regularizer(l2):
    return keras.regularizers.L2(l2) if l2 else None


@gin.configurable
def mlp(spec, hidden_units=(64,), activation="relu", dropout=0.0, l2=0.0,
        batch_normalization=False):
    """Multilayer perceptron: multi-class (softmax), binary (sigmoid) or regression by ``spec.task``."""
    layers = [keras.Input(spec.input_shape)]
    if len(spec.input_shape) > 1:
        layers.append(keras.layers.Flatten())
    for units in hidden_units:
        layers.append(keras.layers.Dense(units, kernel_regularizer=_regularizer(l2)))
        if batch_normalization:
            layers.append(keras.layers.BatchNormalization())
        layers.append(keras.layers.Activation(activation))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(_output_layer(spec))
    return keras.Sequential(layers, name="mlp")


@gin.configurable
def vgg_convnet(spec, filters=(32, 64), dense_units=256, dropout=0.25):
    """VGG-like convnet: per block two 3×3 convolutions and a 2×2 max-pool, then a dense head."""
    layers = [keras.Input(spec.input_shape)]
    if len(spec.input_shape) == 2:  # grey images without a channel axis
        layers.append(keras.layers.Reshape((*spec.input_shape, 1)))
    for width in filters:
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
    layers = _sequence_input(spec, embedding_dim, mask_zero)
    for i, width in enumerate(units):
        last = i == len(units) - 1
        layers.append(keras.layers.LSTM(width, return_sequences=return_sequences or not last))
    layers.append(_output_layer(spec))
    return keras.Sequential(layers, name="stacked_lstm")


@gin.configurable
def stateful_stacked_lstm(spec, units=(32, 32), embedding_dim=32, return_sequences=True):
    """Stateful stacked LSTM with the fixed batch size the stateful pipeline lays out.

    With ``return_sequences`` (language modelling) it predicts at every step of the window.
    """
    if not spec.batch_size:
        raise ValueError(
            "stateful_stacked_lstm needs a fixed batch size: feed it from a stateful stream "
            "pipeline (gin/data/stateful_*.gin), whose DataSpec carries the batch size.")
    layers = _sequence_input(spec, embedding_dim, mask_zero=False, batch_size=spec.batch_size)
    for i, width in enumerate(units):
        last = i == len(units) - 1
        layers.append(keras.layers.LSTM(width, stateful=True,
                                        return_sequences=return_sequences or not last))
    layers.append(_output_layer(spec))
    return keras.Sequential(layers, name="stateful_stacked_lstm")
