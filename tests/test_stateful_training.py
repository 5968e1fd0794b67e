"""State handling and the time-window train step of stateful models.

References are plain Keras/TF: a stateless twin run over whole streams, and a hand-written
truncated-BPTT loop (GradientTape per window, state carried, gradients summed, one update).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from callbacks import reset_states
from experiments.engine import virtual_batch_model
from experiments.inputs import dataset as data_lib
from experiments.inputs import pipelines as pipelines_lib
from experiments.inputs import stream_sources as stateful_data
from experiments.inputs import synthetic
from experiments.inputs.streams import StreamLayout
from experiments.models import builders as models
from experiments.run import stateful as stateful_training

S, T, V = 4, 5, 11


def _data(num_micro_batches=1, n=600, validation_split=0.25, seed=0):
    ids = np.random.default_rng(seed).integers(0, V, size=n)
    layout = StreamLayout(num_streams=S, window_length=T, num_micro_batches=num_micro_batches)
    return stateful_data.stream_series(series=ids, vocabulary_size=V,
                                       validation_split=validation_split, layout=layout)


def _model(spec, seed=1):
    keras.utils.set_random_seed(seed)
    return models.stateful_stacked_lstm(spec, units=(6, 5), embedding_dim=3)


def _states(model):
    return [v.numpy().copy() for v in reset_states.state_variables(model)]


def _assert_states_equal(a, b):
    assert len(a) == len(b) > 0
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events = []

    def _log(self, name, *index):
        self.events.append((name, *index, _states(self.model)))

    def on_epoch_begin(self, epoch, logs=None):
        self._log("epoch_begin", epoch)

    def on_train_batch_begin(self, batch, logs=None):
        self._log("batch_begin", batch)

    def on_train_batch_end(self, batch, logs=None):
        self._log("batch_end", batch)

    def on_test_begin(self, logs=None):
        self._log("test_begin")

    def on_epoch_end(self, epoch, logs=None):
        self._log("epoch_end", epoch)


def test_state_is_carried_within_an_epoch_and_reset_at_its_start():
    data = _data()
    pipelines = pipelines_lib.batched(data, S)[1]
    model = _model(data.spec)
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy())
    recorder = _Recorder()
    model.fit(pipelines.train, epochs=2, verbose=0, validation_data=pipelines.validation,
              callbacks=[reset_states.ResetStatesOnEpochBegin(),
                         reset_states.IsolateEvaluationState(), recorder])
    events = recorder.events
    begins = [e for e in events if e[0] == "batch_begin"]
    assert len(begins) == 2 * pipelines.steps_per_epoch
    for i, event in enumerate(events):
        if event[0] != "batch_begin":
            continue
        if event[1] == 0:  # first batch of an epoch: zero state
            assert all(not s.any() for s in event[2])
        else:  # later batches start from the state the previous batch ended with
            previous = events[i - 1]
            assert previous[0] == "batch_end" and previous[1] == event[1] - 1
            _assert_states_equal(event[2], previous[2])
            assert all(s.any() for s in event[2])
    # Validation started from zero and left the training state as the last batch ended it.
    checked = 0
    for i, event in enumerate(events):
        if event[0] == "test_begin":
            assert all(not s.any() for s in event[-1])
            last_batch = max(j for j in range(i) if events[j][0] == "batch_end")
            epoch_end = next(e for e in events[i:] if e[0] == "epoch_end")
            _assert_states_equal(epoch_end[-1], events[last_batch][-1])
            checked += 1
    assert checked == 2


def test_carried_state_equals_running_each_whole_stream_at_once():
    """Batch by batch with the state carried = a stateless twin over the concatenated rows."""
    data = _data(num_micro_batches=2)
    pipelines = pipelines_lib.batched(data, S)[1]
    model = _model(data.spec)
    twin = models.stacked_lstm(data_lib.DataSpec((None,), V, vocabulary_size=V), units=(6, 5),
                               embedding_dim=3, return_sequences=True)
    twin.set_weights(model.get_weights())
    reset_states.reset_states(model)
    xs, outputs = [], []
    for x, _ in pipelines.train:
        xs.append(x.numpy())
        outputs.append(model(x).numpy())
    streams = np.concatenate(xs, axis=1)  # (S, L): rows continue across batches
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), twin(streams).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_evaluation_leaves_the_training_state_untouched():
    data = _data()
    pipelines = pipelines_lib.batched(data, S)[1]
    model = _model(data.spec)
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    for x, _ in pipelines.train.take(3):
        model(x)
    training_state = _states(model)
    assert all(s.any() for s in training_state)

    isolated = model.evaluate(pipelines.validation, verbose=0, return_dict=True,
                              callbacks=[reset_states.IsolateEvaluationState()])
    _assert_states_equal(_states(model), training_state)

    with reset_states.isolated_state(model):
        in_context = model.evaluate(pipelines.validation, verbose=0, return_dict=True)
    _assert_states_equal(_states(model), training_state)

    reset_states.reset_states(model)  # reference: evaluation from a fresh zero state
    fresh = model.evaluate(pipelines.validation, verbose=0, return_dict=True)
    assert isolated == pytest.approx(fresh, rel=1e-6)
    assert in_context == pytest.approx(fresh, rel=1e-6)

    reset_states.restore(model, training_state)  # without isolation it starts from the training
    leaked = model.evaluate(pipelines.validation, verbose=0, return_dict=True)  # state
    assert leaked["loss"] != pytest.approx(fresh["loss"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("num_micro_batches", [1, 3])
def test_k_num_micro_batches_equal_hand_written_truncated_bptt(num_micro_batches):
    k = num_micro_batches
    data = _data(num_micro_batches=k, n=900, validation_split=0.0)
    layout, pipelines = pipelines_lib.batched(data, S, seed=5)
    batches = [(x.numpy(), y.numpy()) for x, y in pipelines.train.take(3)]
    assert batches[0][0].shape == (S, k * T)

    model = virtual_batch_model.as_virtual_batch_model(_model(data.spec))
    stateful_training.prepare(model, data, layout)
    assert model.time_window == T
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy())
    reset_states.reset_states(model)
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])))
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)

    reference = _model(data.spec)  # same seed, same initial weights; plain TF from here
    optimizer = keras.optimizers.SGD(0.5)
    summed = keras.losses.SparseCategoricalCrossentropy(reduction="sum")
    reset_states.reset_states(reference)
    losses = []
    for x, y in batches:
        grads = [tf.zeros_like(v) for v in reference.trainable_variables]
        total = 0.0
        for w in range(k):  # the state carries from window to window (and batch to batch)
            window = slice(w * T, (w + 1) * T)
            with tf.GradientTape() as tape:
                loss = summed(y[:, window], reference(x[:, window], training=True))
            grads = [g + d for g, d in zip(
                grads, tape.gradient(loss, reference.trainable_variables))]
            total += float(loss)
        count = S * k * T  # mean over every predicted step of the update
        optimizer.apply([g / count for g in grads], reference.trainable_variables)
        losses.append(total / count)

    for got, want in zip(model.trainable_variables, reference.trainable_variables):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    _assert_states_equal_close(_states(model), _states(reference))
    assert history.history["loss"][0] == pytest.approx(np.mean(losses), rel=1e-5)
    assert int(model.optimizer.iterations.numpy()) == 3  # one update per k windows


def _assert_states_equal_close(a, b):
    assert len(a) == len(b) > 0
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


# ---- clear errors ------------------------------------------------------------------------------

def test_a_batch_of_another_size_is_refused_not_broadcast():
    data = _data()
    model = _model(data.spec)
    with pytest.raises(ValueError, match="fixed batch of 4 streams received a batch of 1"):
        model(np.zeros((1, T), "int32"))
    # Dynamic batch size (a pipeline without drop_remainder): checked at run time.
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy())
    rows = tf.data.Dataset.from_tensor_slices((np.zeros((6, T), "int32"),
                                               np.zeros((6, T), "int64"))).batch(S)
    with pytest.raises(tf.errors.InvalidArgumentError, match="fixed batch of 4 streams"):
        model.fit(rows, epochs=1, verbose=0)


def test_stateful_model_on_an_ordinary_pipeline_is_refused():
    rows = synthetic.synthetic_sequences(num_examples=64, sequence_length=5)
    with pytest.raises(ValueError, match="needs the fixed batch size of a stateful stream pipeline"):
        models.stateful_stacked_lstm(rows.spec)
    keras.utils.set_random_seed(0)
    own = keras.Sequential([keras.Input((5, 8), batch_size=8),
                            keras.layers.LSTM(4, stateful=True), keras.layers.Dense(4)])
    layout = pipelines_lib.batched(rows, 8)[0]
    with pytest.raises(ValueError, match="not a stateful stream pipeline"):
        stateful_training.prepare(virtual_batch_model.as_virtual_batch_model(own), rows, layout)


def test_stateless_model_on_a_stateful_pipeline_is_refused():
    data = _data()
    layout = pipelines_lib.batched(data, S)[0]
    stateless = models.stacked_lstm(data.spec, units=(4,), return_sequences=True)
    with pytest.raises(ValueError, match="has no stateful layer.*stream_layout.stateful=False"):
        stateful_training.prepare(virtual_batch_model.as_virtual_batch_model(stateless), data,
                                  layout)
    baseline = stateful_data.stream_series(
        series=np.arange(600) % V, validation_split=0.0,
        layout=StreamLayout(num_streams=S, window_length=T, stateful=False))
    assert baseline.spec.batch_size is None
    model = virtual_batch_model.as_virtual_batch_model(
        models.stacked_lstm(baseline.spec, units=(4,), return_sequences=True))
    assert stateful_training.prepare(model, baseline, pipelines_lib.batched(baseline, S)[0]) == []
    assert model.time_window == T


def test_micro_batch_size_cannot_split_streams():
    with pytest.raises(ValueError, match="stream_layout.num_micro_batches"):
        pipelines_lib.batched(_data(), S, micro_batch_size=2)
