"""State handling for stateful RNNs: reset at every epoch, and evaluation that leaves no trace.

Keras 3 has ``layer.reset_state()`` per RNN layer but no ``model.reset_states()`` on a Sequential
or functional model, and ``fit`` neither resets states between epochs nor protects the training
state from validation (which would start from, and then overwrite, the training streams' state).
These callbacks work in any ``model.fit``:

- ``ResetStatesOnEpochBegin``: zero state at the start of every epoch (the streams restart there).
- ``IsolateEvaluationState``: evaluation starts from its own zero state and, when it ends, the
  training state is put back exactly as it was (so a mid-epoch evaluation does not disturb the
  training streams).

``isolated_state(model)`` is the same isolation as a context manager, for ``model.evaluate`` calls
outside ``fit``.
"""

import contextlib

import keras


def stateful_layers(model):
    """Every layer of ``model`` (nested ones included) that keeps state between batches."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if getattr(layer, "stateful", False)]


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


class ResetStatesOnEpochBegin(keras.callbacks.Callback):
    """Zeroes every stateful layer's state when an epoch starts."""

    def on_epoch_begin(self, epoch, logs=None):
        reset_states(self.model)


class IsolateEvaluationState(keras.callbacks.Callback):
    """Evaluation runs on its own reset state; the training state is restored afterwards.

    Saves the state on ``on_test_begin``, zeroes it, and restores it on ``on_test_end``: this is
    what ``fit``'s validation and ``model.evaluate(..., callbacks=[...])`` call.
    """

    def __init__(self):
        super().__init__()
        self._saved = None

    def on_test_begin(self, logs=None):
        self._saved = snapshot(self.model)
        reset_states(self.model)

    def on_test_end(self, logs=None):
        if self._saved:
            restore(self.model, self._saved)
        else:
            reset_states(self.model)
        self._saved = None
