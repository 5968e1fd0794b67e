"""The accumulation functions one by one, each against a plain Keras or closed-form reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src import backend as keras_backend  # a loss that masks its own values

from experiments.engine import accumulation, keras_internals, loss_terms, noise_scale


def _model(l2=0.0):
    keras.utils.set_random_seed(1)
    reg = keras.regularizers.L2(l2) if l2 else None
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="tanh",
                                                                    kernel_regularizer=reg),
                             keras.layers.Dense(3, activation="softmax")])


def _data(n=22):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, 5)).astype("float32"), rng.integers(0, 3, n),
            rng.uniform(0.5, 2.0, n).astype("float32"))


def _context(model, loss, track_noise=False):
    return accumulation.StepContext(
        variables=model.trainable_variables, loss_terms=loss_terms.LossTerms(loss),
        replica=None, num_replicas=1, distributed=False, loss_dtype=tf.float32,
        has_call_losses=False, track_noise=track_noise,
        sampled=tf.constant(True) if track_noise else None, preconditioner=None,
        coming_update=tf.constant(1, tf.int64), records_norms=False)


def _keras_gradients(model, loss, x, y, w):
    with tf.GradientTape() as tape:
        value = loss(y, model(x, training=True), sample_weight=w)
    return [g.numpy() for g in tape.gradient(value, model.trainable_variables)], float(value)


@pytest.mark.parametrize("micro", [4, 7, 22])
def test_micro_batches_add_up_to_the_whole_batch_gradient(micro):
    """Ragged micro-batches and sample weights: the normalised sum is Keras' full-batch gradient."""
    model, loss = _model(), keras.losses.SparseCategoricalCrossentropy()
    model.compile(loss=loss)
    x, y, w = _data()
    reference, reference_loss = _keras_gradients(model, loss, x, y, w)
    ctx = _context(model, loss)
    acc = accumulation.accumulate_micro_batches(model, ctx, tf.constant(x), tf.constant(y),
                                                tf.constant(w), micro, 0, tf.constant(22))
    assert int(acc.num_micro) == -(-22 // micro)
    grads, data_grads, value = accumulation.normalise(ctx, acc)
    assert grads is data_grads  # no call-time losses
    for got, want in zip(grads, reference):
        np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=1e-7)
    assert float(value) == pytest.approx(reference_loss, rel=1e-6)


def test_single_pass_equals_keras_and_measures_the_squared_norm():
    model, loss = _model(), keras.losses.SparseCategoricalCrossentropy()
    model.compile(loss=loss)
    x, y, w = _data()
    reference, reference_loss = _keras_gradients(model, loss, x, y, w)
    grads, value, squared = accumulation.single_pass(model, _context(model, loss, True),
                                                     x, y, w, tf.constant(22))
    for got, want in zip(grads, reference):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-8)
    assert float(value) == pytest.approx(reference_loss, rel=1e-6)
    # The replica's one piece, weighted by its rows: [B_j |G_j|^2, B_j |P G_j|^2 (no P: 0)].
    assert float(squared[0]) == pytest.approx(
        22 * sum(float(np.sum(g ** 2)) for g in reference), rel=1e-5)
    assert float(squared[1]) == 0.0


def test_regularizers_are_added_once_per_update():
    model = _model(l2=0.1)
    grads = [tf.zeros_like(v) for v in model.trainable_variables]
    out, value = accumulation.add_regularizers(model.trainable_variables, grads,
                                               tf.constant(1.0), num_replicas=2)
    kernel = model.trainable_variables[0].numpy()
    assert float(value) == pytest.approx(1.0 + 0.1 * float(np.sum(kernel ** 2)), rel=1e-5)
    # Each of 2 replicas adds half: the optimizer's all-reduce sums to the penalty's gradient.
    np.testing.assert_allclose(out[0].numpy(), 0.2 * kernel / 2, rtol=1e-5)
    assert all(float(tf.reduce_sum(tf.abs(g))) == 0 for g in out[1:])


def test_take_cuts_rows_or_steps_and_passes_per_row_tensors_whole():
    t = tf.reshape(tf.range(24), (2, 12))
    np.testing.assert_array_equal(accumulation.take(t, 1, 1, 0).numpy(), [list(range(12, 24))])
    np.testing.assert_array_equal(accumulation.take(t, 4, 3, 1).numpy(), [[4, 5, 6],
                                                                          [16, 17, 18]])
    per_row = tf.constant([1.0, 2.0])
    assert accumulation.take(per_row, 4, 3, 1) is per_row
    per_row_column = tf.constant([[1.0], [2.0]])  # Keras' shape for a per-step loss's row weight
    assert accumulation.take(per_row_column, 4, 3, 1) is per_row_column
    assert accumulation.take(None, 0, 1, 0) is None
    assert float(accumulation.window_share(8, 5, 20)) == 2.0


def test_dense_fills_missing_gradients_with_zeros():
    variables = [tf.Variable(tf.ones((2, 2))), tf.Variable(tf.ones((3,)))]
    out = accumulation.dense([None, tf.ones((3,))], variables)
    assert out[0].shape == (2, 2) and float(tf.reduce_sum(out[0])) == 0.0


def test_noise_scale_estimates_recover_the_closed_form():
    """E sum_j B_j |G_j|^2 = B |G|^2 + n tr(Sigma) and E|G_B|^2 = |G|^2 + tr(Sigma)/B give
    |G|^2 and tr(Sigma) back, for even and ragged pieces alike (only B and n enter)."""
    g2, trace, rows, pieces = 0.3, 12.0, 64.0, 8.0
    big = g2 + trace / rows
    est_trace, est_g2, est_data, defined = noise_scale.estimates(
        rows * g2 + pieces * trace, big, big + 1.0, rows, pieces)
    assert bool(defined)
    assert float(est_trace) == pytest.approx(trace, rel=1e-6)
    assert float(est_data) == pytest.approx(g2, rel=1e-6)
    assert float(est_g2) == pytest.approx(g2 + 1.0, rel=1e-6)  # the followed gradient's
    _, _, _, one = noise_scale.estimates(1.0, 1.0, 1.0, 8.0, 1.0)
    assert not bool(one)  # a single piece cannot separate the two


def test_noise_state_is_fed_only_on_sampled_updates_with_two_pieces():
    """A sampled update with two or more pieces feeds the averages (decay exp(-examples since the
    last sample / horizon)) and becomes the last raw sample; one that is not sampled changes
    nothing; a sampled update with one piece is counted and kept as raw, but feeds nothing."""
    def step(state, update, value, defined=True, sampled=True, rows=8.0):
        return noise_scale.next_state(
            state, tf.constant(16.0, tf.float64), tf.constant(update, tf.int64),
            [tf.constant(value, tf.float64)] * 5, tf.constant(rows), tf.constant(2.0),
            tf.constant(defined), tf.constant(sampled))

    state = step(tf.zeros([noise_scale.STATE_SIZE], tf.float64), 2, 2.0)
    values = noise_scale.read_state(state.numpy(), preconditioned=True)
    assert values["averages"]["gradient_sq_norm"] == pytest.approx(2.0)  # bias-corrected
    assert values["count"] == 1 and values["sampled"] == 1 and values["raw_update"] == 2
    state = step(state, 4, 6.0)  # 16 examples later: the past weighs exp(-1)
    weight_old, weight_new = np.exp(-1.0) * (1 - np.exp(-1.0)), 1 - np.exp(-1.0)
    expected = (weight_old * 2.0 + weight_new * 6.0) / (weight_old + weight_new)
    values = noise_scale.read_state(state.numpy())
    assert values["averages"]["trace_sigma"] == pytest.approx(expected)
    assert values["raw"]["trace_sigma"] == 6.0 and "preconditioned_trace_sigma" not in \
        values["raw"]
    kept = step(state, 5, 9.0, sampled=False)
    assert np.array_equal(kept.numpy(), state.numpy())
    single = noise_scale.read_state(step(state, 6, 9.0, defined=False).numpy())
    assert single["averages"]["trace_sigma"] == pytest.approx(expected)
    assert single["sampled"] == 3 and single["count"] == 2 and single["raw_update"] == 6
    # A non-finite sample is the last raw one, but the averages go on without it (once in an
    # average, a NaN stayed there for the rest of the run).
    broken = noise_scale.read_state(step(state, 6, float("nan")).numpy())
    assert np.isnan(broken["raw"]["trace_sigma"]) and broken["count"] == 2
    assert broken["averages"]["trace_sigma"] == pytest.approx(expected)


@pytest.mark.parametrize("make", [
    lambda: keras.optimizers.Adam(0.1, beta_1=0.0),
    lambda: keras.optimizers.Adam(0.1, beta_1=0.0, amsgrad=True),
    lambda: keras.optimizers.AdamW(0.1, beta_1=0.0, weight_decay=0.0),
    lambda: keras.optimizers.Nadam(0.1, beta_1=0.0),
    lambda: keras.optimizers.RMSprop(0.1),
    lambda: keras.optimizers.RMSprop(0.1, centered=True),
], ids=["adam", "amsgrad", "adamw", "nadam", "rmsprop", "centred_rmsprop"])
def test_the_preconditioner_is_what_keras_divides_the_step_by(make):
    """Without momentum each optimizer's step is -lr P g, with P from its moments after the step:
    P is compared with Keras' own update, epsilon where Keras puts it (inside the root for
    RMSprop, outside the uncorrected root for Adam), on moments from 1e-2 down to 1e-12, where
    the placement decides P (RMSprop's P was 287 times Keras' at v = 1e-12)."""
    optimizer = make()
    weights = keras.Variable(np.zeros(4, np.float32))
    optimizer.build([weights])
    moments = keras_internals.second_moments(optimizer, [weights])
    for v in moments.velocities:
        v.assign(np.array([1e-2, 1e-4, 1e-9, 1e-12], np.float32))
    if moments.averages is not None:
        moments.averages[0].assign(np.array([1e-2, 1e-3, 1e-6, 1e-7], np.float32) * 0.5)
    optimizer.iterations.assign(3)
    gradient = np.array([1e-3, 1e-4, 1e-6, 1e-7], np.float32)
    optimizer.apply([tf.constant(gradient)], [weights])
    (p,) = noise_scale.diagonal_preconditioner(optimizer, [weights])()
    np.testing.assert_allclose(weights.numpy(), -0.1 * p.numpy() * gradient, rtol=1e-4)


def test_a_loss_weight_keeps_the_mask_the_loss_sets_on_its_values():
    """A loss that masks its own values (padded steps labelled 0): multiplied by its weight
    before the mask was read, the product had none, and the padded steps were counted (3.75
    where Keras gives 3 x 2.5)."""
    class MaskedSquares(keras.losses.Loss):
        def call(self, y_true, y_pred):
            values = tf.square(y_true - y_pred)[..., 0]
            keras_backend.set_keras_mask(values, tf.not_equal(y_true[..., 0], 0.0))
            return values

    y_true = tf.constant(np.array([[[1.0], [2.0], [0.0], [0.0]]] * 2, np.float32))
    y_pred = tf.zeros_like(y_true)
    keras_value = float(MaskedSquares()(y_true, y_pred))
    assert keras_value == pytest.approx(2.5)
    numerator, denominator = loss_terms.LossTerms(MaskedSquares(), weight=3.0)(y_true, y_pred)
    assert float(numerator / denominator) == pytest.approx(3 * keras_value)
