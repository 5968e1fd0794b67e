"""The gradient noise scale against closed forms (linear regression, x ~ N(0, Lambda)).

For y = x.w* + s e and the squared error at w = w* + delta, the per-example gradient is
g = 2x(x.delta - s e): G = 2 Lambda delta and Sigma = 4((delta' Lambda delta + s^2) Lambda +
Lambda delta delta' Lambda). Every truth below is computed here from that formula, independently
of the code under test: the train step's per-update estimates (ragged micro-batches, replicas as
pieces), the probe at fixed weights (its interval's coverage, the regularized optimum).
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from callbacks.noise_scale_probe import probe
from experiments.common import noise_statistics
from experiments.engine import noise_probe, virtual_batch_model
from tests.helpers import linear_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def truth(lam, delta, s, precondition=None):
    """(|G|^2, tr(Sigma), B_simple) of the closed form; with a diagonal P, of P G and P Sigma P."""
    lam, delta = np.asarray(lam, float), np.asarray(delta, float)
    gradient = 2 * lam * delta
    sigma = 4 * ((delta @ (lam * delta) + s * s) * np.diag(lam)
                 + np.outer(lam * delta, lam * delta))
    if precondition is not None:
        p = np.asarray(precondition, float)
        gradient, sigma = p * gradient, np.diag(p) @ sigma @ np.diag(p)
    g2, trace = float(gradient @ gradient), float(np.trace(sigma))
    return g2, trace, trace / g2


def regression_rows(rng, n, lam, w_star, s):
    x = (rng.normal(size=(n, len(lam))) * np.sqrt(lam)).astype(np.float32)
    y = (x @ w_star + s * rng.normal(size=n)).astype(np.float32)[:, None]
    return x, y


def mean_raw_estimates(micro, batch, updates, lam, w_star, delta, s, seed):
    """The mean over ``updates`` frozen-weight updates of the step's raw (|G|^2, tr(Sigma))
    estimates: with an infinite horizon the bias-corrected moving average is the plain mean."""
    rng = np.random.default_rng(seed)
    x, y = regression_rows(rng, updates * batch, lam, w_star, s)
    model = virtual_batch_model.as_virtual_batch_model(
        linear_model(len(lam), w_star + delta), micro_batch_size=micro, track_gradient_noise=True)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse", steps_per_execution=500)
    model.measurements.reset_noise_scale(1e15, sample_every=1)
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    averages = model.measurements.noise_scale_values()["averages"]
    return averages["gradient_sq_norm"], averages["trace_sigma"]


def _ragged_against_even(updates, tolerance):
    d, s = 8, 1.0
    lam = np.ones(d)
    w_star = np.linspace(-1, 1, d)
    delta = np.full(d, 0.5)  # |delta|^2 = 2: |G|^2 = 8, tr(Sigma) = 104
    g2, trace, _ = truth(lam, delta, s)
    ragged = mean_raw_estimates(32, 33, updates, lam, w_star, delta, s, seed=0)
    even = mean_raw_estimates(17, 33, updates, lam, w_star, delta, s, seed=1)
    np.testing.assert_allclose(ragged[1], trace, rtol=tolerance)
    np.testing.assert_allclose(even[1], trace, rtol=tolerance)
    np.testing.assert_allclose(ragged[1], even[1], rtol=tolerance)
    np.testing.assert_allclose(ragged[0], g2, rtol=tolerance)
    np.testing.assert_allclose(even[0], g2, rtol=tolerance)


@pytest.mark.slow
def test_ragged_micro_batches_have_the_expectation_of_even_ones():
    """[32, 1] (micro-batches of 32 in a batch of 33) and [17, 16] estimate the same tr(Sigma)
    and |G|^2 as the closed form, within 2% over 30000 draws (Monte Carlo error about 0.6%):
    each piece is weighted by its rows. (The mean-size formula gave tr(Sigma) x15 for [32, 1],
    and a negative B_simple.)"""
    _ragged_against_even(30000, 0.02)


def test_ragged_micro_batches_fast():
    """The same over 2500 draws (Monte Carlo error about 2%), within 8%: far from x15."""
    _ragged_against_even(2500, 0.08)


def test_probe_squared_norms_equal_gradient_tape_and_restore_the_model():
    """Each draw's |G_B + R|^2 is the squared norm of GradientTape's gradient of the mean loss
    plus the L2 penalty's; BatchNormalization's moving averages are put back."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = rng.normal(size=(40, 1)).astype(np.float32)
    inputs = keras.Input((3,))
    hidden = keras.layers.BatchNormalization()(inputs)
    outputs = keras.layers.Dense(1, kernel_regularizer=keras.regularizers.L2(0.3))(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    moving = [v.numpy().copy() for v in model.non_trainable_variables]
    draws = noise_probe.draw_squared_norms(model, (x, y), (4, 9), 3, seed=5)
    for before, variable in zip(moving, model.non_trainable_variables):
        np.testing.assert_array_equal(before, variable.numpy())

    indices = np.random.default_rng(5).integers(0, 40, size=(3, 4))
    for draw, rows in enumerate(indices):
        with tf.GradientTape() as tape:
            loss = keras.losses.MeanSquaredError()(y[rows], model(x[rows], training=True))
        data = tape.gradient(loss, model.trainable_variables)
        with tf.GradientTape() as tape:
            penalty = tf.add_n([v.regularizer(v) for v in model.trainable_variables
                                if getattr(v, "regularizer", None) is not None])
        (reg,) = tape.gradient(penalty, [model.layers[-1].kernel])
        followed = [g + reg if v is model.layers[-1].kernel else g
                    for g, v in zip(data, model.trainable_variables)]
        np.testing.assert_allclose(draws.followed[0, draw],
                                   sum(float(tf.reduce_sum(g * g)) for g in followed), rtol=1e-5)
        np.testing.assert_allclose(draws.data_only[0, draw],
                                   sum(float(tf.reduce_sum(g * g)) for g in data), rtol=1e-5)
        for before, variable in zip(moving, model.non_trainable_variables):
            variable.assign(before)  # the reference's forward pass moved them


def test_l2_regularized_optimum_followed_gradient_interval_contains_zero():
    """At the population optimum of mean (w.x - y)^2 + lambda |w|^2 (x ~ N(0, I): w = w*/(1 +
    lambda)) the followed gradient is zero: the probe's |G|^2 interval contains 0, while the data
    gradient alone (4 |delta|^2, far from 0) is what the old estimator measured."""
    d, s, lam_l2 = 4, 0.5, 0.5
    w_star = np.array([1.0, -2.0, 0.5, 1.5])
    w_opt = w_star / (1 + lam_l2)
    model = linear_model(d, w_opt, keras.regularizers.L2(lam_l2))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")

    def draw(n, rng):
        return regression_rows(rng, n, np.ones(d), w_star, s)

    values = probe(model, draw, (4, 16, 64), 150, seed=3)
    low, high = values["noise_probe/gradient_sq_norm_low"], \
        values["noise_probe/gradient_sq_norm_high"]
    assert low <= 0.0 <= high, (low, high)
    data_g2 = 4 * float(np.sum((w_opt - w_star) ** 2))
    assert high < 0.1 * data_g2
    # The data term alone has the ordinary noise scale of that delta.
    _, _, data_truth = truth(np.ones(d), w_opt - w_star, s)
    np.testing.assert_allclose(values["noise_probe/b_simple_data"], data_truth, rtol=0.3)


def test_train_step_includes_the_regularizer_in_the_followed_gradient():
    """The step's raw |G|^2 is that of data + penalty gradient; the data-only one is kept beside
    it (same tr(Sigma): the penalty is not sampled)."""
    d, s, lam_l2 = 4, 0.5, 0.5
    w_star = np.array([1.0, -2.0, 0.5, 1.5])
    w = w_star / (1 + lam_l2) + 0.3
    rng = np.random.default_rng(2)
    x, y = regression_rows(rng, 5000 * 16, np.ones(d), w_star, s)
    model = virtual_batch_model.as_virtual_batch_model(
        linear_model(d, w, keras.regularizers.L2(lam_l2)), micro_batch_size=4,
        track_gradient_noise=True)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse", steps_per_execution=500)
    model.measurements.reset_noise_scale(1e15, sample_every=1)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    averages = model.measurements.noise_scale_values()["averages"]
    delta = w - w_star
    g2_data, trace, _ = truth(np.ones(d), delta, s)
    followed = 2 * delta + 2 * lam_l2 * w
    np.testing.assert_allclose(averages["trace_sigma"], trace, rtol=0.08)
    np.testing.assert_allclose(averages["gradient_sq_norm_data"], g2_data, rtol=0.08)
    np.testing.assert_allclose(averages["gradient_sq_norm"], float(followed @ followed),
                               rtol=0.05)


def _coverage(seeds, sizes, num_draws):
    lam = np.array([1.0, 0.5, 0.25, 0.125])
    d, s = 4, 1.0
    w_star = np.array([0.5, -1.0, 2.0, 0.3])
    delta = np.full(d, 0.3)
    p = np.array([1.0, 2.0, 3.0, 0.5])
    _, _, plain_truth = truth(lam, delta, s)
    _, _, pre_truth = truth(lam, delta, s, p)
    model = linear_model(d, w_star + delta)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")

    def draw(n, rng):
        return regression_rows(rng, n, lam, w_star, s)

    covered = pre_covered = 0
    for seed in range(seeds):
        draws = noise_probe.draw_squared_norms(model, draw, sizes, num_draws, seed=seed,
                                               preconditioner=[p[:, None]])
        plain = noise_statistics.estimate(sizes, list(draws.followed), seed=seed)
        pre = noise_statistics.estimate(sizes, list(draws.preconditioned), seed=seed)
        covered += plain["b_simple_interval"][0] <= plain_truth <= plain["b_simple_interval"][1]
        pre_covered += pre["b_simple_interval"][0] <= pre_truth <= pre["b_simple_interval"][1]
    return covered, pre_covered


@pytest.mark.slow
def test_probe_interval_covers_the_anisotropic_closed_form():
    """Lambda = diag(1, 1/2, 1/4, 1/8), w = w* + 0.3: the 95% interval covers tr(Sigma)/|G|^2
    (19.3) in >= 90 of 100 seeds, and tr(P Sigma P)/|P G|^2 (27.7) for P = diag(1, 2, 3, 1/2)."""
    covered, pre_covered = _coverage(100, (4, 16, 64), 200)
    assert covered >= 90, covered
    assert pre_covered >= 90, pre_covered


def test_probe_interval_on_a_few_seeds():
    """The fast suite's share of the coverage test: 10 seeds, at least 8 covered."""
    covered, pre_covered = _coverage(10, (4, 16, 64), 100)
    assert covered >= 8 and pre_covered >= 8, (covered, pre_covered)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    num_replicas, cases = json.loads(sys.argv[1])  # [replicas, [[batch, micro or None], ...]]
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_replicas)
    import keras
    sys.path.insert(0, {repo!r})
    from callbacks.gradient_noise_scale import GradientNoiseScale
    from experiments.engine import custom_loop, virtual_batch_model
    d, s, updates = 4, 1.0, 1500
    w_star = np.array([1.0, -1.0, 0.5, 2.0]); delta = np.full(d, 0.5)

    strategy = tf.distribute.MirroredStrategy([f"/cpu:{{i}}" for i in range(num_replicas)])

    def measure(batch, micro):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(updates * batch, d)).astype(np.float32)
        y = (x @ w_star + s * rng.normal(size=len(x))).astype(np.float32)[:, None]
        with strategy.scope():
            inner = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1, use_bias=False)])
            inner.layers[-1].kernel.assign((w_star + delta)[:, None].astype(np.float32))
            model = virtual_batch_model.as_virtual_batch_model(
                inner, micro_batch_size=micro, track_gradient_noise=True)
            model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
        noise = GradientNoiseScale(every_n_updates=updates, horizon_examples=1e15,
                                   sample_every_n_updates=1)
        data = lambda epoch, step, epochs: tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
        custom_loop.CustomLoop(model, steps_per_execution=100).fit_from(
            data, lambda epoch: updates, 1, verbose=0, measurements=[noise])
        return noise.result()

    print(json.dumps([measure(batch, micro) for batch, micro in cases]))
""")


@pytest.mark.slow
def test_mirrored_strategy_replicas_are_pieces_at_k1(tmp_path):
    """MirroredStrategy over two logical CPUs, k = 1 (B = 16, 8 rows per replica): each replica's
    gradient is a piece, so B_simple exists and is within 10% of the closed form (it used to be
    declared undefined). A replica handed no rows is no piece: a batch of 9 over four replicas
    (3, 3, 3, 0 rows) has 3 pieces at k = 1 (B_simple was 4.5 for the truth 9, counting 4) and
    6 with micro-batches of 2 (it was 14.6, counting 5)."""
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT.format(repo=REPO))

    def measured(num_replicas, cases):  # one process per strategy (collectives' groups)
        done = subprocess.run([sys.executable, str(script), json.dumps([num_replicas, cases])],
                              capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    (two,) = measured(2, [[16, None]])  # 8 rows per replica
    # A batch of 9 over four replicas: 3, 3, 3 and 0 rows; k = 1, and micro-batches of 2.
    empty_replica, empty_replica_micro = measured(4, [[9, None], [9, 2]])
    _, _, expected = truth(np.ones(4), np.full(4, 0.5), 1.0)
    assert two["noise_scale/raw"][0][4] == 2  # two pieces: the replicas
    np.testing.assert_allclose(two["noise_scale/b_simple"], expected, rtol=0.10)
    assert empty_replica["noise_scale/raw"][0][4] == 3
    np.testing.assert_allclose(empty_replica["noise_scale/b_simple"], expected, rtol=0.10)
    assert empty_replica_micro["noise_scale/raw"][0][4] == 6
    np.testing.assert_allclose(empty_replica_micro["noise_scale/b_simple"], expected, rtol=0.10)
