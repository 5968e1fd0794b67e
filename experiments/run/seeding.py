"""One seed for Python, NumPy, TensorFlow and Keras, and optional op determinism."""

import keras
import tensorflow as tf


def seed_everything(seed, deterministic_ops=False):
    """Seeds every generator the run uses; with ``deterministic_ops`` TF picks deterministic kernels.

    Op determinism can only be switched on (TensorFlow offers no way back within a process).
    """
    keras.utils.set_random_seed(int(seed))
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()
