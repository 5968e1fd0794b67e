"""The state of stateful layers (RNNs with ``stateful=True``), and other facts about a model's
layers that the step, the loops and callbacks need.

Keras 3 has ``layer.reset_state()`` per RNN layer but no ``model.reset_states()`` on a Sequential or
functional model, and ``fit`` neither resets states between epochs nor protects the training state
from evaluation. These functions do that; ``callbacks.reset_states`` wraps them as callbacks.
"""

import contextlib

import keras
import tensorflow as tf

from experiments.engine import keras_internals


def layers(model):
    """Every layer of ``model``, nested ones included (not the model itself)."""
    return keras_internals.flatten_layers(model, include_self=False)


def stateful_layers(model):
    """Every layer of ``model`` that keeps state between batches."""
    return [layer for layer in layers(model) if getattr(layer, "stateful", False)]


def has_batch_normalization(model):
    return any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers(model))


def batch_normalization_statistics(model):
    """The moving means and variances of the BatchNormalization layers that update them in
    training (trainable, not synchronized: a synchronized layer's are equal on every replica)."""
    return [variable for layer in layers(model)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
            and not getattr(layer, "synchronized", False)
            for variable in (layer.moving_mean, layer.moving_variance)]


def average_over_replicas(variables, num_rows):
    """Graph code in a replica context: each of ``variables`` set to its mean over the replicas
    that were handed rows (``num_rows`` > 0) this update. Keras 3 keeps one copy of a
    BatchNormalization moving average per replica, each updated from its own rows; without this
    the copies drift apart, a checkpoint keeps the first replica's, and validation differs by
    replica. A mean of the replicas' moving averages is the moving average of their batch
    statistics' mean (tf.keras averaged the copies when read). Nothing on one replica."""
    replica = tf.distribute.get_replica_context()
    if not variables or replica is None or replica.num_replicas_in_sync < 2:
        return
    had_rows = tf.cast(num_rows > 0, tf.float32)
    values = [tf.cast(tf.convert_to_tensor(v), tf.float32) * had_rows for v in variables]
    sums = replica.all_reduce("sum", values + [had_rows])
    count = tf.maximum(sums[-1], 1.0)
    for variable, total in zip(variables, sums[:-1]):
        variable.assign(tf.cast(total / count, variable.dtype))


def state_variables(model):
    """The state variables of all stateful layers (empty before the layers are built)."""
    variables = []
    for layer in stateful_layers(model):
        states = getattr(layer, "states", None) or []
        variables.extend(v for v in states if v is not None)
    return variables


def reset_states(model):
    """Zeroes the state of every stateful layer (Keras 3 has no ``model.reset_states()``)."""
    for layer in stateful_layers(model):
        if getattr(layer, "states", None) is not None:
            layer.reset_state()


def snapshot(model):
    """Copies of the current state values, to give back to ``restore``."""
    return [v.numpy().copy() for v in state_variables(model)]


def restore(model, values):
    variables = state_variables(model)
    if len(variables) != len(values):
        raise ValueError(f"Cannot restore {len(values)} saved states into "
                         f"{len(variables)} state variables.")
    for variable, value in zip(variables, values):
        variable.assign(value)


@contextlib.contextmanager
def isolated_state(model):
    """Runs the block from a zero state and restores the state the model had before it."""
    saved = snapshot(model)
    reset_states(model)
    try:
        yield
    finally:
        if saved:
            restore(model, saved)
        else:  # the layers were built inside the block: leave no evaluation state behind
            reset_states(model)
