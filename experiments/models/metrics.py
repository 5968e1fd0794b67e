"""Bits per character (or per token): the language-model score, as a Keras metric.

It is the mean next-step cross-entropy in bits, i.e. the loss in nats divided by ln 2. As a metric
it is logged every epoch (``bits_per_character`` / ``val_bits_per_character``), lands in the run's
``result.json`` (``final_validation.bits_per_character``) and averages exactly over every predicted
step, also when the train step splits an update into windows.
"""

import math

import gin
import keras


def _bits(y_true, y_pred):
    nats = keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
    return nats / math.log(2.0)


@gin.configurable(module="metrics")
class BitsPerCharacter(keras.metrics.MeanMetricWrapper):
    """Mean sparse categorical cross-entropy in bits of a softmax over the vocabulary."""

    def __init__(self, name="bits_per_character", dtype=None):
        super().__init__(_bits, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}
