"""Speed knobs of batchlab's loop change nothing but speed.

``fit.steps_per_execution`` runs several updates per graph call: results, measurements (their
steps and values) and checkpoints must equal those of one update per call. Validation in one graph
call must equal the batch-by-batch route, ``fit.jit_compile`` (XLA) must make the same update
within float tolerance, and nothing is traced more than once per element spec.
"""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import launch
from experiments.engine import custom_loop, virtual_batch_model
from experiments.engine.schedule import epoch_first_update
from experiments.run import runner
from tests.helpers import event_values

SEED_TABLE = "gin/experiments/seed_table.gin"


def _run(tmp_path, name, steps_per_execution, extra=()):
    launch.parse([SEED_TABLE], [
        "train.batch_size = 16", "train.epochs = 3", "train.verbose = 0",
        "train.deterministic_ops = True", "measurements.every_n_updates = 5",
        "checkpoints.every_n_updates = 7", "checkpoints.keep = 100",
        f"fit.steps_per_execution = {steps_per_execution}", *extra])
    return runner.train(output_dir=str(tmp_path), experiment="speed", run_name=name)


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_execution", [4, 32])
def test_steps_per_execution_gives_the_same_run(tmp_path, steps_per_execution):
    """Same updates, metrics, logged measurement points and checkpoints as one update per call
    (32 updates per epoch, logging every 5 and saving every 7: chunks must end on both)."""
    one = _run(tmp_path, "one", 1)
    many = _run(tmp_path, "many", steps_per_execution)
    assert many["updates"] == one["updates"] == 96
    assert many["final_epoch"] == one["final_epoch"]
    assert many["final_validation"] == one["final_validation"]
    timeless = {k: v for k, v in one["measurements"].items() if not k.startswith("throughput/")}
    assert {k: many["measurements"][k] for k in timeless} == timeless
    for tag in ("gradients/global_norm", "update_ratio/global", "weights/distance_from_init",
                "epoch_loss", "evaluation_loss_vs_iterations"):
        expected = event_values(os.path.join(one["run_dir"], "tensorboard"), tag)
        assert expected, tag
        assert event_values(os.path.join(many["run_dir"], "tensorboard"), tag) == expected, tag
    steps = [event[0] for event in event_values(os.path.join(one["run_dir"], "tensorboard"),
                                                "gradients/global_norm")]
    assert steps == sorted(set(range(5, 97, 5)) | {32, 64, 96})

    def saved(result):
        return sorted(os.path.basename(p) for p in
                      glob.glob(os.path.join(result["run_dir"], "checkpoints", "state-*")))

    assert saved(many) == saved(one) and len(saved(one)) >= 13


class _Spy(keras.callbacks.Callback):
    """Records (hook, batch index, update count) of every train batch hook; at the end, the
    update from the loop's ``epoch_first_update`` and the batch index beside the optimizer's."""

    def __init__(self, every_n_updates=None):
        super().__init__()
        if every_n_updates:
            self.every_n_updates = every_n_updates
        self.calls = []

    def _current(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self._first = epoch_first_update(self.params, self.model)

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("begin", batch, self._current()))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("end", batch, self._first + batch + 1, self._current()))


def _model():
    keras.utils.set_random_seed(0)
    model = virtual_batch_model.as_virtual_batch_model(keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)]),
        micro_batch_size=3)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _train_from(steps, ragged=False):
    rows = 6 * steps - (2 if ragged else 0)  # ragged: the last batch has 4 rows (3 + 1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)).astype("float32")
    y = rng.integers(0, 2, size=rows)

    def train_from(epoch, step, num_epochs):
        batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)
        return batches.repeat(num_epochs).skip(step)

    return train_from


def test_chunks_end_on_cadences_and_resumed_epochs_count_right():
    """A resumed epoch (initial_step 3) with a callback logging every 4 updates: every hook's
    update count matches the optimizer's, chunks end on multiples of 4 and at the epoch's end,
    and the update before a logged one runs alone after its begin hook."""
    model = _model()
    loop = custom_loop.CustomLoop(model, steps_per_execution=10)
    model.optimizer.iterations.assign(10 + 3)  # epoch 1 of 10 updates, resumed at its step 3
    spy = _Spy(every_n_updates=4)
    loop.fit_from(_train_from(10), 10, 3, callbacks=[spy], verbose=0, initial_epoch=1,
                  initial_step=3)
    ends = [call for call in spy.calls if call[0] == "end"]
    assert all(update == actual for _, _, update, actual in ends)
    assert [update for _, _, update, _ in ends] == [15, 16, 19, 20, 23, 24, 27, 28, 29, 30]
    begins = [call for call in spy.calls if call[0] == "begin"]
    assert [update for _, _, update in begins] == [13, 15, 16, 19, 20, 23, 24, 27, 28, 29]


def test_a_callback_acting_before_every_update_gets_one_update_per_call():
    class EveryUpdate(keras.callbacks.Callback):  # e.g. an LR range test: no every_n_updates
        def __init__(self):
            super().__init__()
            self.batches = []

        def on_train_batch_begin(self, batch, logs=None):
            self.batches.append(batch)

    model = _model()
    callback = EveryUpdate()
    custom_loop.CustomLoop(model, steps_per_execution=8).fit_from(
        _train_from(5), 5, 2, callbacks=[callback], verbose=0)
    assert callback.batches == list(range(5)) * 2


def test_an_optimizer_with_ema_ends_with_its_averages_as_in_keras_fit():
    """``use_ema``: Keras' fit ends by swapping the optimizer's moving averages into the model;
    batchlab's loop must too (it ended on the last update's raw weights)."""
    def trained(fit):
        keras.utils.set_random_seed(0)
        model = virtual_batch_model.as_virtual_batch_model(keras.Sequential([
            keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)]))
        model.compile(optimizer=keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        fit(model)
        return model.get_weights()

    train_from = _train_from(5)
    ours = trained(lambda model: custom_loop.CustomLoop(model, steps_per_execution=4).fit_from(
        train_from, 5, 2, verbose=0))
    keras_fit = trained(lambda model: model.fit(train_from(0, 0, 2), epochs=2,
                                                steps_per_epoch=5, verbose=0))
    raw = trained(lambda model: [model.train_on_batch(x, y)
                                 for x, y in train_from(0, 0, 2)])  # no swap
    for a, b in zip(ours, keras_fit):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not all(np.allclose(a, b) for a, b in zip(ours, raw))


def test_validation_in_one_call_equals_batch_by_batch():
    class TestBatches(keras.callbacks.Callback):  # forces the batch-by-batch route
        def on_test_batch_end(self, batch, logs=None):
            pass

    model = _model()
    loop = custom_loop.CustomLoop(model)
    rng = np.random.default_rng(1)
    data = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(20, 4)).astype("float32"), rng.integers(0, 2, 20))).batch(6)
    slow = loop.evaluate(data, return_dict=True, _callbacks=keras.callbacks.CallbackList(
        [TestBatches()], model=model))
    held = loop.evaluate(data, return_dict=True)  # kept as tensors (20 rows, 6 per batch)
    unknown_length = data.filter(lambda x, y: True)  # read through an iterator
    assert int(unknown_length.cardinality()) < 0
    streamed = loop.evaluate(unknown_length, return_dict=True)
    for fast in (held, streamed):
        assert fast.keys() == slow.keys()
        np.testing.assert_allclose(list(fast.values()), list(slow.values()), rtol=1e-6)
    assert np.isnan(list(loop.evaluate(data.take(0), return_dict=True).values())).all()
    assert loop.evaluate(data, return_dict=True) == held


def test_nothing_is_traced_twice():
    """Chunks of 3, 2 and 1 updates and three validations: the train step and the test step are
    each traced once (counted when their Python runs, i.e. when traced)."""
    model = _model()
    traced = {"train": 0, "test": 0}
    for name, method in (("train", model.train_step), ("test", model.test_step)):
        def counting(data, _name=name, _method=method):
            traced[_name] += 1
            return _method(data)
        setattr(model, f"{name}_step", counting)
    loop = custom_loop.CustomLoop(model, steps_per_execution=3)
    data = tf.data.Dataset.from_tensor_slices(
        (np.ones((12, 4), "float32"), np.zeros(12, "int64"))).batch(6)
    loop.fit_from(_train_from(7), 7, 3, validation_data=data, verbose=0,
                  callbacks=[_Spy(every_n_updates=2)])
    assert traced == {"train": 1, "test": 1}
    assert len(loop._train_functions) == 1  # pylint: disable=protected-access


@pytest.mark.slow
def test_jit_compile_makes_the_same_virtual_batch_update():
    """XLA changes the kernels, not the update: k = 2 micro-batches, a ragged last batch."""
    weights = []
    for jit in (False, True):
        model = _model()
        custom_loop.CustomLoop(model, jit_compile=jit, steps_per_execution=4).fit_from(
            _train_from(3, ragged=True), 3, 2, verbose=0)
        weights.append(np.concatenate([w.ravel() for w in model.get_weights()]))
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-5, atol=1e-6)
    assert not np.array_equal(weights[0], np.concatenate(
        [w.ravel() for w in _model().get_weights()]))
