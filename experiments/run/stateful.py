"""What a run does differently when the data is a stateful stream layout.

Kept apart from the runner so that it adds two calls there and nothing else:

- ``prepare(model, data, layout)`` once the model is built: the model and the data must agree on
  statefulness and on the fixed batch; the train step is switched to time windows of T steps;
  returns the state callbacks (reset at every epoch, evaluation on its own state).
- ``isolated_state`` around the final evaluation.

The stream's batch rules (B = S, no row micro-batches, k windows per update) are checked where
every layout rule is, in ``inputs.layout.build``.
"""

from callbacks import reset_states
from experiments.engine import states

# Evaluation from a zero state that leaves the training state as it was (no-op when stateless).
isolated_state = states.isolated_state


def build_model(model_fn, data):
    """``model_fn``'s model for ``data``. On stream data a model that cannot be built for its
    windows (a model for fixed-size rows: its time axis is open) gets the stream's hint beside
    its own error, which otherwise names only a layer's variable."""
    try:
        return model_fn(data.spec)
    except ValueError as error:
        # Only Keras' refusal of a variable over the open time axis of stream data: any other
        # error (a bad binding of a sequence model, a bug) is the model's own, kept as it is.
        if data.stream is None or "must be fully-defined" not in str(error):
            raise
        cause = str(error).strip().splitlines()[0].rstrip(".")
        raise ValueError(
            f"The model could not be built for '{data.name}', stream data (inputs of shape "
            f"{data.spec.input_shape}: windows of steps): {cause}. Stream data needs a "
            "sequence model: @stateful_stacked_lstm, or @stacked_lstm with "
            "stream_layout.stateful=False.") from error


def prepare(model, data, layout):
    """Checks model against data, sets the time-window step; returns the state callbacks."""
    stateful = bool(states.stateful_layers(model))
    fixed = data.spec.batch_size
    if stateful and fixed is None:
        if data.stream is not None:
            raise ValueError(
                f"The model has stateful layers but '{data.name}' was laid out with "
                "stream_layout.stateful=False; set it to True to carry the state.")
        raise ValueError(
            f"The model has stateful layers but '{data.name}' is not a stateful stream pipeline: "
            "row i of one batch does not continue row i of the previous one, so the carried state "
            "would mix unrelated examples. Use a stream source (gin/data/stateful_*.gin) or a "
            "model without stateful=True.")
    if fixed is not None and not stateful:
        raise ValueError(
            f"'{data.name}' lays out stateful streams (stream_layout.stateful=True) but the model "
            "has no stateful layer, so nothing carries from one window to the next. Use "
            "@stateful_stacked_lstm, or set stream_layout.stateful=False to train a stateless "
            "baseline on the same windows.")
    if stateful:
        model_batch = model.inputs[0].shape[0] if getattr(model, "inputs", None) else None
        if model_batch is not None and model_batch != fixed:
            raise ValueError(
                f"The stateful model is built for batches of {model_batch} but the stream "
                f"pipeline has stream_layout.num_streams={fixed}.")
        replicas = model.distribute_strategy.num_replicas_in_sync
        if replicas > 1:
            raise ValueError(
                f"Stateful streams run on one replica (the strategy has {replicas}): each replica "
                "would hold a slice of the streams while the model's state holds all of them.")
    if layout.time_windows:
        model.configure_time_windows(layout.window_length)
    if not stateful:
        return []
    return [reset_states.ResetStatesOnEpochBegin(), reset_states.IsolateEvaluationState()]

