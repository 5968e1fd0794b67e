"""The state of stateful layers (RNNs with ``stateful=True``), and other facts about a model's
layers that the step, the loops and callbacks need.

Keras 3 has ``layer.reset_state()`` per RNN layer but no ``model.reset_states()`` on a Sequential or
functional model, and ``fit`` neither resets states between epochs nor protects the training state
from evaluation. These functions do that; ``callbacks.reset_states`` wraps them as callbacks.
"""

import contextlib

import keras

from experiments.engine import keras_internals


def layers(model):
    """Every layer of ``model``, nested ones included (not the model itself)."""
    return keras_internals.flatten_layers(model, include_self=False)


def stateful_layers(model):
    """Every layer of ``model`` that keeps state between batches."""
    return [layer for layer in layers(model) if getattr(layer, "stateful", False)]


def has_batch_normalization(model):
    return any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers(model))


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
