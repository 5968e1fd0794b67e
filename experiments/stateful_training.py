"""What the runner does differently when the data is a stateful stream layout.

Kept apart from the runner so that it adds three calls there and nothing else:

- ``check_settings(data, micro_batch_size)`` before any run directory exists: a stream pipeline's
  update is split in *time* (``stream_layout.windows_per_update``), never in rows.
- ``prepare(model, data, pipelines)`` once the model is built: the model and the pipeline must agree
  on statefulness and on the fixed batch; the train step is switched to time windows; returns the
  state callbacks (reset at every epoch, evaluation on its own state).
- ``callbacks.reset_states.isolated_state`` around the final evaluation.
"""

from callbacks import reset_states
from experiments import stateful_data

# Evaluation from a zero state that leaves the training state as it was (no-op when stateless).
isolated_state = reset_states.isolated_state


def stream_of(data):
    """The ``StreamData`` behind ``data``, or None for an ordinary source."""
    stream = getattr(data.make_batched, "__self__", None)
    return stream if isinstance(stream, stateful_data.StreamData) else None


def check_settings(data, micro_batch_size):
    """Raises for settings that contradict a stream layout (before anything is written)."""
    stream = stream_of(data)
    if stream is not None and micro_batch_size is not None:
        raise ValueError(
            f"train.micro_batch_size={micro_batch_size} cannot split a stream batch: its rows are "
            f"the {stream.layout.num_streams} streams a stateful model needs together. Split an "
            "update into consecutive windows instead with stream_layout.windows_per_update "
            "(truncated BPTT with one update every k windows).")


def prepare(model, data, pipelines):
    """Checks model against data, sets the time-window step; returns the state callbacks."""
    stateful = bool(reset_states.stateful_layers(model))
    fixed = data.spec.batch_size
    stream = stream_of(data)
    if stateful and fixed is None:
        if stream is not None:
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
    if pipelines.time_window:
        model.configure_time_windows(pipelines.time_window)
    if not stateful:
        return []
    return [reset_states.ResetStatesOnEpochBegin(), reset_states.IsolateEvaluationState()]

