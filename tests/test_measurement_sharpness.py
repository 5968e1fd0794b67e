"""Keskar sharpness against the closed form of a quadratic loss (linear least squares)."""

import itertools

import keras
import numpy as np
import pytest

from callbacks import summary_writer
from callbacks.sharpness import Sharpness
from experiments.engine import virtual_batch_model
from tests.helpers import event_values

N, CURVATURES = 64, np.array([1.0, 4.0, 9.0])


def _problem(at_minimum):
    """X with X^T X / N = diag(CURVATURES): f(w) = mean((Xw - y)^2) has Hessian 2 diag(d)."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(N, 3)))
    x = (np.sqrt(N) * q * np.sqrt(CURVATURES)).astype(np.float32)
    w_star = np.array([0.5, -1.0, 2.0])
    y = x @ w_star
    if not at_minimum:
        y = y + rng.normal(size=N)
    w = w_star if at_minimum else w_star + np.array([0.3, -0.2, 0.1])
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[-1].kernel.assign(w.reshape(3, 1).astype(np.float32))
    model = virtual_batch_model.as_virtual_batch_model(model)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    return model, x.astype(np.float64), y.astype(np.float32)[:, None], w


def _f(x, y, w):
    return float(np.mean((x @ w - y[:, 0]) ** 2))


def _sharpness(model, x, y, **kwargs):
    callback = Sharpness((x.astype(np.float32), y), **kwargs)
    callback.set_model(model)
    before = [v.numpy().copy() for v in model.trainable_variables]
    result = callback.measure()
    after = [v.numpy() for v in model.trainable_variables]
    assert all(np.array_equal(b, a) for b, a in zip(before, after)), "weights not restored"
    return result


@pytest.mark.parametrize("at_minimum", [False, True])
def test_full_space_matches_closed_form(at_minimum):
    """Separable convex quadratic: max over the box of g.z + sum d_i z_i^2 is at the corner
    z_i = sign(g_i) r_i, worth sum |g_i| r_i + d_i r_i^2, with r_i = eps (|w_i| + 1)."""
    model, x, y, w = _problem(at_minimum)
    epsilon = 0.05
    result = _sharpness(model, x, y, epsilon=epsilon)
    f0 = _f(x, y, w)
    g = 2.0 / N * x.T @ (x @ w - y[:, 0])
    r = epsilon * (np.abs(w) + 1.0)
    increase = np.sum(np.abs(g) * r + CURVATURES * r ** 2)
    np.testing.assert_allclose(result["loss"], f0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result["phi"], 100.0 * increase / (1.0 + f0), rtol=2e-3)


def test_random_subspace_is_consistent_and_within_the_box():
    model, x, y, w = _problem(at_minimum=False)
    epsilon = 0.05
    result = _sharpness(model, x, y, epsilon=epsilon, projection_dim=2, seed=4)
    a = np.random.default_rng(4).standard_normal((3, 2))
    radius = epsilon * (np.abs(np.linalg.pinv(a) @ w) + 1.0)
    np.testing.assert_allclose(result["radius"], radius, rtol=1e-6)
    solution = result["solution"]
    assert np.all(np.abs(solution) <= radius * (1 + 1e-9))
    f0 = _f(x, y, w)
    reached = _f(x, y, w + a @ solution)
    np.testing.assert_allclose(result["max_loss"], reached, rtol=1e-4)
    np.testing.assert_allclose(result["phi"], 100.0 * (reached - f0) / (1.0 + f0), rtol=1e-3)
    # A convex function's maximum over a box is at a corner: L-BFGS-B cannot beat the best one.
    best = max(_f(x, y, w + a @ (np.array(s) * radius))
               for s in itertools.product([-1.0, 1.0], repeat=2))
    assert f0 < reached <= best * (1 + 1e-5)


def test_runs_at_train_end_and_logs(tmp_path):
    model, x, y, _ = _problem(at_minimum=False)
    callback = Sharpness((x.astype(np.float32), y), log_dir=str(tmp_path), epsilon=1e-3)
    model.fit(x.astype(np.float32), y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    summary_writer.close_all()
    logged = event_values(str(tmp_path), "sharpness/phi")
    assert logged == [(4, pytest.approx(callback.value["phi"], rel=1e-5))]
    assert callback.result()["sharpness/phi"] > 0


@pytest.mark.parametrize("kwargs, message", [({"epsilon": 0.0}, "epsilon"),
                                             ({"projection_dim": 0}, "projection_dim"),
                                             ({"max_iterations": 0}, "max_iterations")])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sharpness((np.ones((2, 3)), np.ones(2)), **kwargs)
