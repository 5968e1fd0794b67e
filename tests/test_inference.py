"""``engine.inference.evaluate_rows``: forward passes per batch, loss and metrics once over all rows,
against Keras' own ``model.evaluate`` on the same rows and batch size."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments.engine import inference


def _data(rows=70):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    return x, y


def _model(loss=None, activity_regularizer=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="relu", activity_regularizer=activity_regularizer),
        keras.layers.Dropout(0.5), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", metrics=["accuracy", keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="xent")],
                  loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _in_graph(model, x, y, batch_size):
    run = tf.function(lambda x, y: inference.evaluate_rows(model, x, y, batch_size))
    return {name: float(value) for name, value in run(tf.constant(x), tf.constant(y)).items()}


@pytest.mark.parametrize("forward_bytes", [0, inference.FORWARD_BYTES])
@pytest.mark.parametrize("batch_size", [1, 16, 32, 70, 100])
def test_equals_keras_evaluate(batch_size, forward_bytes, monkeypatch):
    """70 rows: ragged last batches, one batch, a batch larger than the set; forward passes of
    the evaluation batch (a budget of 0 bytes) and of every row at once (the default budget)."""
    monkeypatch.setattr(inference, "FORWARD_BYTES", forward_bytes)
    x, y = _data()
    model = _model()
    expected = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
    assert inference.lean_evaluation(model)  # the loss and metrics once over all rows
    got = _in_graph(model, x, y, batch_size)
    assert set(got) == set(expected)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert got["accuracy"] == expected["accuracy"]  # a count: exact
    assert got["xent"] == pytest.approx(expected["xent"], rel=1e-6)


def _while_loops(model, rows, batch_size):
    """While ops in the graph ``evaluate_rows`` builds for ``rows`` rows."""
    x, y = _data(rows)
    run = tf.function(lambda x, y: inference.evaluate_rows(model, x, y, batch_size))
    graph = run.get_concrete_function(tf.constant(x), tf.constant(y)).graph
    return [op.type for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]


def test_every_row_in_one_pass_runs_no_loop(monkeypatch):
    """Where every row fits one forward pass, the graph has no loop (nor its TensorArray); where
    they do not, the other passes run in one."""
    model = _model()
    assert _while_loops(model, 70, 16) == []  # the default budget: 70 rows in one pass
    monkeypatch.setattr(inference, "FORWARD_BYTES", 0)
    assert _while_loops(model, 70, 70) == []  # one evaluation batch
    assert len(_while_loops(model, 70, 16)) == 1


def _forward_rows(model, rows, batch_size):
    return inference.forward_rows(model, tf.zeros([rows, 6]), batch_size)


def test_forward_rows_take_what_fits_the_budget(monkeypatch):
    """A forward pass takes more rows than the evaluation batch only while their inputs and layer
    outputs fit ``FORWARD_BYTES``: here 6 + 8 + 8 + 2 floats, 96 bytes per row."""
    model = _model()
    assert inference.activation_bytes_per_row(model) == (8 + 8 + 2) * 4
    monkeypatch.setattr(inference, "FORWARD_BYTES", 96 * 50)
    assert _forward_rows(model, 70, 16) == 50
    assert _forward_rows(model, 40, 16) == 40  # every row fits
    assert _forward_rows(model, 70, 64) == 64  # never fewer than the evaluation batch
    monkeypatch.setattr(inference, "FORWARD_BYTES", 96 * 50 - 1)
    assert _forward_rows(model, 70, 16) == 49


def test_forward_rows_keep_the_batch_where_batching_shows(monkeypatch):
    """Unknown activations (a subclassed model) and a layer's own metric in the forward pass
    (its value depends on the batches) keep the evaluation batch."""

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    subclassed = Subclassed()
    subclassed(tf.zeros([1, 6]))
    assert inference.activation_bytes_per_row(subclassed) is None
    assert _forward_rows(subclassed, 70, 16) == 16
    tracking = keras.Sequential([keras.Input((6,)), _TracksActivation(), keras.layers.Dense(2)])
    assert _forward_rows(tracking, 70, 16) == 16
    assert _forward_rows(_model(), 70, 16) == 70


def test_inference_mode_and_no_weight_change():
    """Dropout off (two calls agree), and nothing trained."""
    x, y = _data()
    model = _model()
    before = [w.copy() for w in model.get_weights()]
    assert _in_graph(model, x, y, 16) == _in_graph(model, x, y, 16)
    for b, a in zip(before, model.get_weights()):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("case", ["sum_reduction", "activity_regularizer", "own_test_step"])
def test_falls_back_to_test_step_per_batch(case):
    """Where a per-batch loss is not a mean over rows, the function runs ``test_step`` on each
    batch, as evaluate does: the values are evaluate's, not a mean over all rows."""
    x, y = _data()
    if case == "sum_reduction":
        model = _model(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                       reduction="sum"))
    elif case == "activity_regularizer":
        model = _model(activity_regularizer=keras.regularizers.L2(0.1))
    else:
        class OwnStep(keras.Model):
            def test_step(self, data):
                return super().test_step(data)

        plain = _model()
        model = OwnStep(plain.inputs, plain.outputs)
        model.compile(optimizer="sgd", metrics=["accuracy", keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="xent")],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert not inference.lean_evaluation(model)
    expected = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    got = _in_graph(model, x, y, 32)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-6)
    if case == "sum_reduction":  # evaluate's value is a mean of batch sums, not the whole sum
        whole = float(model.compute_loss(y=y, y_pred=model(x, training=False), training=False))
        assert got["loss"] != pytest.approx(whole, rel=1e-3)


class _AddsLoss(keras.layers.Layer):
    def call(self, inputs):
        self.add_loss(0.1 * keras.ops.sum(keras.ops.square(inputs)))
        return inputs


class _TracksActivation(keras.layers.Layer):
    """Updates a metric of its own in the forward pass."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.activation_mean = keras.metrics.Mean(name="mean_activation")

    def call(self, inputs):
        self.activation_mean.update_state(keras.ops.mean(inputs))
        return inputs


def _batch_rmse(y_true, y_pred):
    """One number per batch (not per row): evaluate averages it over batches."""
    return tf.sqrt(tf.reduce_mean(tf.square(tf.cast(y_true, y_pred.dtype)[:, None] - y_pred)))


def _two_outputs():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(1, name="reg")(hidden),
                                 keras.layers.Dense(2, name="cls")(hidden)])
    model.compile(optimizer="sgd", loss=["mse", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True)], metrics=[[], ["accuracy"]])
    return model


@pytest.mark.slow
@pytest.mark.parametrize("case", ["two_outputs", "add_loss", "batch_scalar_loss",
                                  "batch_scalar_metric", "metric_in_forward_pass",
                                  "large_predictions"])
def test_equals_evaluate_where_batching_matters(case, monkeypatch):
    """Cases where a per-batch value is not a mean over rows (or the predictions are too large
    to keep): the result is still evaluate's, on a ragged last batch (70 rows, batches of 32)."""
    x, y = _data()
    y_fit = y
    if case == "two_outputs":
        model = _two_outputs()
        y_fit = (y.astype(np.float32)[:, None], y)
    else:
        keras.utils.set_random_seed(0)
        extra = {"add_loss": [_AddsLoss()],
                 "metric_in_forward_pass": [_TracksActivation()]}.get(case, [])
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                                  *extra, keras.layers.Dense(2)])
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics = ["accuracy"]
        if case == "batch_scalar_loss":
            loss = _batch_rmse
        if case == "batch_scalar_metric":
            metrics = ["accuracy", _batch_rmse]
        model.compile(optimizer="sgd", loss=loss, metrics=metrics)
    by_batch = []
    if case == "large_predictions":  # 70 x 2 float32 predictions: 560 bytes
        monkeypatch.setattr(inference, "MAX_PREDICTION_BYTES", 100)
        original = inference.by_batch
        monkeypatch.setattr(inference, "by_batch",
                            lambda *args: by_batch.append(1) or original(*args))
    expected = model.evaluate(x, y_fit, batch_size=32, verbose=0, return_dict=True)
    run = tf.function(lambda x, y: inference.evaluate_rows(model, x, y, 32))
    got = {name: float(value) for name, value in run(
        tf.constant(x), tf.nest.map_structure(tf.constant, y_fit)).items()}
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-6), name
    if case == "large_predictions":
        assert by_batch  # not kept: evaluated batch by batch
