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
from callbacks.gradient_norm import GradientNorm
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
