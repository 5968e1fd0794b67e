"""Per-update measurements in their one shape (``experiments.engine.measurement``): batchlab's
loop reads them inside its train calls, on the updates ``schedule.UpdateSchedule`` plans, and no
train call has to end on a measured update; Keras' own ``fit`` runs the same objects through their
Keras hooks and logs the same points.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from callbacks.gradient_noise_scale import GradientNoiseScale
from callbacks.base import LoggedMeasurement
from callbacks.gradient_norm import GradientNorm
from callbacks.weight_distance import WeightDistance
from experiments.engine import custom_loop, virtual_batch_model
from experiments.engine.schedule import Cadence, UpdateSchedule


class _Calls(keras.callbacks.Callback):
    """Counts train calls (one ``on_train_batch_end`` per call)."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(batch)


def _model():
    keras.utils.set_random_seed(0)
    model = virtual_batch_model.as_virtual_batch_model(keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)]),
        micro_batch_size=3, track_gradient_noise=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _train_from(steps):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6 * steps, 4)).astype("float32")
    y = rng.integers(0, 2, size=6 * steps)

    def train_from(epoch, step, num_epochs):
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(6).repeat(num_epochs).skip(step)

    return train_from


def _measurements():
    return [GradientNorm(every_n_updates=3), WeightDistance(every_n_updates=3),
            GradientNoiseScale(every_n_updates=3, horizon_examples=256)]


def _train(steps_per_execution, initial_step=0, measured=True):
    """10 updates per epoch, 3 epochs (resumed at ``initial_step`` of epoch 0), measurements
    every 3 updates; returns the histories, the train calls and the final weights."""
    model = _model()
    model.optimizer.iterations.assign(initial_step)
    measurements = _measurements() if measured else []
    calls = _Calls()
    custom_loop.CustomLoop(model, steps_per_execution=steps_per_execution).fit_from(
        _train_from(10), 10, 3, callbacks=[calls], verbose=0, initial_step=initial_step,
        measurements=measurements)
    return [m.history for m in measurements], calls.ends, model.get_weights()


@pytest.mark.slow
@pytest.mark.parametrize("initial_step", [0, 4])
def test_measurements_read_inside_the_calls_equal_one_update_per_call(initial_step):
    single, single_calls, single_weights = _train(1, initial_step)
    chunked, chunked_calls, chunked_weights = _train(32, initial_step)
    assert chunked == single  # same updates, same values, exactly
    for before, after in zip(single_weights, chunked_weights):
        np.testing.assert_array_equal(before, after)
    norms, distances, noise = chunked
    first = initial_step + 1
    expected = sorted(set(range(first, 31)) & (set(range(3, 31, 3)) | {10, 20, 30}))
    assert [u for u, _ in norms] == expected
    assert [u for u, _ in distances] == expected
    assert all("update_ratio/global" in values for _, values in norms)
    assert [u for u, _ in noise] == expected
    # Read inside the calls: one call per epoch, none ending on a measured update.
    assert len(chunked_calls) == 3 and len(single_calls) == 30 - initial_step


def test_measuring_does_not_change_training():
    measured = _train(32)[2]
    for plain, weights in zip(_train(32, measured=False)[2], measured):
        np.testing.assert_array_equal(plain, weights)


def test_the_same_measurements_run_in_keras_fit_as_callbacks():
    """Keras' fit on the same batches logs the same updates, and the same values up to the
    float rounding of its own traced step."""
    x = np.concatenate([np.asarray(batch[0]) for batch in _train_from(10)(0, 0, 1)])
    y = np.concatenate([np.asarray(batch[1]) for batch in _train_from(10)(0, 0, 1)])
    model = _model()
    measurements = _measurements()
    model.fit(x, y, batch_size=6, epochs=3, shuffle=False, verbose=0,
              callbacks=measurements)
    loop = _train(32)[0]
    for by_fit, by_loop in zip([m.history for m in measurements], loop):
        assert [u for u, _ in by_fit] == [u for u, _ in by_loop]
        for (_, fit_values), (_, loop_values) in zip(by_fit, by_loop):
            assert sorted(fit_values) == sorted(loop_values)
            for tag, value in fit_values.items():
                np.testing.assert_allclose(value, loop_values[tag], rtol=1e-4, atol=1e-6,
                                           err_msg=tag)


def test_schedule_segments_end_on_each_measured_update():
    schedule = UpdateSchedule([Cadence(3, at_epoch_end=True), Cadence(4)], [], 32)
    assert schedule.call_ends == [] and not schedule.isolate_epoch_end  # no call ends on them
    # Updates 2..11 (after 1 done), the epoch ending at 11: segments end on measured updates.
    lengths, masks, logged = schedule.segments(1, 10, 11)
    assert lengths == [2, 1, 2, 2, 1, 2]  # ..3 | 4 | ..6 | ..8 | 9 | ..11
    assert logged == [(0, 0, 3), (1, 1, 4), (2, 0, 6), (3, 1, 8), (4, 0, 9), (5, 0, 11)]
    assert masks[0] == [True, False] and masks[1] == [False, True]
    assert schedule.segments(9, 2, None) == ([2], [[False, False]], [])  # 10, 11: none
    assert schedule.segments(10, 4, None)[:2] == ([2, 2], [[True, True], [False, False]])


def test_a_measurement_read_after_the_call_ends_calls_on_its_updates():
    schedule = UpdateSchedule([], [], 32, read_after=[Cadence(4)])
    assert list(schedule.chunks(0, 10, 0)) == [(0, 4), (4, 4), (8, 2)]


class _LearningRate(LoggedMeasurement):
    """docs/architecture.md's worked example of a new measurement, as written there."""

    def __init__(self, log_dir=None, every_n_updates=10):
        super().__init__(log_dir)
        self.cadence = Cadence(every_n_updates, at_epoch_end=True)
        self.shape = ()

    def read(self, update):
        return tf.cast(self.model.optimizer.learning_rate, tf.float64)

    def values(self, update, row):
        return {"optimizer/learning_rate": float(row)}


def test_the_documented_new_measurement_works_in_both_loops():
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([5], [0.1, 0.01])
    logged = []
    for loop in ("batchlab", "keras"):
        model = _model()
        model.compile(optimizer=keras.optimizers.SGD(schedule),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rate = _LearningRate(every_n_updates=4)
        if loop == "batchlab":
            custom_loop.CustomLoop(model, steps_per_execution=32).fit_from(
                _train_from(10), 10, 1, verbose=0, callbacks=[rate])
        else:
            x = np.concatenate([np.asarray(b[0]) for b in _train_from(10)(0, 0, 1)])
            y = np.concatenate([np.asarray(b[1]) for b in _train_from(10)(0, 0, 1)])
            model.fit(x, y, batch_size=6, epochs=1, shuffle=False, verbose=0, callbacks=[rate])
        logged.append([(u, round(v["optimizer/learning_rate"], 6)) for u, v in rate.history])
    # The rate the next update applies: 0.1 up to update 5, 0.01 after.
    assert logged[0] == logged[1] == [(4, 0.1), (8, 0.01), (10, 0.01)]


def _one_update(model, measured, wanted):
    """One update of ``model`` by its step traced for ``measured`` updates (True), for the others
    (False) or for any (None), with ``measured_update`` set to ``wanted``; returns the update's
    weight change."""
    x, y = next(iter(_train_from(1)(0, 0, 1)))
    model.measurements.measured_update.assign(wanted)
    before = [w.numpy() for w in model.trainable_variables]

    @tf.function(autograph=False)
    def step(data):
        with model.measurements.tracing(measured):
            model.train_step(data)

    step((x, y))
    return [w.numpy() - b for w, b in zip(model.trainable_variables, before)]


@pytest.mark.parametrize("measured", [True, False, None])
def test_a_step_traced_for_one_kind_of_update_records_what_that_kind_records(measured):
    """batchlab's loop traces the step twice (``graph_calls.chunk_function``): for a measured
    update it fills the norms and samples the noise scale whatever ``measured_update`` says; for
    the others it records nothing, even on the update ``measured_update`` names; traced for any
    update it tests ``measured_update`` (here naming the update) as before."""
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.measurements.reset_noise_scale(256)
    wanted = 0 if measured else 1  # the traced kind against what the variable says
    step = _one_update(model, measured, wanted)
    norm = float(model.measurements.gradient_norm.numpy())
    sampled = model.measurements.noise_scale_values()["sampled"]
    if measured is False:
        assert norm == 0.0 and sampled == 0
    else:  # the norm of the applied gradient: |delta w| / lr under plain SGD
        applied = np.sqrt(sum(np.sum(np.square(d)) for d in step)) / 0.5
        np.testing.assert_allclose(norm, applied, rtol=1e-5)
        assert sampled == 1


def test_periodic_noise_samples_between_measured_updates_are_kept():
    """With ``sample_every_n_updates`` the step traced for unmeasured updates still samples
    every n-th one: the averages equal those of Keras' fit, whose step tests each update."""
    def measurements():
        return [GradientNoiseScale(every_n_updates=5, horizon_examples=64,
                                   sample_every_n_updates=2)]

    x = np.concatenate([np.asarray(b[0]) for b in _train_from(10)(0, 0, 1)])
    y = np.concatenate([np.asarray(b[1]) for b in _train_from(10)(0, 0, 1)])
    states = []
    for loop in ("batchlab", "keras"):
        model, logged = _model(), measurements()
        if loop == "batchlab":
            custom_loop.CustomLoop(model, steps_per_execution=32).fit_from(
                _train_from(10), 10, 2, verbose=0, measurements=logged)
        else:
            model.fit(x, y, batch_size=6, epochs=2, shuffle=False, verbose=0, callbacks=logged)
        states.append(model.measurements.noise_scale.numpy())
    # Updates 2, 4, ..., 20 and the logged 5, 15 (10 and 20 are both): 12 samples.
    assert states[0][8] == states[1][8] == 12
    np.testing.assert_allclose(states[0], states[1], rtol=1e-4, atol=1e-7)
