"""Virtual batches inside training: what counts updates, Ghost BN, the custom loop, bad configs.

One ``train_step`` is one update, so fit steps, ``optimizer.iterations``, learning-rate schedules
(warm-up included), callbacks' batch hooks and TensorBoard steps count virtual batches, on both the
``model.fit`` path and the custom loop. References are plain Keras or closed forms.
"""

import glob
import logging
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments.engine import custom_loop
from experiments import launch
from experiments.models import schedules
from experiments.engine import virtual_batch_model

ROWS, BATCH, MICRO, EPOCHS = 70, 24, 6, 2  # 3 updates per epoch (24, 24, 22 rows)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, 5)).astype("float32")
    y = rng.integers(0, 3, size=ROWS)
    return x, y


def _build():
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(3, activation="softmax")])


def _warmup_sgd():
    return keras.optimizers.SGD(
        learning_rate=schedules.WarmupSchedule(peak_learning_rate=0.2, warmup_steps=4),
        momentum=0.5)


class _Recorder(keras.callbacks.Callback):
    """Records the batch hooks and the learning rate each update uses."""

    def __init__(self):
        super().__init__()
        self.batches, self.learning_rates, self.iterations = [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.learning_rates.append(float(self.model.optimizer.learning_rate))

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append(batch)
        self.iterations.append(int(self.model.optimizer.iterations.numpy()))


def _tensorboard_steps(log_dir, tag):
    steps = []
    for path in glob.glob(os.path.join(log_dir, "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return sorted(steps)


def _virtual_model(weights):
    model = virtual_batch_model.as_virtual_batch_model(_build(), micro_batch_size=MICRO,
                                              virtual_batch_size=BATCH)
    model.set_weights(weights)
    model.compile(optimizer=_warmup_sgd(), loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    return model


def _plain_reference(weights, x, y):
    """Plain Keras, one ``train_on_batch`` per virtual batch, same warm-up schedule."""
    model = _build()
    model.set_weights(weights)
    model.compile(optimizer=_warmup_sgd(), loss=keras.losses.SparseCategoricalCrossentropy())
    for _ in range(EPOCHS):
        for start in range(0, ROWS, BATCH):
            model.train_on_batch(x[start:start + BATCH], y[start:start + BATCH])
    return model.get_weights()


def _relative_error(got, want):
    diff = np.concatenate([(g - w).ravel() for g, w in zip(got, want)])
    return np.linalg.norm(diff) / np.linalg.norm(np.concatenate([w.ravel() for w in want]))


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["keras", "custom"])
def test_steps_schedule_callbacks_and_tensorboard_count_updates(loop, tmp_path):
    keras.utils.set_random_seed(0)
    x, y = _data()
    weights = _build().get_weights()
    model = _virtual_model(weights)
    recorder = _Recorder()
    log_dir = str(tmp_path / "tb")
    callbacks = [recorder, keras.callbacks.TensorBoard(log_dir, update_freq=1, write_graph=False)]
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    if loop == "keras":
        history = model.fit(dataset, epochs=EPOCHS, callbacks=callbacks, verbose=0).history
    else:
        history = custom_loop.CustomLoop(model).fit_from(
            lambda epoch, step, num_epochs: dataset.repeat(num_epochs), 3, EPOCHS,
            callbacks=callbacks, verbose=0).history

    updates = EPOCHS * 3
    assert int(model.optimizer.iterations.numpy()) == updates
    assert recorder.batches == [0, 1, 2] * EPOCHS
    assert recorder.iterations == list(range(1, updates + 1))
    # Warm-up over 4 updates (not 4 micro-batches): 0.05, 0.1, 0.15, then the peak 0.2 (the
    # first update moves: it is not run at 0).
    np.testing.assert_allclose(recorder.learning_rates, [0.05, 0.1, 0.15, 0.2, 0.2, 0.2],
                               atol=1e-7)
    assert _tensorboard_steps(log_dir, "batch_loss") == list(range(1, updates + 1))
    assert len(history["loss"]) == EPOCHS
    assert _relative_error(model.get_weights(), _plain_reference(weights, x, y)) <= 1e-5


@pytest.mark.slow
def test_custom_loop_matches_fit_and_shows_a_progress_bar(capsys):
    keras.utils.set_random_seed(1)
    x, y = _data(1)
    weights = _build().get_weights()
    validation = tf.data.Dataset.from_tensor_slices((x[:30], y[:30])).batch(7)

    def dataset():
        """Shuffled once (seeded): both loops must read the same batches in the same order."""
        return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
            ROWS, seed=3, reshuffle_each_iteration=False).batch(BATCH)

    keras.utils.set_random_seed(1)
    by_fit = _virtual_model(weights)
    fit_logs = by_fit.fit(dataset(), epochs=EPOCHS, validation_data=validation, verbose=0).history
    capsys.readouterr()
    keras.utils.set_random_seed(1)
    by_loop = _virtual_model(weights)
    loop_logs = custom_loop.CustomLoop(by_loop).fit_from(
        lambda epoch, step, num_epochs: dataset().repeat(num_epochs), 3, EPOCHS,
        validation_data=validation, verbose=1).history
    printed = capsys.readouterr().out

    assert "3/3" in printed and "val_loss" in printed  # keras.callbacks.ProgbarLogger
    assert sorted(loop_logs) == sorted(fit_logs)
    for name, values in fit_logs.items():
        np.testing.assert_allclose(loop_logs[name], values, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.concatenate([w.ravel() for w in by_loop.get_weights()]),
                               np.concatenate([w.ravel() for w in by_fit.get_weights()]),
                               rtol=1e-6, atol=1e-7)
    # model.evaluate goes through the loop (as callbacks call it) and matches plain Keras.
    plain = _build()
    plain.set_weights(by_loop.get_weights())
    plain.compile(loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    want = plain.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    got = by_loop.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-7)


def _bn_model(micro, batch):
    inputs = keras.Input((3,))
    outputs = keras.layers.BatchNormalization(momentum=0.5)(inputs)
    outputs = keras.layers.Dense(1)(outputs)
    return virtual_batch_model.as_virtual_batch_model(keras.Model(inputs, outputs), micro_batch_size=micro,
                                             virtual_batch_size=batch)


def _ghost_warnings(caplog):
    return [r for r in caplog.records if "Ghost Batch Normalization" in r.getMessage()]


def test_batch_normalization_is_ghost_bn_and_warns_once(caplog):
    caplog.set_level(logging.WARNING)
    model = _bn_model(micro=4, batch=8)
    assert len(_ghost_warnings(caplog)) == 1
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    rng = np.random.default_rng(2)
    x = rng.normal(loc=3.0, size=(8, 3)).astype("float32")
    y = np.zeros((8, 1), "float32")
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    assert len(_ghost_warnings(caplog)) == 1  # once, not per step or per micro-batch

    # Closed form: moving_mean updated once per micro-batch with that micro-batch's mean.
    moving = np.zeros(3)
    for _ in range(3):
        for part in (x[:4], x[4:]):
            moving = 0.5 * moving + 0.5 * part.mean(axis=0)
    bn = next(layer for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization))
    np.testing.assert_allclose(bn.moving_mean.numpy(), moving, rtol=1e-5)

    caplog.clear()
    _bn_model(micro=8, batch=8)  # k = 1: no ghost batches, no warning
    _bn_model(micro=None, batch=8)
    assert _ghost_warnings(caplog) == []


def test_keras_gradient_accumulation_on_top_is_refused():
    model = virtual_batch_model.as_virtual_batch_model(_build(), micro_batch_size=MICRO)
    with pytest.raises(ValueError, match="already accumulates micro-batches"):
        model.compile(optimizer=keras.optimizers.SGD(0.1, gradient_accumulation_steps=2),
                      loss="sparse_categorical_crossentropy")


def _launch(tmp_path, *bindings):
    output_dir = tmp_path / "runs"
    launch.launch(["gin/experiments/virtual_batch.gin"],
                  ["train.epochs = 1", "train.verbose = 0", *bindings], str(output_dir),
                  print_fn=lambda *_: None)
    return output_dir


@pytest.mark.parametrize("bindings, message", [
    (["train.batch_size = 100", "train.micro_batch_size = 32"],
     "train.batch_size=100 is not a multiple of train.micro_batch_size=32"),
    (["train.batch_size = 32", "train.micro_batch_size = 64"],
     "train.micro_batch_size=64 is larger than the virtual batch train.batch_size=32"),
    (["train.batch_size = 4096", "train.micro_batch_size = 32"],
     r"train.batch_size=4096 is larger than the 1438 training examples"),
    (["train.micro_batch_size = 0"], "train.micro_batch_size must be a positive integer"),
    (["train.batch_size = -256"], "train.batch_size must be a positive integer"),
])
def test_bad_virtual_batch_config_fails_before_any_run_directory(tmp_path, bindings, message):
    with pytest.raises(ValueError, match=message):
        _launch(tmp_path, *bindings)
    assert not (tmp_path / "runs").exists()


def test_main_reports_a_bad_virtual_batch_and_exits(tmp_path):
    import main  # pylint: disable=import-outside-toplevel

    main.FLAGS([
        "main.py", "--gin_file=gin/experiments/virtual_batch.gin",
        "--gin_bindings=train.micro_batch_size = 48", f"--output_dir={tmp_path / 'runs'}"])
    try:
        with pytest.raises(SystemExit) as exit_info:
            main.main(["main.py"])
    finally:
        main.FLAGS.unparse_flags()
    assert "train.batch_size=256 is not a multiple of train.micro_batch_size=48" in str(
        exit_info.value.code)
    assert not (tmp_path / "runs").exists()


def test_virtual_batch_experiment_trains_and_records_updates(tmp_path):
    output_dir = _launch(tmp_path)
    (run,) = glob.glob(str(output_dir / "virtual_batch" / "*"))
    with open(os.path.join(run, "result.json")) as handle:
        text = handle.read()
    assert '"micro_batch_size": 32' in text and '"num_micro_batches": 8' in text
    assert '"updates": 6' in text  # 1438 rows, B = 256: 6 virtual batches, 6 updates
    assert gin.query_parameter("train.micro_batch_size") == 32


class _NormRecorder(keras.callbacks.Callback):
    """Names every ``every``-th update as the measured one before it runs."""

    def __init__(self, every):
        super().__init__()
        self.every = every
        self.weights_before, self.norms = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.weights_before.append(self.model.get_weights())
        coming = int(self.model.optimizer.iterations.numpy()) + 1
        if self.every and coming % self.every == 0:
            self.model.measurements.measured_update.assign(coming)

    def on_train_batch_end(self, batch, logs=None):
        self.norms.append(float(self.model.measurements.gradient_norm.numpy()))


@pytest.mark.parametrize("every", [1, 2, 0, "all"])
def test_gradient_norms_are_recorded_on_the_updates_asked_for(every):
    """The step fills the norms on the update named by ``measured_update`` only (here: every
    ``every``-th; 0: a model built without the norms; 'all': ``measure_every_update``)."""
    keras.utils.set_random_seed(4)
    x, y = _data(4)
    model = virtual_batch_model.as_virtual_batch_model(_build(), micro_batch_size=MICRO,
                                              virtual_batch_size=BATCH,
                                              measure_gradient_norms=every != 0)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    recorder = _NormRecorder(0 if every == "all" else every)  # names each measured update
    if every == "all":  # the step measures every update by itself
        model.measurements.measure_every_update()
        every = 1
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=[recorder])

    plain, loss = _build(), keras.losses.SparseCategoricalCrossentropy()
    expected, last = [], 0.0
    for update, weights in enumerate(recorder.weights_before, start=1):
        if every and update % every == 0:
            rows = slice((update - 1) % 3 * BATCH, ((update - 1) % 3 + 1) * BATCH)
            plain.set_weights(weights)
            with tf.GradientTape() as tape:
                value = loss(y[rows], plain(x[rows], training=True))
            grads = tape.gradient(value, plain.trainable_variables)
            last = float(np.sqrt(sum(np.sum(np.square(g.numpy())) for g in grads)))
        expected.append(last)
    np.testing.assert_allclose(recorder.norms, expected, rtol=1e-5)
    assert (max(expected) > 0) == (every > 0)
