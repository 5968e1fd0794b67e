"""Gradient norms, update ratios and distance from init against hand-computed GradientTape values,
read back from the TensorBoard event files."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from callbacks import summary_writer
from callbacks.gradient_norm import GradientNorm, SquaredSums
from callbacks.weight_distance import WeightDistance
from experiments.engine import custom_loop, virtual_batch_model
from tests.helpers import event_values

LR = 0.1


def _mlp():
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="tanh",
                                                                   name="hidden"),
                             keras.layers.Dense(3, name="out")], name="net")


def _reference_steps(weights, x, y, batch, updates):
    """Plain Keras: the gradient of each update by GradientTape, and plain SGD steps."""
    model = _mlp()
    model.set_weights(weights)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    steps = []
    for u in range(updates):
        xb, yb = x[u * batch:(u + 1) * batch], y[u * batch:(u + 1) * batch]
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
        before = [v.numpy() for v in model.trainable_variables]
        for v, g in zip(model.trainable_variables, grads):
            v.assign(v - LR * g)
        steps.append((grads, before))
    return steps


def _norm(arrays):
    return float(np.sqrt(sum(np.sum(np.square(a)) for a in arrays)))


def test_logged_norms_ratios_and_distance_match_gradient_tape(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=24)
    model = virtual_batch_model.as_virtual_batch_model(_mlp(), micro_batch_size=4)
    initial = model.get_weights()
    model.compile(optimizer=keras.optimizers.SGD(LR),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    log_dir = str(tmp_path)
    norms = GradientNorm(log_dir, every_n_updates=1)
    distance = WeightDistance(log_dir, every_n_updates=1)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[norms, distance])
    summary_writer.close_all()

    steps = _reference_steps(initial, x, y, 8, 3)
    layers = {"01_hidden": [0, 1], "02_out": [2, 3]}  # kernel, bias of each layer
    for update, (grads, before) in enumerate(steps, start=1):
        logged = dict(norms.history[update - 1][1])
        assert norms.history[update - 1][0] == update
        np.testing.assert_allclose(logged["gradients/global_norm"], _norm(grads), rtol=1e-4)
        # Plain SGD: delta w = -lr * g, so the ratio is lr * ||g|| / ||w||.
        np.testing.assert_allclose(logged["update_ratio/global"],
                                   LR * _norm(grads) / _norm(before), rtol=1e-4)
        for layer, idx in layers.items():
            np.testing.assert_allclose(logged[f"gradients/layer/{layer}"],
                                       _norm([grads[i] for i in idx]), rtol=1e-4)
            layer_weights = _norm([before[i] for i in idx])
            if layer_weights > 0:
                np.testing.assert_allclose(
                    logged[f"update_ratio/layer/{layer}"],
                    LR * _norm([grads[i] for i in idx]) / layer_weights, rtol=1e-4)

    final = [w - sum(LR * s[0][i] for s in steps) for i, w in enumerate(initial)]
    expected_distance = _norm([f - w for f, w in zip(final, initial)])
    assert [u for u, _ in distance.history] == [1, 2, 3]
    np.testing.assert_allclose(distance.history[-1][1]["weights/distance_from_init"],
                               expected_distance, rtol=1e-4)
    np.testing.assert_allclose(distance.history[-1][1]["weights/relative_distance_from_init"],
                               expected_distance / _norm(initial), rtol=1e-4)

    # The same numbers reach TensorBoard, keyed by the update count.
    logged_norms = event_values(log_dir, "gradients/global_norm")
    assert [s for s, _ in logged_norms] == [1, 2, 3]
    np.testing.assert_allclose([v for _, v in logged_norms], [_norm(g) for g, _ in steps],
                               rtol=1e-4)
    assert [s for s, _ in event_values(log_dir, "update_ratio/layer/02_out")] == [1, 2, 3]
    assert [s for s, _ in event_values(log_dir, "weights/distance_from_init/layer/01_hidden")] == \
        [1, 2, 3]


def test_logging_frequency_and_epoch_ends(tmp_path):
    x = np.random.default_rng(1).normal(size=(40, 5)).astype(np.float32)
    y = np.zeros(40, np.int64)
    model = virtual_batch_model.as_virtual_batch_model(_mlp())
    model.compile(optimizer=keras.optimizers.SGD(LR),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    norms = GradientNorm(None, every_n_updates=3, per_layer=False)
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[norms])
    # Every 3 updates and at the last update of each 10-update epoch.
    assert [u for u, _ in norms.history] == [3, 6, 9, 10, 12, 15, 18, 20]
    assert all(set(v) == {"gradients/global_norm", "update_ratio/global"}
               for _, v in norms.history)


def test_plain_keras_model_is_measured_in_its_own_fit():
    # Was refused ("wrap the model ... first"); now measured on the batch just trained (issue
    # #22; the values against a replay: tests/test_callbacks_anywhere.py).
    model = _mlp()
    model.compile(optimizer="sgd", loss="mse")
    norms = GradientNorm()
    model.fit(np.ones((4, 5)), np.ones((4, 3)), verbose=0, callbacks=[norms])
    assert [u for u, _ in norms.history] == [1]


@pytest.mark.parametrize("loop", ["keras", "batchlab"])
def test_each_logged_update_has_its_own_gradient_and_ratio(loop):
    """The step fills the norms (and keeps the weights before) only on the updates the schedule
    measures: every 3rd and each epoch's last (10, 20, off the interval); each logged point has
    that update's own gradient, in Keras' fit and inside batchlab's train calls alike."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=40)
    model = virtual_batch_model.as_virtual_batch_model(_mlp())
    initial = model.get_weights()
    model.compile(optimizer=keras.optimizers.SGD(LR),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    norms = GradientNorm(None, every_n_updates=3)
    if loop == "keras":
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[norms])
    else:
        def train_from(epoch, step, num_epochs):
            return tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat(num_epochs)

        custom_loop.CustomLoop(model, steps_per_execution=32).fit_from(
            train_from, 10, 2, verbose=0, measurements=[norms])
    assert [u for u, _ in norms.history] == [3, 6, 9, 10, 12, 15, 18, 20]

    steps = _reference_steps(initial, np.concatenate([x, x]), np.concatenate([y, y]), 4, 20)
    for update, values in norms.history:
        grads, before = steps[update - 1]
        np.testing.assert_allclose(values["gradients/global_norm"], _norm(grads), rtol=1e-4)
        np.testing.assert_allclose(values["update_ratio/global"],
                                   LR * _norm(grads) / _norm(before), rtol=1e-4)


def test_layer_sums_keep_a_diverging_layer_to_itself():
    """Per-layer sums of squared norms (host side of a logged point): a NaN or infinite norm
    shows in its own layer only, and finite values equal a loop over the layers."""
    groups = {"01_dense": [0, 3], "02_dense": [1, 4], "03_out": [2, 5]}  # interleaved
    sums = SquaredSums(groups, 6)
    rows = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                     [np.nan, 2.0, 3.0, 4.0, 5.0, 6.0],
                     [1.0, np.inf, 3.0, 4.0, 5.0, 6.0]])
    totals, layers = sums(rows)
    loop = [[np.sum(np.square(row[idx])) for idx in groups.values()] for row in rows]
    np.testing.assert_array_equal(layers[0], loop[0])
    assert totals[0] == np.sum(np.square(rows[0]))
    assert np.isnan(layers[1][0]) and np.isfinite(layers[1][1:]).all()
    assert np.isinf(layers[2][1]) and np.isfinite(layers[2][[0, 2]]).all()
    np.testing.assert_array_equal(layers[1][1:], loop[1][1:])
