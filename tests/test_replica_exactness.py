"""What several replicas must not change: clipping, BatchNormalization on an empty replica and
its moving averages, the validation loss of masked sequences, each against plain Keras on one
device, and independent dropout masks over the replicas.

MirroredStrategy over three logical CPUs is set up before TensorFlow starts, so the cases run in
one child process; the reference (``train_on_batch``, ``evaluate``) runs there on the default
strategy.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    R = 3
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * R)
    import keras
    sys.path.insert(0, {repo!r})
    from experiments.engine import custom_loop, virtual_batch_model

    strategy = tf.distribute.MirroredStrategy([f"/cpu:{{i}}" for i in range(R)])
    rng = np.random.default_rng(0)
    out = {{}}

    def replicated(build, optimizer, loss="sparse_categorical_crossentropy", metrics=None):
        with strategy.scope():
            inner = build()
            model = virtual_batch_model.as_virtual_batch_model(inner)
            model.compile(optimizer=optimizer(), loss=loss, metrics=metrics)
        return inner, model

    # Clipping: one update of 16 rows (6, 5, 5 over the replicas), SGD(0.1).
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=16).astype(np.int32)
    dense = lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    keras.utils.set_random_seed(0)
    init = dense().get_weights()
    for name in ("clipnorm", "global_clipnorm", "clipvalue"):
        optimizer = lambda: keras.optimizers.SGD(0.1, **{{name: 0.05 if name == "clipvalue" else 0.3}})
        reference = dense(); reference.set_weights(init)
        reference.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy")
        reference.train_on_batch(x, y)
        inner, model = replicated(dense, optimizer)
        inner.set_weights(init)
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        custom_loop.CustomLoop(model, strategy).fit_from(lambda e, s, n: data, 1, 1, verbose=0)
        out[name] = [float(np.linalg.norm(w - w0)) for w, w0 in
                     ((reference.get_weights()[0], init[0]), (model.get_weights()[0], init[0]))]

    # BatchNormalization, k = 1: 17 rows at B = 16, the last batch's one row on the first
    # replica only; the moving averages read from every replica's copy.
    xb = rng.normal(size=(17, 4)).astype(np.float32) + 2.0
    yb = rng.integers(0, 3, size=17).astype(np.int32)
    batch_norm = lambda: keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(5), keras.layers.BatchNormalization(momentum=0.0),
        keras.layers.Dense(3, activation="softmax")])
    inner, model = replicated(batch_norm, lambda: keras.optimizers.SGD(0.1))
    data = tf.data.Dataset.from_tensor_slices((xb, yb)).batch(16)
    custom_loop.CustomLoop(model, strategy).fit_from(lambda e, s, n: data, 2, 1, verbose=0)
    layer = inner.layers[1]
    out["bn_finite"] = bool(all(np.all(np.isfinite(w)) for w in model.get_weights()))
    out["bn_moving_mean_copies"] = [
        v.numpy().tolist() for v in layer.moving_mean.value.values]

    # Validation of a masked sequence model: one batch of 24 rows (first 12 of 1 step, then
    # 12 of 6 steps) spread over the replicas.
    T, V, C = 6, 7, 3
    xs = rng.integers(1, V, size=(24, T)).astype(np.int32)
    xs[:12, 1:] = 0
    ys = rng.integers(0, C, size=(24, T)).astype(np.int32)
    lstm = lambda: keras.Sequential([
        keras.Input((T,), dtype="int32"), keras.layers.Embedding(V, 4, mask_zero=True),
        keras.layers.LSTM(5, return_sequences=True), keras.layers.Dense(C, activation="softmax")])
    keras.utils.set_random_seed(0)
    init = lstm().get_weights()
    data = tf.data.Dataset.from_tensor_slices((xs, ys)).batch(24)
    reference = lstm(); reference.set_weights(init)
    reference.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    inner, model = replicated(lstm, lambda: keras.optimizers.SGD(0.1), metrics=["accuracy"])
    inner.set_weights(init)
    out["masked"] = [reference.evaluate(data, verbose=0, return_dict=True),
                     custom_loop.CustomLoop(model, strategy).evaluate(data, return_dict=True)]
    # Dropout: 6 rows of ones (2 per replica) -> Dropout(0.5) -> Dense(1, no bias, zeros), MAE
    # against 1: one SGD(1) update sets w_j = (2 / 6) * (rows that kept input j).
    dropout = lambda: keras.Sequential([
        keras.Input((64,)), keras.layers.Dropout(0.5, seed=7),
        keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    inner, model = replicated(dropout, lambda: keras.optimizers.SGD(1.0), loss="mae")
    data = tf.data.Dataset.from_tensor_slices(
        (np.ones((6, 64), np.float32), np.ones((6, 1), np.float32))).batch(6)
    custom_loop.CustomLoop(model, strategy).fit_from(lambda e, s, n: data, 1, 1, verbose=0)
    out["dropout_kept"] = (inner.get_weights()[0][:, 0] * 3).tolist()
    out["dropout_states"] = [
        v.numpy().tolist() for v in inner.layers[0].seed_generator.state.value.values]
    try:  # synchronized BatchNormalization inside the micro-batch loop on several replicas
        with strategy.scope():
            virtual_batch_model.as_virtual_batch_model(keras.Sequential([
                keras.Input((4,)), keras.layers.BatchNormalization(synchronized=True),
                keras.layers.Dense(3)]), micro_batch_size=4)
        out["synchronized_in_loop"] = None
    except ValueError as error:
        out["synchronized_in_loop"] = str(error)
    # Callbacks in a plain user fit under the strategy: GradientNorm would read one replica's
    # gradient (refused); the range test read its rate with float(), which a MirroredVariable
    # refuses.
    from callbacks.gradient_norm import GradientNorm
    from callbacks.lr_range_test import LearningRateRangeTest
    with strategy.scope():
        plain = dense()
        plain.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss="sparse_categorical_crossentropy")
    try:
        plain.fit(x[:12], y[:12], batch_size=6, epochs=1, verbose=0, callbacks=[GradientNorm()])
        out["plain_gradient_norm"] = None
    except ValueError as error:
        out["plain_gradient_norm"] = str(error)
    ramp = LearningRateRangeTest(1e-3, 1e-1, num_updates=3)
    plain.fit(x[:12], y[:12], batch_size=6, epochs=2, verbose=0, callbacks=[ramp])  # 2 per replica
    out["ramp_rates"] = [float(r) for r in ramp.learning_rates]
    out["rate_after_ramp"] = float(keras.ops.convert_to_numpy(plain.optimizer.learning_rate))
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    script = tmp_path_factory.mktemp("replicas") / "replicas.py"
    script.write_text(SCRIPT.format(repo=REPO))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["clipnorm", "global_clipnorm", "clipvalue"])
def test_clipping_applies_to_the_gradient_of_the_batch(measured, name):
    """Keras clips each replica's share before summing them; the step clips the sum, so the
    update is that of one device (it was up to 1.9 times the clipped update over 3 replicas)."""
    one_device, replicas = measured[name]
    np.testing.assert_allclose(replicas, one_device, rtol=1e-5)


def test_batch_normalization_on_a_replica_without_rows_stays_finite(measured):
    """A one-row last batch leaves two replicas without rows: the pass over 0 rows made
    BatchNormalization's gamma and moving averages NaN."""
    assert measured["bn_finite"]


def test_batch_normalization_moving_averages_are_one_value_over_replicas(measured):
    """Each replica updates its own copy of the moving mean from its rows; averaged after every
    update, the copies agree (they drifted apart: each kept its own half's mean)."""
    copies = np.array(measured["bn_moving_mean_copies"])
    assert np.all(np.isfinite(copies))
    np.testing.assert_allclose(copies, np.broadcast_to(copies[0], copies.shape), rtol=1e-6)


def test_masked_validation_loss_is_the_batch_loss(measured):
    """Keras' test_step on each replica gives that replica's masked mean, and the replicas'
    means averaged by rows are not the batch's (28% off on this batch)."""
    one_device, replicas = measured["masked"]
    for name, value in one_device.items():
        np.testing.assert_allclose(replicas[name], value, rtol=1e-5, err_msg=name)


def test_synchronized_batch_normalization_in_the_micro_batch_loop_is_refused(measured):
    """Its all-reduce cannot run inside the loop's tf.while_loop on several replicas (TensorFlow
    failed at the first update with "merge_call called while defining a new graph")."""
    assert "cannot run inside the micro-batch loop" in (measured["synchronized_in_loop"] or "")


def test_replicas_draw_their_own_dropout_masks(measured):
    """Keras' seed generators are mirrored, so every replica drew the same masks: each input's
    count of keeping rows was a multiple of the 3 replicas. Each replica now draws its own (the
    counts of 64 inputs over 6 rows, about Binomial(6, 1/2)), and the generators' state stays one
    value over the replicas."""
    kept = np.array(measured["dropout_kept"])
    np.testing.assert_allclose(kept, np.round(kept), atol=1e-4)
    kept = np.round(kept).astype(int)
    assert kept.min() >= 0 and kept.max() <= 6
    assert np.any(kept % 3 != 0), kept
    assert 2.4 < kept.mean() < 3.6, kept.mean()
    states = np.array(measured["dropout_states"])
    assert np.all(states == states[0]), states


def test_plain_callbacks_under_a_strategy_refuse_or_work(measured):
    """GradientNorm on a plain model logged one replica's gradient norm (0.4497 where the
    batch's is 0.5706); it now refuses. The range test crashed reading a MirroredVariable."""
    assert "under 3 replicas that is one replica's share" in (
        measured["plain_gradient_norm"] or "")
    np.testing.assert_allclose(measured["ramp_rates"], [1e-3, 1e-2, 1e-1], rtol=1e-5)
    assert measured["rate_after_ramp"] == pytest.approx(0.1)
