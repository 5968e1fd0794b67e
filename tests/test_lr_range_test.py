"""The learning-rate range test: its ramp, its per-update loss, its stop rule, its suggestion.

The central check uses a problem whose answer is known in closed form: least squares with one
bias-free Dense layer, trained by plain SGD on the full batch. Its loss is the quadratic
``mean((x w - y)^2)`` with Hessian ``H = 2 X^T X / n``, and gradient descent on it is stable
exactly for learning rates below ``2 / lambda_max(H)``. A sound range test must suggest a rate
below that limit and must see the loss blow up only above it; its smoothed minimum lies above the
limit too (by a factor of 1 to 10: the ramping run keeps improving past it while only the top
direction grows, and the average remembers earlier losses), which is why it is no stability limit.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from callbacks.lr_range_test import LearningRateRangeTest
from experiments.analysis.lr_range import RangeSuggestion, plot_range_test, suggest_learning_rate
from tests.helpers import event_values


def _least_squares(rows=128, seed=0):
    """Data with a mildly anisotropic covariance (condition number ~3) and its stable limit."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(rows, 4)) * np.array([1.0, 0.85, 0.7, 0.55])).astype("float32")
    w = rng.normal(size=(4, 1))
    y = (x.astype(np.float64) @ w + 0.01 * rng.normal(size=(rows, 1))).astype("float32")
    hessian = 2.0 * x.astype(np.float64).T @ x.astype(np.float64) / rows
    return x, y, 2.0 / np.linalg.eigvalsh(hessian).max()


def _linear_model(inputs, learning_rate=0.1, kernel=None):
    model = keras.Sequential([keras.Input((inputs,)),
                              keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    if kernel is not None:
        model.layers[0].kernel.assign(kernel)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    return model


def test_suggestion_is_below_the_stability_limit_of_a_quadratic():
    x, y, limit = _least_squares()
    model = _linear_model(4)
    test = LearningRateRangeTest(1e-4 * limit, 100 * limit, num_updates=40)
    # The full batch, once per update, all in one epoch (so the loss is recovered from Keras'
    # running mean of the epoch).
    full_batch = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(full_batch, steps_per_epoch=40, epochs=1, shuffle=False, verbose=0,
              callbacks=[test])
    result = test.result()
    suggestion = suggest_learning_rate(result["learning_rates"], result["losses"], "steepest",
                                       smoothing=result["smoothing"])
    result.update(suggested_learning_rate=suggestion.learning_rate,
                  min_loss_learning_rate=suggestion.min_loss_learning_rate)

    assert test.stopped_because == "diverged"
    assert test.learning_rates[-1] > limit, (test.learning_rates[-1], limit)
    assert limit <= result["min_loss_learning_rate"] <= 10 * limit, (result, limit)
    assert 0 < result["suggested_learning_rate"] < limit, (result, limit)
    assert result["updates"] == len(test.losses) < 40
    # The first update runs at the initial (zero) weights: its loss is mean(y^2).
    np.testing.assert_allclose(test.losses[0], np.mean(y.astype(np.float64) ** 2), rtol=1e-5)
    assert min(test.losses) < 0.01 * test.losses[0]  # the test found the useful region
    assert float(model.optimizer.learning_rate) == pytest.approx(0.1)  # restored
    print(f"\nstable limit {limit:.4g}; suggested {result['suggested_learning_rate']:.4g} "
          f"({result['suggested_learning_rate'] / limit:.3g} x limit); smoothed minimum at "
          f"{result['min_loss_learning_rate']:.4g}; stopped ({test.stopped_because}) at "
          f"{test.learning_rates[-1]:.4g} ({test.learning_rates[-1] / limit:.3g} x limit) after "
          f"{result['updates']} updates")


def test_ramp_is_geometric_and_set_before_each_update():
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(self.model.optimizer.learning_rate))

    x, y, _ = _least_squares(rows=16)
    test = LearningRateRangeTest(1e-3, 1e-1, num_updates=5)
    model = _linear_model(4, learning_rate=0.5)
    model.fit(x, y, batch_size=16, epochs=20, verbose=0, callbacks=[test, Spy()])

    expected = [1e-3 * 100 ** (i / 4) for i in range(5)]
    assert test.learning_rates[0] == 1e-3
    np.testing.assert_allclose(test.learning_rates, expected, rtol=1e-12)
    np.testing.assert_allclose(seen, expected, rtol=1e-6)  # float32 variable
    assert test.stopped_because == "num_updates"
    assert float(model.optimizer.learning_rate) == 0.5


def test_per_update_loss_is_recovered_from_the_running_mean():
    """Rates too small to move the weights: every update's loss is the loss of its batch at the
    initial weights, including the smaller last batch of each epoch and across epochs."""
    x, y, _ = _least_squares(rows=100)
    kernel = np.array([[0.3], [-0.2], [0.5], [0.1]], dtype="float32")
    test = LearningRateRangeTest(1e-12, 1e-11, num_updates=6)
    model = _linear_model(4, kernel=kernel)
    model.fit(x, y, batch_size=48, epochs=2, shuffle=False, verbose=0, callbacks=[test])

    errors = (x.astype(np.float64) @ kernel - y) ** 2
    per_batch = [errors[s:s + 48].mean() for s in (0, 48, 96)] * 2
    np.testing.assert_allclose(test.losses, per_batch, rtol=1e-4)
    assert test.stopped_because == "num_updates"


def test_a_wrapped_optimizer_is_ramped_through_its_public_learning_rate():
    """A ``LossScaleOptimizer`` (mixed precision) hands ``learning_rate`` to the optimizer it
    wraps: the ramp reaches that one, and its rate is restored at the end."""
    x, y, _ = _least_squares(rows=16)
    model = _linear_model(4)
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.5)),
                  loss="mse")
    test = LearningRateRangeTest(1e-3, 1e-1, num_updates=3)
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(self.model.optimizer.inner_optimizer.learning_rate))

    model.fit(x, y, batch_size=16, epochs=5, verbose=0, callbacks=[test, Spy()])
    np.testing.assert_allclose(seen, [1e-3, 1e-2, 1e-1], rtol=1e-6)
    assert float(model.optimizer.inner_optimizer.learning_rate) == 0.5


def test_fit_shorter_than_the_ramp_is_reported():
    x, y, _ = _least_squares(rows=16)
    test = LearningRateRangeTest(1e-4, 1e-3, num_updates=10)
    _linear_model(4).fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[test])
    assert test.stopped_because == "data_exhausted"
    assert len(test.learning_rates) == 3


@pytest.mark.parametrize("args, message", [
    ((1e-1, 1e-3, 10), "min_learning_rate=0.1 must be below max_learning_rate=0.001"),
    ((1e-2, 1e-2, 10), "must be below max_learning_rate"),
    ((0.0, 1.0, 10), "min_learning_rate must be a positive number, got 0.0"),
    ((-1e-3, 1.0, 10), "min_learning_rate must be a positive number, got -0.001"),
    ((1e-3, float("inf"), 10), "max_learning_rate must be a positive number, got inf"),
    ((1e-3, float("nan"), 10), "max_learning_rate must be a positive number, got nan"),
    ((1e-3, 1.0, 2), "num_updates must be at least 3 .a ramp., got 2"),
    ((1e-3, 1.0, 10.5), "num_updates must be a positive integer, got 10.5"),
])
def test_bad_arguments_are_refused(args, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        LearningRateRangeTest(*args)


def test_schedule_and_multi_step_execution_are_refused():
    x, y, _ = _least_squares(rows=16)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.9)
    model = _linear_model(4)
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    with pytest.raises(ValueError, match="schedule or callable.*float learning_rate"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[LearningRateRangeTest(1e-3, 1, 5)])

    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", steps_per_execution=4)
    with pytest.raises(ValueError, match="steps_per_execution=4"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0,
                  callbacks=[LearningRateRangeTest(1e-3, 1, 5)])


def _u_shaped_curve():
    """Loss vs log10(rate) on a 0.1-decade grid: a sigmoid drop centred at 1e-3 (steepest there)
    and a quadratic wall from 1e-1 on (the minimum is at 1e-1)."""
    exponents = np.round(np.arange(-5.0, 0.0001, 0.1), 10)
    drop = 1.0 / (1.0 + np.exp(-4.0 * (exponents + 3.0)))
    wall = 0.5 * np.maximum(0.0, exponents + 1.0) ** 2
    return 10.0 ** exponents, 1.0 - 0.9 * drop + wall


def test_suggestion_rules_on_a_u_shaped_curve():
    rates, losses = _u_shaped_curve()
    steepest = suggest_learning_rate(rates, losses, "steepest", smoothing=0.0)
    assert isinstance(steepest, RangeSuggestion)
    assert steepest.learning_rate == pytest.approx(1e-3)
    assert steepest.min_loss_learning_rate == pytest.approx(1e-1)
    assert "steepest" in steepest.explanation and "falls fastest" in steepest.explanation

    tenth = suggest_learning_rate(rates, losses, "min_divided_by_10", smoothing=0.0)
    assert tenth.learning_rate == pytest.approx(1e-2)
    assert tenth.min_loss_learning_rate == pytest.approx(1e-1)
    assert "lowest at learning rate 0.1" in tenth.explanation

    with pytest.raises(dataclasses.FrozenInstanceError):
        tenth.learning_rate = 1.0


def test_a_noisy_flat_start_is_not_read_as_the_steepest_descent():
    """500 updates from 1e-5 to 1 (smoothing 0.9): flat, then a descent centred near 2e-2, then
    a wall; per-update noise sd 0.1. The bias-corrected average's first points weigh the newest
    loss up to 10 times more than later ones, so their slopes are the noisiest: without passing
    over them the rule picked one of the first 10 rates in about a third of the seeds."""
    rates = np.geomspace(1e-5, 1.0, 500)
    x = np.log10(rates)
    curve = 2.0 - 1.5 / (1.0 + np.exp(-3.0 * (x + 1.7))) + 5.0 * np.maximum(0.0, x + 0.7) ** 2
    picks = []
    for seed in range(60):
        noisy = curve + np.random.default_rng(seed).normal(0.0, 0.1, curve.size)
        picks.append(suggest_learning_rate(rates, noisy, "steepest", smoothing=0.9))
    assert all(p.learning_rate > rates[10] for p in picks)
    assert 5e-3 < np.median([p.learning_rate for p in picks]) < 8e-2


def test_a_minimum_at_the_ramps_end_is_called_a_lower_bound():
    rates = np.geomspace(1e-4, 0.3, 30)
    falling = np.linspace(2.3, 1.0, 30)
    tenth = suggest_learning_rate(rates, falling, "min_divided_by_10", smoothing=0.0)
    assert tenth.at_ramp_end and "only a lower bound" in tenth.explanation
    rates, losses = _u_shaped_curve()
    assert not suggest_learning_rate(rates, losses, "steepest", smoothing=0.0).at_ramp_end


def test_a_loss_that_is_not_positive_is_refused_not_read_as_divergence():
    """4 x a negative best lies below a still-improving loss: the divergence test would stop the
    run after two updates; it is refused with the reason instead."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=lambda y, p: -0.1 - 0.0 * p[:, 0])
    test = LearningRateRangeTest(1e-4, 1.0, 20)
    with pytest.raises(ValueError, match="needs a positive loss"):
        model.fit(np.zeros((8, 1)), np.zeros((8, 1)), batch_size=4, epochs=1, verbose=0,
                  callbacks=[test])


def test_suggestion_reads_the_smoothed_noisy_curve_and_ignores_divergence():
    rates, losses = _u_shaped_curve()
    noisy = losses + np.random.default_rng(0).normal(0.0, 0.01, losses.size)
    steepest = suggest_learning_rate(rates, noisy, "steepest", smoothing=0.5)
    assert 10 ** -3.5 <= steepest.learning_rate <= 10 ** -2.5
    with_tail = suggest_learning_rate(list(rates) + [2.0, 4.0], list(noisy) + [np.inf, np.nan],
                                      "steepest", smoothing=0.5)
    assert with_tail == steepest


def test_suggestion_errors_say_what_to_do():
    rates = np.logspace(-4, -1, 10)
    for rule in ("steepest", "min_divided_by_10"):  # a loss that only rises: no minimum in the
        # ramp either, and a tenth of its first rate is a rate never tried (it was suggested)
        with pytest.raises(ValueError, match="never fell.*smaller learning rate"):
            suggest_learning_rate(rates, np.linspace(1.0, 2.0, 10), rule=rule)
    with pytest.raises(ValueError, match="rule='valley' must be one of"):
        suggest_learning_rate(rates, np.ones(10), rule="valley")
    with pytest.raises(ValueError, match="same length"):
        suggest_learning_rate(rates, np.ones(9))
    with pytest.raises(ValueError, match="at least 3 finite losses"):
        suggest_learning_rate(rates[:4], [1.0, 0.5, np.nan, 0.1])


def test_plot_is_written(tmp_path):
    rates, losses = _u_shaped_curve()
    losses = np.append(losses, np.inf)
    rates = np.append(rates, 2.0)
    suggestion = suggest_learning_rate(rates, losses)
    path = plot_range_test(rates, losses, suggestion, str(tmp_path / "plots" / "range.png"))
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_scalars_reach_the_event_files(tmp_path):
    x, y, limit = _least_squares(rows=32)
    test = LearningRateRangeTest(1e-3 * limit, 10 * limit, num_updates=8, log_dir=str(tmp_path))
    _linear_model(4).fit(x, y, batch_size=32, epochs=8, verbose=0, callbacks=[test])
    updates = len(test.losses)

    losses = event_values(str(tmp_path / "train"), "lr_range/loss")
    smoothed = event_values(str(tmp_path / "train"), "lr_range/smoothed_loss")
    rates = event_values(str(tmp_path / "train"), "lr_range/learning_rate")
    assert [step for step, _ in losses] == list(range(1, updates + 1))  # the update count
    np.testing.assert_allclose([v for _, v in losses], test.losses, rtol=1e-6)
    np.testing.assert_allclose([v for _, v in smoothed], test.smoothed_losses, rtol=1e-6)
    np.testing.assert_allclose([v for _, v in rates], test.learning_rates, rtol=1e-6)
