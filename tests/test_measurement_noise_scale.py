"""Gradient noise scale: the train step's ingredients against GradientTape, and B_simple against the
closed form of linear regression with Gaussian inputs."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from callbacks.gradient_noise_scale import GradientNoiseScale
from experiments.engine import custom_loop, virtual_batch_model
from tests.helpers import event_tags, event_values, linear_model


def _mean_grad(model, loss_fn, x, y):
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    return np.concatenate([np.ravel(g) for g in tape.gradient(loss, model.trainable_variables)])


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum"])
def test_step_records_micro_and_batch_squared_norms(reduction):
    """sum_j B_j |G_j|^2 / B (equal micro-batches: the mean of |G_j|^2) and |mean_j G_j|^2 of
    per-example-mean gradients, data loss only."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3)).astype(np.float32)
    y = rng.normal(size=(12, 1)).astype(np.float32)
    kernel = rng.normal(size=3)
    loss = keras.losses.MeanSquaredError(reduction=reduction)
    model = virtual_batch_model.as_virtual_batch_model(
        linear_model(3, kernel, keras.regularizers.L2(0.1)), micro_batch_size=4,
        track_gradient_noise=True)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)
    model.measurements.reset_noise_scale(4096, sample_every=1)  # no callback: sample each update
    model.fit(x, y, batch_size=12, epochs=1, shuffle=False, verbose=0)

    reference = linear_model(3, kernel)  # no regularizer: the noise scale is about the data
    mean_loss = keras.losses.MeanSquaredError()
    micro = [_mean_grad(reference, mean_loss, x[i:i + 4], y[i:i + 4]) for i in range(0, 12, 4)]
    expected_micro = np.mean([np.sum(g ** 2) for g in micro])
    expected_batch = np.sum(_mean_grad(reference, mean_loss, x, y) ** 2)
    m = model.measurements
    np.testing.assert_allclose(m.micro_gradient_sq_norm.numpy(), expected_micro, rtol=1e-4)
    np.testing.assert_allclose(m.batch_gradient_sq_norm.numpy(), expected_batch, rtol=1e-4)
    assert m.micro_batch_size.numpy() == 4 and m.batch_size.numpy() == 12
    assert m.num_micro_batches.numpy() == 3


def test_b_simple_converges_to_linear_regression_closed_form(tmp_path):
    """y = x.w* + e, x ~ N(0, I_d), e ~ N(0, s^2), squared error, weights frozen at w* + delta.

    Per-example gradient g = 2x(x.delta - e): G = 2 delta, Sigma = 4((|delta|^2 + s^2) I +
    delta delta^T), so |G|^2 = 4|delta|^2, tr(Sigma) = 4(d(|delta|^2 + s^2) + |delta|^2) and
    B_simple = d(1 + s^2/|delta|^2) + 1 = 9 for d = 4, |delta| = 1, s = 1.
    """
    d, sigma, micro, k, updates = 4, 1.0, 8, 4, 600
    rng = np.random.default_rng(1)
    w_star = rng.normal(size=d)
    delta = np.full(d, 0.5)  # |delta|^2 = 1
    x = rng.normal(size=(updates * micro * k, d)).astype(np.float32)
    y = (x @ w_star + sigma * rng.normal(size=len(x))).astype(np.float32)[:, None]
    model = virtual_batch_model.as_virtual_batch_model(linear_model(d, w_star + delta),
                                              micro_batch_size=micro, track_gradient_noise=True)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    noise = GradientNoiseScale(str(tmp_path), every_n_updates=50, horizon_examples=20000,
                               sample_every_n_updates=1)
    model.fit(x, y, batch_size=micro * k, epochs=1, shuffle=False, verbose=0, callbacks=[noise])

    final = noise.history[-1][1]
    np.testing.assert_allclose(final["noise_scale/gradient_sq_norm"], 4.0, rtol=0.1)
    np.testing.assert_allclose(final["noise_scale/trace_sigma"], 36.0, rtol=0.1)
    np.testing.assert_allclose(final["noise_scale/b_simple"], 9.0, rtol=0.1)
    logged = event_values(str(tmp_path), "noise_scale/b_simple")
    assert [step for step, _ in logged] == list(range(50, updates + 1, 50))
    np.testing.assert_allclose(logged[-1][1], final["noise_scale/b_simple"], rtol=1e-5)


def test_k1_says_undefined_instead_of_logging(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    model = virtual_batch_model.as_virtual_batch_model(linear_model(3, np.ones(3)),
                                              track_gradient_noise=True)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    noise = GradientNoiseScale(str(tmp_path), every_n_updates=1)
    model.fit(x, x[:, :1], batch_size=8, epochs=1, verbose=0, callbacks=[noise])
    tags = event_tags(str(tmp_path))
    assert "noise_scale/note" in tags
    assert not any(t.startswith("noise_scale/") and t != "noise_scale/note" for t in tags)
    assert noise.history == [] and noise.defined is False


def test_needs_tracking_on_the_model():
    model = virtual_batch_model.as_virtual_batch_model(linear_model(3, np.ones(3)), micro_batch_size=2)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x = np.ones((8, 3), np.float32)
    with pytest.raises(ValueError, match="track_gradient_noise"):
        model.fit(x, x[:, :1], batch_size=4, verbose=0, callbacks=[GradientNoiseScale()])


class _Ingredients(keras.callbacks.Callback):
    """Reads the step's per-update ingredients after every update (a reference, not a cost)."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        m = self.model.measurements
        self.rows.append([float(v.numpy()) for v in (
            m.micro_gradient_sq_norm, m.batch_gradient_sq_norm, m.micro_batch_size,
            m.batch_size)])


def test_step_keeps_the_moving_averages_of_sampled_updates(tmp_path):
    """The train step itself feeds the bias-corrected EMAs (no callback call per update) on the
    updates ``sample_every_n_updates`` and the logging cadence pick, decaying them by
    exp(-examples since the last sample / horizon); they equal a NumPy EMA of the sampled
    ingredients (rows-weighted estimates, module doc of ``engine.noise_scale``)."""
    rng = np.random.default_rng(3)
    d, micro, k, updates, horizon, every, log_every = 3, 4, 3, 12, 40.0, 3, 4
    x = rng.normal(size=(updates * micro * k, d)).astype(np.float32)
    y = (x @ np.ones(d) + rng.normal(size=len(x))).astype(np.float32)[:, None]
    model = virtual_batch_model.as_virtual_batch_model(linear_model(d, np.zeros(d)),
                                              micro_batch_size=micro, track_gradient_noise=True)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    noise = GradientNoiseScale(str(tmp_path), every_n_updates=log_every,
                               horizon_examples=horizon, sample_every_n_updates=every)
    ingredients = _Ingredients()
    model.fit(x, y, batch_size=micro * k, epochs=1, shuffle=False, verbose=0,
              callbacks=[noise, ingredients])

    sampled = [u for u in range(1, updates + 1) if u % every == 0 or u % log_every == 0]
    gradient_sq = trace = weight = 0.0
    last = 0
    for update in sampled:
        small_sq, big_sq, _, rows = ingredients.rows[update - 1]
        pieces = rows / micro
        tr = rows * (small_sq - big_sq) / (pieces - 1)  # small_sq: sum_j B_j |G_j|^2 / B
        g2 = big_sq - tr / rows  # no regularizer: followed = data gradient
        decay = np.exp(-(update - last) * rows / horizon)
        gradient_sq = decay * gradient_sq + (1 - decay) * g2
        trace = decay * trace + (1 - decay) * tr
        weight = decay * weight + (1 - decay)
        last = update
    state = model.measurements.noise_scale_values()
    assert state["sampled"] == state["count"] == len(sampled)
    final = noise.history[-1][1]
    assert noise.history[-1][0] == updates
    np.testing.assert_allclose(final["noise_scale/gradient_sq_norm"], gradient_sq / weight,
                               rtol=1e-5)
    np.testing.assert_allclose(final["noise_scale/trace_sigma"], trace / weight, rtol=1e-5)
    np.testing.assert_allclose(final["noise_scale/b_simple"], trace / gradient_sq, rtol=1e-5)
    # Each logged point carries its own update's raw estimates.
    np.testing.assert_allclose(final["noise_scale/raw/trace_sigma"], tr, rtol=1e-5)
    np.testing.assert_allclose(final["noise_scale/raw/gradient_sq_norm"], g2, rtol=1e-4,
                               atol=1e-6)
    assert final["noise_scale/raw/batch_size"] == micro * k
    assert final["noise_scale/raw/num_pieces"] == k
    raw = noise.result()["noise_scale/raw"]
    assert [row[0] for row in raw] == [u for u in range(1, updates + 1) if u % log_every == 0]

    # A second fit with the same callback carries on; a new callback starts afresh.
    model.fit(x, y, batch_size=micro * k, epochs=1, shuffle=False, verbose=0, callbacks=[noise])
    assert model.measurements.noise_scale_values()["sampled"] == 2 * len(sampled)
    model.fit(x[:micro * k], y[:micro * k], batch_size=micro * k, epochs=1, verbose=0,
              callbacks=[GradientNoiseScale(sample_every_n_updates=1)])
    assert model.measurements.noise_scale_values()["sampled"] == 1


def test_a_schedule_starting_at_k1_logs_once_its_batches_split():
    """A batch-size schedule from k = 1 (B = b = 8) to k = 4 (B = 32): no point while no update
    had two micro-batches, then B_simple from the first logged update of the k = 4 stage on (it
    used to be declared undefined at the first logged point, for the whole run)."""
    x, y, model = _regression(64, micro=8, seed=0)
    sizes = {0: 8, 1: 32}

    def train_from(epoch, step, num_epochs):
        parts = [tf.data.Dataset.from_tensor_slices((x, y)).batch(sizes[e])
                 for e in range(epoch, epoch + num_epochs)]
        data = parts[0]
        for part in parts[1:]:
            data = data.concatenate(part)
        return data.skip(step)

    noise = GradientNoiseScale(every_n_updates=2, horizon_examples=256)
    custom_loop.CustomLoop(model, steps_per_execution=16).fit_from(
        train_from, lambda epoch: 64 // sizes[epoch], 2, verbose=0, measurements=[noise])
    assert noise.defined
    assert [u for u, _ in noise.history] == [10]  # 8 updates at k = 1, then 2 at k = 4
    assert noise.result()["noise_scale/b_simple"] > 0


def test_a_single_piece_epoch_end_repeats_no_point():
    """66 rows at B = 16 = 4 x 4: each epoch's last update has 2 rows, one micro-batch: no
    sample, so no point (it repeated the previous point's averages as a new measurement)."""
    x, y, model = _regression(66, micro=4, seed=1)
    noise = GradientNoiseScale(every_n_updates=2, horizon_examples=64)
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[noise])
    # 5 updates an epoch (16, 16, 16, 16, 2): logged at 2, 4, 6, 8, 10 and the epoch ends 5, 10
    steps = [u for u, _ in noise.history]
    assert steps == [2, 4, 6, 8]  # 5 and 10 had one piece; 10 is also a multiple of 2
    curve = [v for _, v in noise.result()["noise_scale/b_simple_curve"]]
    assert len(set(curve)) == len(curve)


def _regression(rows, micro, seed):
    """Rows of y = x (1, -2, 0.5) + noise and a linear batchlab model that tracks the noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3 * rng.normal(size=(rows, 1))).astype(
        np.float32)
    model = virtual_batch_model.as_virtual_batch_model(linear_model(3, np.zeros(3)),
                                                       micro_batch_size=micro,
                                                       track_gradient_noise=True)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return x, y, model
