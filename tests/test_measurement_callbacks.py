"""Generalization gap and throughput in a plain ``model.fit`` (no batchlab train step needed), and
the encoding of the scalars measurement callbacks write."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from callbacks import summary_writer
from callbacks.generalization_gap import GeneralizationGap, fixed_subset
from callbacks.throughput import Throughput
from tests.helpers import event_values


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return x[:64], y[:64], x[64:], y[64:]


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dropout(0.5), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class _Reference(keras.callbacks.Callback):
    """Evaluates by hand at each epoch end (listed before the gap: same weights)."""

    def __init__(self, subset, validation):
        super().__init__()
        self.subset, self.validation, self.values = subset, validation, []

    def on_epoch_end(self, epoch, logs=None):
        train = self.model.evaluate(*self.subset, verbose=0, return_dict=True)
        val = self.model.evaluate(*self.validation, verbose=0, return_dict=True)
        self.values.append((train, val))


@pytest.mark.slow
@pytest.mark.parametrize("validation_from_logs", [True, False])
def test_gap_is_validation_minus_inference_train(tmp_path, validation_from_logs):
    x, y, xv, yv = _data()
    subset = fixed_subset(x, y, 32, seed=1)
    reference = _Reference(subset, (xv, yv))
    gap = GeneralizationGap(subset, None if validation_from_logs else (xv, yv),
                            log_dir=str(tmp_path), batch_size=16)
    model = _model()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[reference, gap],
              validation_data=(xv, yv) if validation_from_logs else None)
    summary_writer.close_all()
    assert [e for e, _ in gap.history] == [0, 1]
    for (train, val), (_, values) in zip(reference.values, gap.history):
        for name in ("loss", "accuracy"):
            assert values[f"train_inference/{name}"] == pytest.approx(train[name], rel=1e-5)
            assert values[f"generalization_gap/{name}"] == pytest.approx(
                val[name] - train[name], rel=1e-4, abs=1e-6)
    logged = event_values(str(tmp_path), "generalization_gap/loss")
    assert [s for s, _ in logged] == [0, 1]
    assert gap.result() == gap.history[-1][1]


def test_gap_at_train_end_remeasures_only_if_weights_moved():
    """With an EMA optimizer, fit swaps the averaged weights in after the last epoch end."""
    x, y, xv, yv = _data()
    plain = GeneralizationGap((x, y), (xv, yv), batch_size=32)
    _model().fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[plain])
    assert [e for e, _ in plain.history] == [0, 1]  # nothing moved after epoch 1's end

    gap = GeneralizationGap((x, y), (xv, yv), batch_size=32)
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[gap])
    assert [e for e, _ in gap.history] == [0, 1, 2]
    train = model.evaluate(x, y, verbose=0, return_dict=True)
    val = model.evaluate(xv, yv, verbose=0, return_dict=True)
    assert gap.final["train_inference/loss"] == pytest.approx(train["loss"], rel=1e-5)
    assert gap.final["generalization_gap/loss"] == pytest.approx(val["loss"] - train["loss"],
                                                                 rel=1e-4, abs=1e-6)


def test_throughput_counts_updates_and_examples():
    x, y, _, _ = _data()
    throughput = Throughput(examples_per_epoch=64)
    per_batch = Throughput(batch_size=16)
    _model().fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[throughput, per_batch])
    assert [e for e, _ in throughput.history] == [0, 1]
    for (_, a), (_, b) in zip(throughput.history, per_batch.history):
        assert a["throughput/updates_per_sec"] * a["throughput/train_seconds"] == \
            pytest.approx(4.0)
        assert a["throughput/examples_per_sec"] * a["throughput/train_seconds"] == \
            pytest.approx(64.0)
        assert b["throughput/examples_per_sec"] * b["throughput/train_seconds"] == \
            pytest.approx(64.0)
        assert a["throughput/epoch_seconds"] >= a["throughput/train_seconds"] > 0
        assert a["throughput/peak_memory_mb"] > 10


def test_throughput_counts_the_rows_of_an_epoch_that_ran_fewer_updates():
    """An epoch that runs 3 of its 4 steps (as one resumed mid-way, or stopped, does): its
    examples are the rows its updates trained (``rows_trained``), or its share of
    ``examples_per_epoch``; they were the whole epoch's 64."""
    x, y, _, _ = _data()
    exact = Throughput(examples_per_epoch=64, rows_trained=lambda updates: 10 * updates)
    share = Throughput(examples_per_epoch=64)

    class StopAfterThree(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.model.stop_training = batch == 2

    _model().fit(x, y, batch_size=16, epochs=2, verbose=0,
                 callbacks=[exact, share, StopAfterThree()])
    for callback, rows in ((exact, 30.0), (share, 48.0)):
        ((_, epoch),) = callback.history
        assert epoch["throughput/updates_per_sec"] * epoch["throughput/train_seconds"] == \
            pytest.approx(3.0)
        assert epoch["throughput/examples_per_sec"] * epoch["throughput/train_seconds"] == \
            pytest.approx(rows)


def test_the_gap_of_swapped_in_ema_weights_adds_no_second_point_at_the_last_update(tmp_path):
    """With ``use_ema`` Keras swaps the averaged weights in after training, and the gap is
    measured again: a point after the last epoch on the epoch axis, none on the update axis,
    where it was a second, different value at the last update's count."""
    from tests.helpers import event_values  # noqa: PLC0415

    x, y, xv, yv = _data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.5, use_ema=True, ema_momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    gap = GeneralizationGap((x[:32], y[:32]), (xv, yv), log_dir=str(tmp_path))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[gap])
    gap.flush()
    by_epoch = event_values(str(tmp_path), "generalization_gap/loss")
    by_update = event_values(str(tmp_path), "by_update/generalization_gap/loss")
    assert [step for step, _ in by_epoch] == [0, 1, 2]  # the EMA weights' point: epoch 2
    assert [step for step, _ in by_update] == [4, 8]


def test_gap_on_a_stream_dataset_keeps_the_training_state():
    """A stateful model: the subset is evaluated from a zero state, the training state survives."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 12, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=(4, 12)).astype(np.int64)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 3), batch_size=4),
                              keras.layers.GRU(5, stateful=True, return_sequences=True),
                              keras.layers.Dense(2)])
    model.compile(optimizer="sgd", metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    windows = tf.data.Dataset.from_tensor_slices(
        (np.stack([x[:, :6], x[:, 6:]]), np.stack([y[:, :6], y[:, 6:]])))
    gap = GeneralizationGap(windows)
    gap.set_model(model)
    model.predict(x[:, :6], batch_size=4, verbose=0)  # some training-like state
    state = model.layers[0].states[0].numpy().copy()
    measured = gap.measure()
    np.testing.assert_array_equal(model.layers[0].states[0].numpy(), state)
    model.layers[0].reset_state()
    expected = model.evaluate(windows, verbose=0, return_dict=True)
    assert measured["train_inference/loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert measured["train_inference/accuracy"] == pytest.approx(expected["accuracy"])


def test_scalar_events_encode_like_tf_summary(tmp_path):
    """``summary_writer.scalars`` writes what ``tf.summary.scalar`` writes (tag, plugin metadata,
    a float tensor), also when the same tags are written again with other values."""
    from tensorboard.backend.event_processing import event_file_loader  # noqa: PLC0415

    def values_in(directory):
        found = []
        for path in sorted(glob.glob(os.path.join(directory, "**", "events.out.*"),
                                     recursive=True)):
            for event in event_file_loader.EventFileLoader(path).Load():
                found += [(event.step, value) for value in event.summary.value]
        return found

    reference = str(tmp_path / "reference")
    writer = tf.summary.create_file_writer(reference)
    with writer.as_default():
        for step, value in ((3, 0.25), (4, -1.5)):
            tf.summary.scalar("gradients/global_norm", value, step=step)
            tf.summary.scalar("weights/distance_from_init", 2 * value, step=step)
    writer.close()
    ours = str(tmp_path / "ours")
    for step, value in ((3, 0.25), (4, -1.5)):
        summary_writer.scalars(ours, {"gradients/global_norm": value,
                                      "weights/distance_from_init": 2 * value}, step)
    summary_writer.close_all()
    expected, got = values_in(reference), values_in(ours)
    assert [(s, v.tag, v.tensor.float_val[0]) for s, v in got] == \
        [(3, "gradients/global_norm", 0.25), (3, "weights/distance_from_init", 0.5),
         (4, "gradients/global_norm", -1.5), (4, "weights/distance_from_init", -3.0)]
    for (step, mine), (ref_step, theirs) in zip(got, expected):
        assert step == ref_step
        assert mine.tag == theirs.tag
        assert mine.metadata.plugin_data.plugin_name == theirs.metadata.plugin_data.plugin_name
        assert mine.tensor.dtype == theirs.tensor.dtype
        assert mine.tensor.tensor_shape == theirs.tensor.tensor_shape
        assert tf.make_ndarray(mine.tensor) == tf.make_ndarray(theirs.tensor)


def test_event_file_is_what_tensorboard_reads_and_flushes_while_open(tmp_path):
    """``summary_writer.EventFile``: TensorBoard's first event (the file version), then each event
    as written; readable once flushed (by ``flush`` or the flushing thread's ``flush_open``) while
    the file stays open; a closed file refuses more events."""
    from tensorboard.backend.event_processing import event_file_loader  # noqa: PLC0415

    def events(path):
        return list(event_file_loader.EventFileLoader(path).Load())

    event_file = summary_writer.EventFile(str(tmp_path / "train"), suffix=".measurements")
    assert os.path.basename(event_file.path).startswith("events.out.tfevents.")
    assert event_file.path.endswith(".measurements")
    first = events(event_file.path)
    assert [e.file_version for e in first] == ["brain.Event:2"]
    event_file.add_event(summary_writer.scalar_event({"a": 1.5}, 7))
    summary_writer.EventFile.flush_open()
    got = events(event_file.path)[1:]
    assert [(e.step, e.summary.value[0].tag, e.summary.value[0].tensor.float_val[0])
            for e in got] == [(7, "a", 1.5)]
    event_file.close()
    with pytest.raises(ValueError, match="closed"):
        event_file.add_event(summary_writer.scalar_event({"a": 2.0}, 8))
