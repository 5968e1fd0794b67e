"""batchlab's callbacks in any model.fit, Keras' own callbacks from gin, and TensorBoard's two
axes (per epoch and per update) told apart."""

import csv
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from callbacks.generalization_gap import GeneralizationGap
from callbacks.gradient_norm import GradientNorm, PlainFitStep
from experiments import launch
from tests.helpers import event_tags, event_values


def _plain_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    return model


def _data(n=48):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 5)).astype("float32")
    return x, rng.integers(0, 3, n)


def test_gradient_norm_in_a_plain_fit_measures_the_batch_just_trained():
    x, y = _data()
    model = _plain_model()
    start = [w.copy() for w in model.get_weights()]
    norm = GradientNorm(every_n_updates=2)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[norm])
    logged = {step: values["gradients/global_norm"] for step, values in norm.history}
    assert sorted(logged) == [2, 4, 6]

    replay = _plain_model()  # the same updates by hand: plain SGD, w -= 0.1 g
    replay.set_weights(start)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    expected = {}
    for update in range(1, 7):
        rows = slice(8 * (update - 1), 8 * update)
        with tf.GradientTape() as tape:
            loss = loss_fn(y[rows], replay(x[rows], training=True))
        grads = tape.gradient(loss, replay.trainable_variables)
        expected[update] = float(tf.linalg.global_norm(grads))
        for variable, grad in zip(replay.trainable_variables, grads):
            variable.assign_sub(0.1 * grad)
    for update, value in logged.items():
        assert value == pytest.approx(expected[update], rel=1e-5)
    assert 0 < norm.history[0][1]["update_ratio/global"] < 1
    assert not hasattr(model.__dict__, "train_step") and "train_step" not in vars(model)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # the model's own step is back


def test_no_duplicate_gap_tags_in_a_plain_fit_with_keras_tensorboard(tmp_path):
    x, y = _data()
    model = _plain_model()
    log_dir = str(tmp_path / "logs")
    gap = GeneralizationGap((x[:16], y[:16]), (x[32:], y[32:]), log_dir=log_dir)
    model.fit(x[:32], y[:32], batch_size=8, epochs=2, verbose=0,
              validation_data=(x[32:], y[32:]),
              callbacks=[gap, keras.callbacks.TensorBoard(log_dir)])
    gap.flush()
    tags = event_tags(log_dir)
    assert "generalization_gap/loss" in tags and "epoch_loss" in tags
    assert not [t for t in tags if t.startswith(("epoch_generalization_gap", "epoch_train_inf"))]
    # per epoch (step = epoch) and the same on the update axis (step = updates so far)
    assert [s for s, _ in event_values(log_dir, "generalization_gap/loss")] == [0, 1]
    assert [s for s, _ in event_values(log_dir, "by_update/generalization_gap/loss")] == [4, 8]


def test_keras_callbacks_and_tensorboard_options_from_gin(tmp_path):
    output = tmp_path / "runs"
    bindings = [
        "train.verbose = 0", "train.epochs = 3", "train.batch_size = 64",
        "train.extra_callbacks = [@keras.callbacks.EarlyStopping(), @keras.callbacks.CSVLogger()]",
        "keras.callbacks.EarlyStopping.monitor = 'loss'",
        "keras.callbacks.EarlyStopping.min_delta = 100.0",  # nothing improves that much: stops
        "keras.callbacks.EarlyStopping.patience = 1",
        f"keras.callbacks.CSVLogger.filename = '{tmp_path / 'log.csv'}'",
        "batchlab.TensorBoard.histogram_freq = 1",
    ]
    launch.launch(["gin/experiments/digits_mlp.gin"], bindings, output_dir=str(output),
                  print_fn=lambda *_: None)
    with open(tmp_path / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2  # EarlyStopping ended the run after 2 of 3 epochs
    assert "generalization_gap_loss" in rows[0]  # the gap is in the logs, for such callbacks
    (run,) = glob.glob(str(output / "digits_mlp" / "*" / "tensorboard"))
    tags = event_tags(run)
    assert any(tag.endswith("_histogram") or "kernel" in tag for tag in tags), sorted(tags)
    assert "generalization_gap/loss" in tags
    assert not [t for t in tags if t.startswith(("epoch_generalization_gap", "epoch_train_inf"))]
    updates = {s for s, _ in event_values(run, "by_update/epoch_loss")}  # train/, validation/
    assert {s for s, _ in event_values(run, "epoch_loss")} == {0, 1}
    assert updates == {23, 46}  # 1437 training examples at B = 64: 23 updates per epoch


def _normalized_model(seed=0, jit_compile=False):
    """BatchNormalization and Dropout: state a measuring forward pass could change."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="tanh"),
                              keras.layers.BatchNormalization(), keras.layers.Dropout(0.5),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=jit_compile)
    return model


def test_gradient_norm_leaves_batch_norm_dropout_and_metrics_as_without_it():
    """The extra forward pass of a plain fit puts back the moving statistics, the dropout seed
    and the metrics: the run is bit for bit the run without the callback, and the logged norm is
    that of the gradient applied (|w_after - w_before| / lr under plain SGD)."""
    x, y = _data()
    runs = {}
    for measured in (False, True):
        model = _normalized_model()
        norm = GradientNorm(every_n_updates=2)
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                            callbacks=[norm] if measured else [])
        runs[measured] = (model.get_weights(), history.history, norm)
    for without, with_norm in zip(runs[False][0], runs[True][0]):  # moving stats included
        np.testing.assert_array_equal(without, with_norm)
    assert runs[False][1] == runs[True][1]  # loss and accuracy as logged by Keras
    norm = runs[True][2]
    trainable = [v for v in _normalized_model().weights if v.trainable]
    assert len(trainable) == 6 and norm.history
    for _, values in norm.history:  # plain SGD: the applied step is 0.1 g
        ratio, global_norm = values["update_ratio/global"], values["gradients/global_norm"]
        assert ratio > 0 and global_norm > 0
    # The applied gradient, read back from the weights' move at one logged update.
    model = _normalized_model()
    model.fit(x[:8], y[:8], batch_size=8, epochs=1, shuffle=False, verbose=0)  # update 1
    before = [v.numpy().copy() for v in model.trainable_variables]
    probe = GradientNorm(every_n_updates=2, update_ratio=False)
    model.fit(x[8:16], y[8:16], batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[probe])  # update 2: measured
    moved = np.sqrt(sum(np.sum((v.numpy() - b) ** 2)
                        for v, b in zip(model.trainable_variables, before)))
    assert probe.history[0][0] == 2
    assert probe.history[0][1]["gradients/global_norm"] == pytest.approx(moved / 0.1, rel=1e-5)


def test_gradient_norm_works_on_a_fresh_compiled_model():
    """jit_compile: the measuring branch holds no variable creation of Keras' first step."""
    x, y = _data()
    norm = GradientNorm(every_n_updates=3)
    _normalized_model(jit_compile=True).fit(x, y, batch_size=8, epochs=1, verbose=0,
                                            callbacks=[norm])
    assert [step for step, _ in norm.history] == [3, 6]


def test_weight_distance_measures_a_second_model_from_its_own_start():
    from callbacks.weight_distance import WeightDistance
    x, y = _data()
    distance = WeightDistance()
    first = _plain_model(seed=0)
    first.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[distance])
    second = _plain_model(seed=3)
    start = [w.copy() for w in second.get_weights()]
    second.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[distance])
    expected = np.sqrt(sum(np.sum((w.astype(np.float64) - s) ** 2)
                           for w, s in zip(second.get_weights(), start)))
    assert distance.history[-1][1]["weights/distance_from_init"] == pytest.approx(expected,
                                                                                  rel=1e-5)


def _spe_model(steps_per_execution):
    model = _plain_model()
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                  steps_per_execution=steps_per_execution)
    return model


def test_throughput_counts_updates_with_a_short_last_call():
    """60 rows at B = 8: 8 updates in calls of 3, 3 and 2 (Keras names the last call 8)."""
    from callbacks.throughput import Throughput
    x, y = _data(60)
    throughput = Throughput(examples_per_epoch=60)
    _spe_model(3).fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[throughput],
                      validation_data=(x, y))
    values = throughput.history[-1][1]
    updates = values["throughput/updates_per_sec"] * values["throughput/train_seconds"]
    assert updates == pytest.approx(8.0, rel=1e-9)
    assert values["throughput/train_seconds"] < values["throughput/epoch_seconds"]


def test_periodic_checkpoint_saves_where_calls_step_over_a_multiple():
    """steps_per_execution = 2, every 3 updates: saved at 4 (over 3), 6, 10 (over 9), 12, 16
    (over 15), each at the real position; 60 rows at B = 8 with 3 per call: 8 updates, not 9."""
    from callbacks.checkpointing import PeriodicCheckpoint
    x, y = _data(64)
    saved = []
    checkpoint = PeriodicCheckpoint(lambda *position: saved.append(position), every_n_updates=3)
    _spe_model(2).fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[checkpoint])
    assert saved == [(0, 4, 4), (0, 6, 6), (1, 2, 10), (1, 4, 12), (1, 8, 16)]
    x, y = _data(60)
    saved.clear()
    model = _spe_model(3)
    last = PeriodicCheckpoint(lambda *position: saved.append(position), every_n_updates=4)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[last])
    assert saved == [(0, 6, 6), (0, 8, 8)]
    assert int(model.optimizer.iterations.numpy()) == 8
    # A repeated dataset: Keras runs whole calls of 4 past steps_per_epoch = 10 (12 updates);
    # the last save said update 10 (its ``batch`` clamped to the epoch's steps).
    saved.clear()
    model = _spe_model(4)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    every = PeriodicCheckpoint(lambda *position: saved.append(position), every_n_updates=5)
    model.fit(data, steps_per_epoch=10, epochs=1, verbose=0, callbacks=[every])
    assert saved == [(0, 8, 8), (0, 12, 12)] and int(model.optimizer.iterations.numpy()) == 12


def test_probe_and_adascale_log_run_where_calls_step_over_a_multiple():
    from callbacks.adascale_log import AdaScaleLog
    from callbacks.noise_scale_probe import NoiseScaleProbe
    x, y = _data(64)
    probe = NoiseScaleProbe((x, y), sizes=(4, 8), num_draws=3, every_n_updates=3, at_end=False)
    _spe_model(2).fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[probe])
    assert [step for step, _ in probe.history] == [4, 6]
    model = _plain_model()
    with pytest.raises(ValueError, match="AdaScale"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[AdaScaleLog()])
    assert int(model.optimizer.iterations.numpy()) == 0  # refused before any update


def test_a_fit_that_raised_leaves_no_second_wrapper_for_the_next():
    """on_train_end does not run when a fit raises: the next fit takes the old wrapper off."""
    x, y = _data()
    model = _plain_model()
    norm = GradientNorm(every_n_updates=2)

    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[norm, Boom()])
    assert getattr(vars(model).get("train_step"), "plain_fit_step", False)  # left behind
    wrapped = []
    original = PlainFitStep._measure

    def counted(self, data):  # traced once per wrapper around Keras' step
        wrapped.append(self)
        return original(self, data)

    PlainFitStep._measure = counted
    try:
        norm.history.clear()
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[norm])
    finally:
        PlainFitStep._measure = original
    assert len(wrapped) == 1
    assert [step for step, _ in norm.history] == [2, 4, 6, 7]  # updates 2..7, the epoch's end
    assert "train_step" not in vars(model)


def test_a_second_fit_continues_the_curves_clock_and_the_range_tests_steps(tmp_path):
    """The same PeriodicEvaluation over two fits: its seconds restarted at the second fit (not
    monotone, so a time-to-target across fits read wrong). A range test on a model that trained
    before keyed its points 1, 2, ... where the optimizer's count was 5, 6, ..."""
    from callbacks.lr_range_test import LearningRateRangeTest
    from callbacks.periodic_evaluation import PeriodicEvaluation
    from tests.helpers import event_values

    x, y = _data(32)
    model = _plain_model()
    curve = PeriodicEvaluation((x, y), every_n_updates=2)
    for _ in range(2):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[curve])
    updates = [u for u, _ in curve.seconds]
    seconds = [s for _, s in curve.seconds]
    assert updates == [2, 4, 6, 8] and seconds == sorted(seconds)
    ramp = LearningRateRangeTest(1e-3, 1e-1, num_updates=3, log_dir=str(tmp_path))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[ramp])
    assert [step for step, _ in event_values(str(tmp_path), "lr_range/loss")] == [9, 10, 11]
