"""Callbacks for stateful RNNs: reset at every epoch, and evaluation that leaves no trace.

``fit`` neither resets states between epochs nor protects the training state from validation
(which would start from, and then overwrite, the training streams' state). These callbacks work
in any ``model.fit``:

- ``ResetStatesOnEpochBegin``: zero state at the start of every epoch (the streams restart there).
- ``IsolateEvaluationState``: evaluation starts from its own zero state and, when it ends, the
  training state is put back exactly as it was (so a mid-epoch evaluation does not disturb the
  training streams).

``isolated_state(model)`` (from ``experiments.engine.states``) is the same isolation as a context
manager, for ``model.evaluate`` calls outside ``fit``.
"""

import keras

from experiments.engine.states import (isolated_state, reset_states, restore, snapshot,  # noqa: F401
                                       state_variables, stateful_layers)


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
