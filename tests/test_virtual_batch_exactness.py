"""One virtual-batch update equals plain Keras' update on the whole batch at once.

Every reference here is computed by plain Keras: a ``keras.Model`` with the same initial weights,
trained with ``train_on_batch`` on each whole virtual batch. The batchlab model trains through
``model.fit`` on the same batches, split into micro-batches. Several updates are compared so that
optimizer state (momentum, Adam moments) and the step counter are exercised too.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments.engine import virtual_batch_model


def _max_relative_error(got, want):
    """||got - want|| / ||want|| over all weights together.

    A norm, not an elementwise ratio: Adam divides by sqrt(v), so an element whose gradient is
    near zero amplifies float32 round-off (plain Keras' own float32 update differs from its float64
    update by ~5e-6 on such a bias element), while the model's weights as a whole agree to ~1e-7.
    """
    diff = np.concatenate([(np.asarray(g, np.float64) - w).ravel() for g, w in zip(got, want)])
    norm = np.concatenate([np.asarray(w, np.float64).ravel() for w in want])
    return float(np.linalg.norm(diff) / np.linalg.norm(norm))


def _batches(n, batch_size):
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def _reference(build, weights, optimizer, loss, x, y, sample_weight, batch_size):
    """Plain Keras: one ``train_on_batch`` per whole virtual batch."""
    model = build()
    model.set_weights(weights)
    model.compile(optimizer=optimizer, loss=loss)
    for rows in _batches(len(y), batch_size):
        sw = None if sample_weight is None else sample_weight[rows]
        model.train_on_batch(x[rows], y[rows], sample_weight=sw)
    return model.get_weights(), int(model.optimizer.iterations.numpy())


def _virtual(build, weights, optimizer, loss, x, y, sample_weight, batch_size, micro,
             metrics=None):
    """batchlab: ``model.fit`` on the same virtual batches, split into micro-batches."""
    model = virtual_batch_model.as_virtual_batch_model(build(), micro_batch_size=micro)
    model.set_weights(weights)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics or [])
    history = model.fit(x, y, sample_weight=sample_weight, batch_size=batch_size, epochs=1,
                        shuffle=False, verbose=0)
    return model, history.history


def _mlp(l2=0.0):
    def build():
        reg = keras.regularizers.L2(l2) if l2 else None
        return keras.Sequential([
            keras.Input((6,)),
            keras.layers.Dense(16, activation="tanh", kernel_regularizer=reg),
            keras.layers.Dense(4, activation="softmax", kernel_regularizer=reg),
        ])
    return build


def _classification(n, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(dtype)
    y = rng.integers(0, 4, size=n)
    sample_weight = rng.uniform(0.1, 2.0, size=n).astype(dtype)
    return x, y, sample_weight


OPTIMIZERS = {
    "sgd_momentum": lambda: keras.optimizers.SGD(learning_rate=0.1, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(learning_rate=0.01),
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_mlp_with_l2_and_sample_weights_float32(optimizer):
    keras.utils.set_random_seed(1)
    build = _mlp(l2=0.01)
    x, y, sw = _classification(96)
    weights = build().get_weights()
    loss = keras.losses.SparseCategoricalCrossentropy()
    want, updates = _reference(build, weights, OPTIMIZERS[optimizer](), loss, x, y, sw, 24)
    model, _ = _virtual(build, weights, OPTIMIZERS[optimizer](), loss, x, y, sw, 24, micro=6)
    assert int(model.optimizer.iterations.numpy()) == updates == 4
    assert _max_relative_error(model.get_weights(), want) <= 1e-5
    # The update really moved the weights (the comparison is not trivially equal).
    assert _max_relative_error(weights, want) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_mlp_float64_is_exact_to_round_off(optimizer):
    keras.backend.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    keras.utils.set_random_seed(2)
    build = _mlp()
    x, y, sw = _classification(60, seed=2, dtype="float64")
    weights = build().get_weights()
    assert weights[0].dtype == np.float64
    loss = keras.losses.SparseCategoricalCrossentropy(dtype="float64")
    want, _ = _reference(build, weights, OPTIMIZERS[optimizer](), loss, x, y, sw, 20)
    model, _ = _virtual(build, weights, OPTIMIZERS[optimizer](), loss, x, y, sw, 20, micro=3)
    assert _max_relative_error(model.get_weights(), want) <= 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_k1_single_pass_with_l2_and_sample_weights(optimizer):
    """k = 1 (no micro-batches) takes a single-pass path: still plain Keras' update."""
    keras.utils.set_random_seed(8)
    build = _mlp(l2=0.01)
    x, y, sw = _classification(50, seed=8)
    weights = build().get_weights()
    loss = keras.losses.SparseCategoricalCrossentropy()
    want, _ = _reference(build, weights, OPTIMIZERS[optimizer](), loss, x, y, sw, 16)
    model, _ = _virtual(build, weights, OPTIMIZERS[optimizer](), loss, x, y, sw, 16, micro=None)
    assert _max_relative_error(model.get_weights(), want) <= 1e-5


@pytest.mark.slow
def test_ragged_last_virtual_batch_weights_by_real_rows():
    """70 rows at B=24, b=8: batches 24, 24, 22; the last has 3 micro-batches of 8, 8, 6."""
    keras.utils.set_random_seed(3)
    build = _mlp(l2=0.001)
    x, y, sw = _classification(70, seed=3)
    weights = build().get_weights()
    loss = keras.losses.SparseCategoricalCrossentropy()
    for sample_weight in (None, sw):
        want, updates = _reference(build, weights, OPTIMIZERS["sgd_momentum"](), loss, x, y,
                                   sample_weight, 24)
        model, _ = _virtual(build, weights, OPTIMIZERS["sgd_momentum"](), loss, x, y,
                            sample_weight, 24, micro=8)
        assert updates == 3 == int(model.optimizer.iterations.numpy())
        assert _max_relative_error(model.get_weights(), want) <= 1e-5


@pytest.mark.slow
def test_ragged_last_batch_with_fewer_micro_batches_than_k():
    """52 rows at B=24, b=6: the last batch (4 rows) is a single, short micro-batch."""
    keras.utils.set_random_seed(4)
    build = _mlp()
    x, y, sw = _classification(52, seed=4)
    weights = build().get_weights()
    loss = keras.losses.SparseCategoricalCrossentropy()
    want, _ = _reference(build, weights, OPTIMIZERS["adam"](), loss, x, y, sw, 24)
    model, _ = _virtual(build, weights, OPTIMIZERS["adam"](), loss, x, y, sw, 24, micro=6)
    assert _max_relative_error(model.get_weights(), want) <= 1e-5


def _masked_lstm():
    """Token sequences with trailing padding (id 0): the loss counts only the real steps."""
    def build():
        return keras.Sequential([
            keras.Input((7,), dtype="int32"),
            keras.layers.Embedding(12, 5, mask_zero=True),
            keras.layers.LSTM(8, return_sequences=True),
            keras.layers.Dense(3, activation="softmax"),
        ])
    return build


def _sequences(n, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 8, size=n)  # 1..7 real steps: very uneven valid-step counts
    x = rng.integers(1, 12, size=(n, 7)).astype("int32")
    x[np.arange(7)[None, :] >= lengths[:, None]] = 0
    y = rng.integers(0, 3, size=(n, 7))
    # One weight per sequence, shaped (n, 1) so that it broadcasts over the steps (plain Keras
    # rejects an (n,) weight against a masked (n, steps) loss).
    sample_weight = rng.uniform(0.2, 3.0, size=(n, 1)).astype("float32")
    return x, y, sample_weight


@pytest.mark.slow
def test_embedding_mask_zero_per_step_loss_with_sample_weights():
    """Normalised over the valid steps of the whole virtual batch, not per micro-batch.

    SGD with momentum: Keras' Adam squares each token occurrence's slice of an Embedding gradient
    separately (see ``test_masking_layer_sequence_loss_with_sample_weights`` for Adam).
    """
    keras.utils.set_random_seed(5)
    build = _masked_lstm()
    x, y, sw = _sequences(45, seed=5)  # B=20, b=4: last batch 5 rows = micro-batches 4 + 1
    weights = build().get_weights()
    loss = keras.losses.SparseCategoricalCrossentropy()
    optimizer = OPTIMIZERS["sgd_momentum"]
    want, updates = _reference(build, weights, optimizer(), loss, x, y, sw, 20)
    model, _ = _virtual(build, weights, optimizer(), loss, x, y, sw, 20, micro=4)
    assert updates == 3
    assert _max_relative_error(model.get_weights(), want) <= 1e-5
    # Per-micro-batch normalisation (what a naive accumulator does) is measurably different.
    naive = build()
    naive.set_weights(weights)
    naive.compile(optimizer=optimizer(), loss=loss)
    for rows in _batches(45, 20):
        sub = [slice(s, min(s + 4, rows.stop)) for s in range(rows.start, rows.stop, 4)]
        grads = None
        for part in sub:
            with tf.GradientTape() as tape:
                value = loss(y[part], naive(x[part], training=True), sample_weight=sw[part])
            g = [tf.convert_to_tensor(t) for t in
                 tape.gradient(value, naive.trainable_variables)]
            grads = g if grads is None else [a + b for a, b in zip(grads, g)]
        naive.optimizer.apply([g / len(sub) for g in grads], naive.trainable_variables)
    assert _max_relative_error(naive.get_weights(), want) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_masking_layer_sequence_loss_with_sample_weights(optimizer):
    """A Masking layer on real-valued inputs propagates its mask to the per-step loss too."""
    keras.utils.set_random_seed(6)

    def build():
        return keras.Sequential([
            keras.Input((6, 3)),
            keras.layers.Masking(0.0),
            keras.layers.LSTM(6, return_sequences=True),
            keras.layers.Dense(1),
        ])

    rng = np.random.default_rng(6)
    x = rng.normal(size=(24, 6, 3)).astype("float32")
    lengths = rng.integers(1, 7, size=24)
    x[np.arange(6)[None, :] >= lengths[:, None]] = 0.0
    y = rng.normal(size=(24, 6, 1)).astype("float32")
    sw = rng.uniform(0.2, 3.0, size=(24, 1)).astype("float32")
    weights = build().get_weights()
    loss = keras.losses.MeanSquaredError()
    # B=12, b=5 is not allowed by the runner (12 % 5), but the step itself handles any split:
    # micro-batches of 5, 5 and 2 rows with different numbers of valid steps.
    want, _ = _reference(build, weights, OPTIMIZERS[optimizer](), loss, x, y, sw, 12)
    for micro in (5, None):  # also k = 1: the mask still sets the denominator
        model, _ = _virtual(build, weights, OPTIMIZERS[optimizer](), loss, x, y, sw, 12,
                            micro=micro)
        assert _max_relative_error(model.get_weights(), want) <= 1e-5


def test_metrics_count_every_row_of_the_virtual_batch():
    """The logged loss and accuracy are those of all rows, weighted as Keras weighs them."""
    keras.utils.set_random_seed(7)
    build = _mlp()
    x, y, _ = _classification(40, seed=7)
    weights = build().get_weights()
    loss = keras.losses.SparseCategoricalCrossentropy()
    # One virtual batch of 40 rows in micro-batches of 16, 16, 8: the logs are taken before the
    # update is visible to the metrics, so they equal the plain model's metrics at the start.
    plain = build()
    plain.set_weights(weights)
    plain.compile(loss=loss, metrics=["accuracy"])
    start = plain.evaluate(x, y, batch_size=40, verbose=0, return_dict=True)
    _, history = _virtual(build, weights, keras.optimizers.SGD(0.1), loss, x, y, None, 40,
                          micro=16, metrics=["accuracy"])
    assert history["accuracy"][0] == pytest.approx(start["accuracy"], abs=1e-7)
    assert history["loss"][0] == pytest.approx(start["loss"], rel=1e-5)


def _per_step_regression():
    def build():
        return keras.Sequential([keras.Input((5, 3)), keras.layers.Dense(4, activation="tanh"),
                                 keras.layers.Dense(1)])
    rng = np.random.default_rng(8)
    x = rng.normal(size=(26, 5, 3)).astype("float32")
    y = rng.normal(size=(26, 5, 1)).astype("float32")
    return build, x, y, rng


@pytest.mark.parametrize("micro", [4, None])
def test_mean_with_sample_weight_divides_by_the_row_weights_as_keras_does(micro):
    """A per-row weight of shape (n, 1) on a per-step loss, no mask: Keras divides by the sum of
    the weights (once per row), not once per step (an update T times too small)."""
    build, x, y, rng = _per_step_regression()
    sw = rng.uniform(0.2, 3.0, size=(26, 1)).astype("float32")
    loss = keras.losses.MeanSquaredError(reduction="mean_with_sample_weight")
    weights = build().get_weights()
    want, _ = _reference(build, weights, keras.optimizers.SGD(0.05), loss, x, y, sw, 10)
    model, _ = _virtual(build, weights, keras.optimizers.SGD(0.05), loss, x, y, sw, 10, micro)
    assert _max_relative_error(model.get_weights(), want) <= 1e-6
    moved = _max_relative_error(weights, want)
    assert moved > 1e-2  # the update is not negligible: a 1/T-sized one would fail above


@pytest.mark.parametrize("micro", [3, 4])
def test_a_loss_returning_a_scalar_is_weighted_by_rows_in_ragged_batches(micro):
    """A loss function that returns its own mean: micro-batches of 3, 3, 3, 1 rows (or 4, 4, 2)
    add up to the whole batch's mean, not to the mean of the micro-batches' means."""
    build = _mlp()
    x, y, _ = _classification(30)

    def scalar_loss(y_true, y_pred):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y_true, y_pred))

    weights = build().get_weights()
    want, _ = _reference(build, weights, keras.optimizers.SGD(0.5), scalar_loss, x, y, None, 10)
    model, _ = _virtual(build, weights, keras.optimizers.SGD(0.5), scalar_loss, x, y, None, 10,
                        micro)
    assert _max_relative_error(model.get_weights(), want) <= 1e-6
    with pytest.raises(ValueError, match="returns a scalar"):
        _virtual(build, weights, keras.optimizers.SGD(0.5), scalar_loss, x, y,
                 np.ones(30, "float32"), 10, micro)


@pytest.mark.parametrize("make, message", [
    (lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)),
     "LossScaleOptimizer.*auto_scale_loss=False"),
    # Keras' own step multiplies the loss by the factor: batchlab's trained 124x too small
    (lambda: keras.optimizers.SGD(0.1, loss_scale_factor=128.0), "loss_scale_factor=128.0"),
])
def test_a_loss_scaling_optimizer_is_refused_before_any_update(make, message):
    """Its loss scale would divide every update (the step never multiplies the loss by it);
    refused at compile, before a run directory exists."""
    build = _mlp()
    model = virtual_batch_model.as_virtual_batch_model(build(), micro_batch_size=5)
    with pytest.raises(ValueError, match=message):
        model.compile(optimizer=make(), loss="sparse_categorical_crossentropy")


def _regression(n=30, seed=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = rng.normal(size=(n,)).astype("float32")  # shape (n,): the output's is (n, 1)

    def build():
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
                                 keras.layers.Dense(1, name="out")])
    return build, x, y


def _fit_both(build, x, y, micro, **compile_args):
    """(weights, logged losses) of plain Keras' fit and of the virtual-batch model's fit over the
    same batches of 10 rows from the same weights, compiled alike."""
    weights = build().get_weights()
    results = []
    for wrap in (False, True):
        model = build()
        if wrap:
            model = virtual_batch_model.as_virtual_batch_model(model, micro_batch_size=micro)
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.1), **compile_args)
        history = model.fit(x, y, batch_size=10, epochs=2, shuffle=False, verbose=0)
        results.append((model.get_weights(), history.history["loss"]))
    return weights, results


@pytest.mark.parametrize("micro", [4, None])
def test_a_plain_loss_function_sees_labels_aligned_as_keras_aligns_them(micro):
    """Keras aligns labels of shape (n,) with an output of shape (n, 1) before calling a plain
    loss function; called on them directly, (y_true - y_pred) broadcast to (n, n) and the update
    was 46-74% off, the logged loss changing with the micro-batch size."""
    build, x, y = _regression()

    def squared_error(y_true, y_pred):
        return tf.reduce_mean(tf.square(y_true - y_pred), axis=-1)

    weights, ((want, want_loss), (got, got_loss)) = _fit_both(build, x, y, micro,
                                                               loss=squared_error)
    assert _max_relative_error(got, want) <= 1e-6
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    assert _max_relative_error(weights, want) > 1e-2


@pytest.mark.parametrize("loss_weights", [3.0, [3.0], {"out": 3.0}])
def test_loss_weights_multiply_the_loss_as_keras_does(loss_weights):
    """``compile(loss_weights=...)`` was ignored: the update 3 times too small, the logged loss a
    third of Keras'."""
    build, x, y = _regression()
    _, ((want, want_loss), (got, got_loss)) = _fit_both(
        build, x, y, 4, loss="mse", loss_weights=loss_weights)
    assert _max_relative_error(got, want) <= 1e-6
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)


def test_loss_weights_naming_another_output_are_refused():
    build, _, _ = _regression()
    model = virtual_batch_model.as_virtual_batch_model(build(), micro_batch_size=4)
    with pytest.raises(ValueError, match="one output"):
        model.compile(optimizer="sgd", loss="mse", loss_weights=[1.0, 2.0])


def test_a_model_with_two_outputs_is_refused():
    """Keras sums one loss per output; the step's one loss over both outputs gave half the
    update."""
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(4)(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(1)(hidden), keras.layers.Dense(1)(hidden)])
    with pytest.raises(ValueError, match="one output; .* has 2"):
        virtual_batch_model.as_virtual_batch_model(model, micro_batch_size=4)


@pytest.mark.parametrize("method", ["compute_loss", "train_step", "call"])
def test_a_subclass_whose_override_would_not_run_is_refused(method):
    """The virtual-batch model rebuilds the graph from the inputs and outputs with its own step:
    a functional subclass's compute_loss (an extra loss term) was silently dropped."""
    def override(self, *args, **kwargs):
        return getattr(keras.Model, method)(self, *args, **kwargs)

    subclass = type("WithOverride", (keras.Model,), {method: override})
    inputs = keras.Input((6,))
    model = subclass(inputs, keras.layers.Dense(1)(inputs))
    with pytest.raises(ValueError, match=f"overrides {method}"):
        virtual_batch_model.as_virtual_batch_model(model, micro_batch_size=4)
