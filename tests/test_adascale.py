"""AdaScale (``train.learning_rate_scaling = @adascale()``) against the exact linear-regression
recursion, and bit for bit against the run without it where S = 1.

For y = x.w* + s e with x ~ N(0, I_d), the squared error and SGD at learning rate eps on B rows,
m = E|delta|^2 follows m' = (1 - 2 eps)^2 m + (4 eps^2 / B)((d + 1) m + d s^2), and
tr(Sigma) = 4((d + 1) m + d s^2), |G|^2 = 4 m. The base run's expected loss at update T is that
recursion, computed here; the AdaScale runs are measured from their weights.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import launch
from experiments.engine import distribute
from experiments.engine.adascale import AdaScale
from experiments.engine.virtual_batch_model import as_virtual_batch_model
from experiments.inputs import layout as layout_lib
from experiments.inputs import pipelines as pipelines_lib
from experiments.inputs.arrays import arrays
from experiments.models import learning_rate_scaling
from tests.helpers import event_values, linear_model, read_json, run_dirs

D, S_NOISE = 10, 1.0


def regression_data(n, seed=0, d=D, s=S_NOISE):
    """(Data, w*): n rows of y = x.w* + s e, x ~ N(0, I_d)."""
    rng = np.random.default_rng(seed)
    w_star = rng.normal(size=d)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ w_star + s * rng.normal(size=n)).astype(np.float32)[:, None]
    return arrays(x=x, y=y, task="regression", validation_split=0.0), w_star


def expected_loss(m0, eps, batch, updates, d=D, s=S_NOISE):
    """E|delta_T|^2 of plain SGD, by the recursion."""
    m = m0
    for _ in range(updates):
        m = (1 - 2 * eps) ** 2 * m + 4 * eps ** 2 / batch * ((d + 1) * m + d * s * s)
    return m


class Trajectory(keras.callbacks.Callback):
    """|delta|^2 and tau after every update (``every_n_updates = 1``: one update per call)."""

    every_n_updates = 1

    def __init__(self, w_star):
        super().__init__()
        self.w_star = w_star
        self.rows = []  # (update, tau, |delta|^2)

    def on_train_batch_end(self, batch, logs=None):
        kernel = self.model.layers[-1].kernel.numpy().ravel()
        scaling = self.model.learning_rate_scaling
        tau = float(scaling.progress.numpy()) if scaling is not None else float("nan")
        self.rows.append((int(self.model.optimizer.iterations.numpy()), tau,
                          float(np.sum((kernel - self.w_star) ** 2))))


def train_linear(data, w_star, batch, micro, learning_rate, epochs=1, seed=0, adascale=None,
                 horizon=256.0, extra=()):
    """A linear model trained from w = 0 through batchlab's loop; AdaScale at B_0 = ``adascale``
    (None: without). Returns (model, Trajectory)."""
    keras.utils.set_random_seed(seed)
    layout = layout_lib.build(data, batch, micro)
    pipelines = pipelines_lib.make(data, layout, seed=seed)
    model = as_virtual_batch_model(linear_model(D, np.zeros(D)),
                                   micro_batch_size=layout.split_size,
                                   track_gradient_noise=layout.num_micro_batches > 1)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    model.measurements.reset_noise_scale(horizon)
    if adascale is not None:
        model.measurements.sample_every_update = True
        AdaScale(adascale, estimates=layout.num_micro_batches > 1).attach(model)
    trajectory = Trajectory(w_star)
    distribute.fit(model, pipelines, epochs, [trajectory, *extra],
                   tf.distribute.get_strategy(), verbose=0)
    return model, trajectory


def loss_at_progress(trajectory, tau):
    """|delta|^2 interpolated at progress ``tau``."""
    rows = np.array(trajectory.rows)
    return float(np.interp(tau, rows[:, 1], rows[:, 2]))


def test_the_gain_formula_is_one_at_s1_and_between_1_and_s():
    assert learning_rate_scaling.gain(40.0, 4.0, 8, 8) == 1.0
    # noise only: r = S; gradient only: r = 1; in between, the closed form
    assert learning_rate_scaling.gain(40.0, 0.0, 32, 4) == pytest.approx(8.0)
    assert learning_rate_scaling.gain(0.0, 4.0, 32, 4) == pytest.approx(1.0)
    sigma2, g2 = 40.0 / 4, 4.0
    assert learning_rate_scaling.gain(40.0, 4.0, 32, 4) == pytest.approx(
        (sigma2 + g2) / (sigma2 / 8 + g2))
    assert learning_rate_scaling.gain(40.0, -3.0, 32, 4) == pytest.approx(8.0)  # |G|^2 < 0: 0


def mean_loss_over_progress(trajectory, low, high):
    """The mean of |delta|^2 over progress tau in (low, high]: each update weighted by the
    progress it made (its gain), i.e. uniform in tau."""
    rows = np.array(trajectory.rows)
    gains = np.diff(np.concatenate([[0.0], rows[:, 1]]))
    keep = (rows[:, 1] > low) & (rows[:, 1] <= high)
    return float(np.sum(rows[keep, 2] * gains[keep]) / np.sum(gains[keep]))


@pytest.mark.slow
def test_adascale_at_s8_reaches_the_base_expected_loss_at_equal_progress():
    """B_0 = 4, eps = 0.02: the base run's E|delta|^2 over updates 200..3000 (its noise floor,
    by the recursion, computed here) against AdaScale at B = 32 (k = 8, S = 8) over the same
    progress tau: within 10% (the mean of 3 seeds; one seed's point value at tau = 200 varies by
    +-50%, so the comparison is over the stretch of tau). The last update's gain follows r(m) at
    its own |delta|^2."""
    data, w_star = regression_data(20000, seed=0)
    m = [float(np.sum(w_star ** 2))]
    for _ in range(3000):
        m.append(expected_loss(m[-1], 0.02, 4, 1))
    want = float(np.mean(m[201:]))
    reached, gains = [], []
    for seed in range(3):
        model, trajectory = train_linear(data, w_star, 32, 4, 0.02, seed=seed, adascale=4,
                                         horizon=512.0)
        assert trajectory.rows[-1][1] >= 3000  # one epoch of 625 updates passes tau = 3000
        reached.append(mean_loss_over_progress(trajectory, 200, 3000))
        last = trajectory.rows[-1][2]
        gains.append((float(model.learning_rate_scaling.gain.numpy()),
                      learning_rate_scaling.gain(4 * ((D + 1) * last + D), 4 * last, 32, 4)))
    assert abs(np.mean(reached) / want - 1) <= 0.10, (reached, want)
    measured, truth = np.array(gains).T
    assert np.median(np.abs(measured / truth - 1)) <= 0.15, gains


def test_at_s1_progress_counts_updates_and_the_run_is_the_base_run_bit_for_bit():
    """k = 1 with B_0 = B (S = 1), under a decaying schedule: tau equals the update count
    exactly and every weight equals the run without AdaScale, bit for bit."""
    data, w_star = regression_data(600, seed=1)

    def run(scaled):
        keras.utils.set_random_seed(3)
        layout = layout_lib.build(data, 16)
        pipelines = pipelines_lib.make(data, layout, seed=3)
        model = as_virtual_batch_model(linear_model(D, np.zeros(D)))
        schedule = keras.optimizers.schedules.ExponentialDecay(0.05, 10, 0.7)
        model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9), loss="mse")
        if scaled:
            AdaScale(16, estimates=False).attach(model)
        trajectory = Trajectory(w_star)
        distribute.fit(model, pipelines, 2, [trajectory], tf.distribute.get_strategy(),
                       verbose=0)
        return model, trajectory

    plain, _ = run(False)
    scaled, trajectory = run(True)
    assert all(tau == update for update, tau, _ in trajectory.rows)
    assert len(trajectory.rows) == 2 * 38
    for a, b in zip(plain.get_weights(), scaled.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert float(scaled.learning_rate_scaling.gain.numpy()) == 1.0


def test_the_logged_learning_rate_is_the_one_the_update_applied():
    """Under a decaying schedule at S = 4, ``adascale/learning_rate`` is lr(tau_t) * r_t, the
    rate of the update just applied: with plain SGD the kernel moved by -rate * gradient, the
    gradient taken here by GradientTape on that update's rows at the weights before it. (The
    optimizer's rate read after the update is lr(tau_t + r_t) * r_t, about 10% lower here.)"""
    from callbacks.adascale_log import AdaScaleLog

    data, _ = regression_data(64, seed=2)
    x, y = data.x_train, data.y_train
    keras.utils.set_random_seed(0)
    model = as_virtual_batch_model(linear_model(D, np.zeros(D)), micro_batch_size=4,
                                   track_gradient_noise=True)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.02, 10, 0.7)
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    model.measurements.reset_noise_scale(256.0)
    model.measurements.sample_every_update = True
    AdaScale(4, estimates=True).attach(model)
    log = AdaScaleLog(None, every_n_updates=1)
    kernels = []  # before and after each update

    class Kernels(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            kernels.append([self.model.layers[-1].kernel.numpy().copy()])

        def on_train_batch_end(self, batch, logs=None):
            kernels[-1].append(self.model.layers[-1].kernel.numpy().copy())

    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[Kernels(), log])
    assert [row[0] for row in log.history] == [1, 2, 3, 4]
    reference = linear_model(D, np.zeros(D))
    for (update, gain, progress, logged), (start, end) in zip(log.history, kernels):
        rows = slice(16 * (update - 1), 16 * update)
        reference.layers[-1].kernel.assign(start)
        with tf.GradientTape() as tape:
            loss = keras.losses.MeanSquaredError()(y[rows], reference(x[rows]))
        gradient = tape.gradient(loss, reference.layers[-1].kernel).numpy()
        np.testing.assert_allclose((start - end) / gradient, logged, rtol=2e-3)
        assert 1.0 < gain <= 4.0
        read_after = 0.02 * 0.7 ** (progress / 10) * gain  # lr(tau_t + r_t) * r_t
        assert read_after < 0.97 * logged


BINDINGS = ["train.verbose = 0", "train.epochs = 1", "train.batch_size = 32",
            "train.micro_batch_size = 8", "train.learning_rate_scaling = @adascale()",
            "synthetic_regression.num_examples = 2000", "measurements.every_n_updates = 5"]


def test_a_run_logs_gain_and_progress_and_records_them(tmp_path):
    launch.launch(["gin/experiments/regression_mlp.gin"], BINDINGS, output_dir=str(tmp_path),
                  print_fn=lambda *_: None)
    (path,) = run_dirs(str(tmp_path))
    result = read_json(os.path.join(path, "result.json"))
    gains = event_values(os.path.join(path, "tensorboard", "train"), "adascale/gain")
    progress = event_values(os.path.join(path, "tensorboard", "train"), "adascale/progress")
    assert [u for u, _ in gains][:3] == [5, 10, 15]
    assert all(1.0 <= g <= 4.0 for _, g in gains)  # S = k = 4
    assert result["adascale/progress"] == pytest.approx(progress[-1][1])
    assert result["updates"] <= result["adascale/progress"] <= 4 * result["updates"]


@pytest.mark.parametrize("bindings, message", [
    (["train.learning_rate_scaling = @adascale", ], "must be @adascale\\(\\) \\(with parentheses"),
    (["train.micro_batch_size = None", "adascale.reference_batch_size = 8"],
     "at B = 32, S = B / B_0 = 4 .adascale.reference_batch_size = 8. needs the gradient noise"),
    (["measurements.track_gradient_noise = False"], "measurements.track_gradient_noise = False"),
    (["adascale.reference_batch_size = 0"], "adascale.reference_batch_size"),
])
def test_bad_adascale_bindings_are_refused_before_a_run_directory(tmp_path, bindings, message):
    with pytest.raises(ValueError, match=message):
        launch.launch(["gin/experiments/regression_mlp.gin"], BINDINGS + bindings,
                      output_dir=str(tmp_path), print_fn=lambda *_: None)
    assert not os.listdir(tmp_path)


def test_the_epoch_learning_rate_in_tensorboard_is_the_one_the_last_update_applied(tmp_path):
    """Under AdaScale the optimizer's rate reads lr(tau + r) * r after an update, which no update
    applied (0.88-0.95 of the applied one on a decaying schedule): TensorBoard's
    epoch_learning_rate now equals adascale/learning_rate at the epoch's last update."""
    launch.launch(["gin/experiments/regression_mlp.gin"], BINDINGS + [
        "train.epochs = 2", "measurements.every_n_updates = 1",
        "keras.optimizers.SGD.learning_rate = @keras.optimizers.schedules.ExponentialDecay()",
        "keras.optimizers.schedules.ExponentialDecay.initial_learning_rate = 0.02",
        "keras.optimizers.schedules.ExponentialDecay.decay_steps = 10",
        "keras.optimizers.schedules.ExponentialDecay.decay_rate = 0.7"],
        output_dir=str(tmp_path), print_fn=lambda *_: None)
    (path,) = run_dirs(str(tmp_path))
    applied = dict(event_values(os.path.join(path, "tensorboard", "train"),
                                "adascale/learning_rate"))
    epochs = event_values(os.path.join(path, "tensorboard", "train"), "epoch_learning_rate")
    updates = read_json(os.path.join(path, "result.json"))["updates"]
    assert len(epochs) == 2
    for epoch, value in epochs:
        last = updates * (epoch + 1) // 2
        assert value == pytest.approx(applied[last], rel=1e-5), epoch
