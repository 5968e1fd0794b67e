"""Per-update measurements read inside the train chunk (``UpdateProbe``) log exactly what the
callbacks' own batch hooks log, and no train call has to end on a logged update.

batchlab's loop takes each measurement callback's ``update_probe()``; a callback whose probe is
withheld (``update_probe`` returning None) measures through its hooks as under Keras' ``fit``. The
two must give the same points, bit for bit: same updates, same values.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from callbacks.gradient_noise_scale import GradientNoiseScale
from callbacks.gradient_norm import GradientNorm
from callbacks.weight_distance import WeightDistance
from experiments.engine import chunks, custom_loop, step_measurements, virtual_batch_model


def _hooks_only(cls):
    """``cls`` with its probe withheld: it measures through its batch hooks."""
    return type(f"HooksOnly{cls.__name__}", (cls,), {"update_probe": lambda self: None})


class _Calls(keras.callbacks.Callback):
    """Counts train calls (one ``on_train_batch_end`` per call)."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(batch)


def _model(measure_every):
    keras.utils.set_random_seed(0)
    model = virtual_batch_model.as_virtual_batch_model(keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)]),
        micro_batch_size=3, track_gradient_noise=True, measure_every_n_updates=measure_every)
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


def _train(probed, steps_per_execution, initial_step=0, measure_every=3):
    """10 updates per epoch, 3 epochs (resumed at ``initial_step`` of epoch 0), measurements
    every 3 updates (the step measuring every ``measure_every``); returns the histories, the
    train calls and the final weights."""
    model = _model(measure_every)
    model.optimizer.iterations.assign(initial_step)
    wrap = (lambda cls: cls) if probed else _hooks_only
    callbacks = [wrap(GradientNorm)(every_n_updates=3), wrap(WeightDistance)(every_n_updates=3),
                 wrap(GradientNoiseScale)(every_n_updates=3, decay=0.9)]
    calls = _Calls()
    custom_loop.CustomLoop(model, steps_per_execution=steps_per_execution).fit_from(
        _train_from(10), 10, 3, callbacks=callbacks + [calls], verbose=0,
        initial_step=initial_step)
    return [c.history for c in callbacks], calls.ends, model.get_weights()


@pytest.mark.parametrize("initial_step", [0, 4])
def test_probes_log_what_the_hooks_log(initial_step):
    hooks, hook_calls, hook_weights = _train(False, 32, initial_step)
    probed, probed_calls, probed_weights = _train(True, 32, initial_step)
    assert probed == hooks  # same updates, same values, exactly
    for before, after in zip(hook_weights, probed_weights):
        np.testing.assert_array_equal(before, after)
    norms, distances, noise = probed
    first = initial_step + 1
    expected = sorted(set(range(first, 31)) & (set(range(3, 31, 3)) | {10, 20, 30}))
    assert [u for u, _ in norms] == expected
    assert [u for u, _ in distances] == expected
    assert all("update_ratio/global" in values for _, values in norms)
    assert [u for u, _ in noise] == expected
    # The hooks need a call to end on each logged update (and that update alone, after the
    # weight copy); the probes need one call per epoch.
    assert len(probed_calls) == 3 and len(hook_calls) > 3 * 3


def test_probes_with_one_update_per_call():
    assert _train(True, 1)[0] == _train(False, 1)[0]


def test_probes_when_the_step_measures_every_update():
    """The step fills the norms on every update; it keeps the weights before the logged ones
    (multiples of 3 and the epochs' last) for the update ratios."""
    assert _train(True, 32, measure_every=1)[0] == _train(False, 32, measure_every=1)[0]


def test_a_probed_callback_still_works_in_keras_fit():
    """The same callback objects measure through their hooks in a plain ``model.fit``."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 4)).astype("float32")
    y = rng.integers(0, 2, size=60)
    model = _model(3)
    norms, distance = GradientNorm(every_n_updates=3), WeightDistance(every_n_updates=3)
    model.fit(x, y, batch_size=6, epochs=2, shuffle=False, verbose=0,
              callbacks=[norms, distance])
    assert [u for u, _ in norms.history] == [3, 6, 9, 10, 12, 15, 18, 20]
    assert [u for u, _ in distance.history] == [3, 6, 9, 10, 12, 15, 18, 20]


def test_segments_isolate_each_logged_update():
    probes = [step_measurements.UpdateProbe(3, None, (1,), None),
              step_measurements.UpdateProbe(4, None, (1,), None, at_epoch_end=False)]

    class Offers(keras.callbacks.Callback):  # a callback offering a probe
        def __init__(self, probe):
            super().__init__()
            self.probe = probe

        def update_probe(self):
            return self.probe

    plan = chunks.ChunkPlan([Offers(p) for p in probes], 32)
    assert plan.probes() == probes
    assert plan.cadences == [] and not plan.isolate_epoch_end  # no call ends on their cadence
    # Updates 2..11 (after 1 done), the epoch ending at 11: segments end on logged updates.
    lengths, masks, logged = plan.segments(1, 10, 11)
    assert lengths == [2, 1, 2, 2, 1, 2]  # ..3 | 4 | ..6 | ..8 | 9 | ..11
    assert logged == [(0, 0, 3), (1, 1, 4), (2, 0, 6), (3, 1, 8), (4, 0, 9), (5, 0, 11)]
    assert masks[0] == [True, False] and masks[1] == [False, True]
    assert plan.segments(9, 2, None) == ([2], [[False, False]], [])  # 10, 11: none logged
    assert plan.segments(10, 4, None)[:2] == ([2, 2], [[True, True], [False, False]])
