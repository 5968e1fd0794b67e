"""One seed for Python, NumPy, TensorFlow and Keras, and the run's op determinism."""

import keras

from experiments.engine import keras_internals


def seed_everything(seed, deterministic_ops=False):
    """Seeds every generator the run uses; with ``deterministic_ops`` TF picks deterministic kernels.

    Op determinism is set both ways: a run without it that follows one with it in the same process
    (a sweep's variants, a study's runs) computes as it would in a fresh process, with the
    validation curve's seconds, which a deterministic graph may not read.
    """
    keras.utils.set_random_seed(int(seed))
    keras_internals.set_op_determinism(bool(deterministic_ops))
