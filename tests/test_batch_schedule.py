"""Batch-size schedules (Smith et al. 2017): the virtual batch grows during training, b stays.

The exactness tests compare against plain Keras: a ``keras.Model`` with the same initial weights
trained with ``train_on_batch`` on each whole batch of each stage (the rows of each epoch's
seeded order, cut into that stage's B). batchlab trains the same schedule through its own loop,
in micro-batches of b.
"""

import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import launch
from experiments.engine import distribute
from experiments.engine.virtual_batch_model import as_virtual_batch_model
from experiments.inputs import layout as layout_lib
from experiments.inputs import pipelines as pipelines_lib
from experiments.inputs import stream_sources
from experiments.inputs.arrays import arrays
from experiments.inputs.batch_schedule import UpdateSizes, batch_size_schedule
from experiments.inputs.streams import StreamLayout, epoch_offset
from tests import test_distributed as distributed
from tests import test_resume as resume
from tests.helpers import event_values, read_json, run_dirs


def _rows(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = rng.integers(0, 3, size=n)
    data = arrays(x=x, y=y, validation_split=0.0)
    data.sample_weight_train = rng.uniform(0.2, 2.0, size=n).astype("float32")
    return data


# --- the schedule and the sizes of every update ----------------------------------------------

def test_sizes_per_epoch_follow_the_stages_epochs():
    schedule = batch_size_schedule(boundaries=[1, 2], factor=2)
    sizes = UpdateSizes(schedule, schedule.stage_sizes(4), capacity=40)
    assert sizes.epoch(0) == (0, (4,) * 10)
    assert sizes.epoch(1) == (10, (8,) * 5)
    assert sizes.epoch(2) == (15, (16, 16, 8))  # ragged last batch, as without a schedule
    assert sizes.epoch(5) == (24, (16, 16, 8))
    assert [s["update"] for s in sizes.stages(3)] == [0, 10, 15]


def test_sizes_change_mid_epoch_with_updates_as_unit():
    schedule = batch_size_schedule(boundaries=[7, 12], batch_sizes=[12, 36], unit="updates")
    sizes = UpdateSizes(schedule, schedule.stage_sizes(4), capacity=40)
    assert sizes.epoch(0) == (0, (4,) * 7 + (12,))  # 28 rows, then 12 from update 7
    assert sizes.epoch(1) == (8, (12, 12, 12, 4))  # update 12 would take 36: only 4 left
    assert sizes.epoch(2) == (12, (36, 4))
    streams = UpdateSizes(schedule, (1, 3, 9), capacity=10, ragged=False)
    assert streams.epoch(0) == (0, (1,) * 7 + (3,))  # the last window does not fill k = 9


@pytest.mark.parametrize("kwargs, message", [
    ({"boundaries": [2, 2], "factor": 2}, "strictly increasing"),
    ({"boundaries": [0], "factor": 2}, "batch_size_schedule.boundaries must be a positive"),
    ({"boundaries": [], "factor": 2}, "batch_size_schedule.boundaries is empty"),
    ({"boundaries": [1]}, "bind exactly one of factor"),
    ({"boundaries": [1], "factor": 2, "batch_sizes": [8]}, "bind exactly one of factor"),
    ({"boundaries": [1, 2], "factor": [2]}, "has 1 values for 2 boundaries"),
    ({"boundaries": [1], "factor": 2.5}, "batch_size_schedule.factor must be a positive"),
    ({"boundaries": [1], "factor": 0}, "batch_size_schedule.factor must be a positive"),
    ({"boundaries": [1], "factor": 2, "unit": "steps"}, "batch_size_schedule.unit"),
])
def test_bad_schedules_name_their_binding(kwargs, message):
    with pytest.raises(ValueError, match=message):
        batch_size_schedule(**kwargs)


@pytest.mark.parametrize("schedule, message", [
    (dict(boundaries=[1], batch_sizes=[12]), "has B=12, not a multiple of the micro-batch b=8"),
    (dict(boundaries=[1], factor=8), "stage 1 .from epoch 1. has B=64, larger than the 40"),
    (dict(boundaries=[1, 2], batch_sizes=[16, 8]), "stage 2 .from epoch 2. has B=8, not larger"),
    (dict(boundaries=[1], batch_sizes=[8]), "has B=8, not larger than the stage before it"),
    # the advice names what the user bound: a factor, not batch_sizes
    (dict(boundaries=[1], factor=1), "not larger .* give batch_size_schedule.factor > 1"),
])
def test_stage_sizes_are_checked_against_b_and_the_data(schedule, message):
    with pytest.raises(ValueError, match=message):
        layout_lib.build(_rows(), 8, schedule=batch_size_schedule(**schedule))


def _stream(k=1, n=400):
    layout = StreamLayout(num_streams=4, window_length=5, num_micro_batches=k, max_offset=3)
    return stream_sources.stream_series(series=np.arange(n) % 7, validation_split=0.0,
                                        layout=layout)


def test_stream_schedules_grow_k_and_are_checked():
    with pytest.raises(ValueError, match="batch_sizes cannot grow a stream batch"):
        layout_lib.build(_stream(), 4, schedule=batch_size_schedule([1], batch_sizes=[8]))
    with pytest.raises(ValueError, match="k=32 windows of 5 steps per update, more than the 19"):
        layout_lib.build(_stream(), 4, schedule=batch_size_schedule([1], factor=32))


def test_stream_pipeline_cuts_each_epoch_into_its_k_windows():
    schedule = batch_size_schedule(boundaries=[1], factor=3)
    layout = layout_lib.build(_stream(k=2), 4, schedule=schedule)
    assert layout.largest_num_micro_batches == 6 and layout.split_size == 5
    scheduled = pipelines_lib.make(_stream(k=2), layout, seed=3)
    plain = pipelines_lib.make(_stream(k=2), layout_lib.build(_stream(k=2), 4), seed=3)
    first = [x.numpy() for x, _ in scheduled.train_from(0, 0, 1)]
    assert len(first) == 9 == scheduled.steps_in(0) and scheduled.steps_in(1) == 3
    for got, want in zip(first, plain.train_from(0, 0, 1)):  # stage 0: the same batches
        np.testing.assert_array_equal(got, want[0].numpy())
    later = [x.numpy() for x, _ in scheduled.train_from(1, 0, 1)]
    assert [x.shape for x in later] == [(4, 30)] * 3
    series = np.arange(400) % 7
    offset = int(epoch_offset(3, 1, 3).numpy())
    np.testing.assert_array_equal(later[0][1], series[offset + 90:offset + 120])  # stream 1
    np.testing.assert_array_equal(np.concatenate(later, axis=1)[2],
                                  series[offset + 180:offset + 270])


def test_array_pipeline_cuts_each_epoch_order_and_resumes_anywhere():
    schedule = batch_size_schedule(boundaries=[6], factor=3, unit="updates")
    data = _rows()
    layout = layout_lib.build(data, 4, schedule=schedule)
    pipelines = pipelines_lib.make(data, layout, seed=5)
    batches = [b[0].numpy() for b in pipelines.train_from(0, 0, 3)]
    assert [len(b) for b in batches] == [4] * 6 + [12, 4] + [12] * 3 + [4] + [12] * 3 + [4]
    order = pipelines_lib.epoch_order(40, 5, 1).numpy()
    np.testing.assert_array_equal(batches[9], data.x_train[order[12:24]])
    tail = [b[0].numpy() for b in pipelines.train_from(1, 2, 2)]  # resume at epoch 1, update 2
    assert len(tail) == len(batches) - 10
    for got, want in zip(tail, batches[10:]):
        np.testing.assert_array_equal(got, want)


# --- exactness against plain Keras -----------------------------------------------------------

def _mlp():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
                             keras.layers.Dense(3, activation="softmax")])


def _relative_error(got, want):
    diff = np.concatenate([(np.asarray(g, np.float64) - w).ravel() for g, w in zip(got, want)])
    return float(np.linalg.norm(diff) / np.linalg.norm(
        np.concatenate([np.asarray(w, np.float64).ravel() for w in want])))


class _WeightsPerEpoch(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights, self.updates = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([w.copy() for w in self.model.get_weights()])
        self.updates.append(int(self.model.optimizer.iterations.numpy()))


@pytest.mark.parametrize("schedule, optimizer", [
    (dict(boundaries=[1, 2], factor=2), lambda: keras.optimizers.SGD(0.1, momentum=0.9)),
    (dict(boundaries=[7, 12], batch_sizes=[12, 36], unit="updates"),
     lambda: keras.optimizers.Adam(0.01)),
])
def test_each_stage_equals_plain_keras_full_batch_updates(schedule, optimizer):
    keras.utils.set_random_seed(0)
    data, epochs, seed = _rows(), 4, 7
    layout = layout_lib.build(data, 4, schedule=batch_size_schedule(**schedule))
    pipelines = pipelines_lib.make(data, layout, seed=seed)
    initial = _mlp().get_weights()
    model = as_virtual_batch_model(_mlp(), micro_batch_size=layout.split_size)
    model.set_weights(initial)
    model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy")
    seen = _WeightsPerEpoch()
    distribute.fit(model, pipelines, epochs, [seen], tf.distribute.get_strategy(), verbose=0)

    reference = _mlp()
    reference.set_weights(initial)
    reference.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy")
    total = 0
    for epoch in range(epochs):
        order = pipelines_lib.epoch_order(40, seed, epoch).numpy()
        start = 0
        for size in layout.update_sizes.epoch(epoch)[1]:
            rows = order[start:start + size]
            reference.train_on_batch(data.x_train[rows], data.y_train[rows],
                                     sample_weight=data.sample_weight_train[rows])
            start += size
        total += len(layout.update_sizes.epoch(epoch)[1])
        assert _relative_error(seen.weights[epoch], reference.get_weights()) <= 1e-5
        assert seen.updates[epoch] == int(reference.optimizer.iterations.numpy()) == total
    assert layout.largest_num_micro_batches > 1 and model.micro_batch_size == 4


# --- a run from gin: counters, B in TensorBoard and result.json, the Smith experiment --------

SCHEDULED = ["train.verbose = 0", "train.epochs = 3", "train.batch_size = 32",
             "train.batch_size_schedule = @batch_size_schedule()",
             "batch_size_schedule.boundaries = [1, 2]", "batch_size_schedule.factor = 4",
             "measurements.gap_subset_size = 64"]


@pytest.mark.slow
def test_a_run_counts_updates_and_logs_b_per_stage(tmp_path):
    launch.launch(["gin/experiments/measure_digits.gin"],
                  SCHEDULED + ["train.micro_batch_size = 16", "measurements.sharpness.max_iterations = 2"],
                  output_dir=str(tmp_path), print_fn=lambda *_: None)
    (path,) = run_dirs(str(tmp_path))
    result = read_json(os.path.join(path, "result.json"))
    n = result["num_train_examples"]
    per_epoch = [-(-n // 32), -(-n // 128), -(-n // 512)]
    assert result["updates"] == sum(per_epoch)
    assert [(s["epoch"], s["update"], s["batch_size"], s["num_micro_batches"])
            for s in result["batch_size_stages"]] == [
        (0, 0, 32, 2), (1, per_epoch[0], 128, 8), (2, per_epoch[0] + per_epoch[1], 512, 32)]
    assert result["final_batch_size"] == 512 and result["micro_batch_size"] == 16
    assert result["updates_per_epoch"] is None  # the first stage's count matches no later epoch
    logged = event_values(os.path.join(path, "tensorboard", "train"), "batch_size")
    # at the 1-based count of each stage's first update, as every per-update scalar is keyed
    assert logged == [(1, 32.0), (per_epoch[0] + 1, 128.0),
                      (per_epoch[0] + per_epoch[1] + 1, 512.0)]
    assert result["measurements"]["noise_scale/b_simple"] > 0  # estimated from B = k*b each


def test_a_range_test_with_a_schedule_is_refused(tmp_path):
    with pytest.raises(ValueError, match="batch_size_schedule cannot be used with train.mode"):
        launch.launch(["gin/experiments/digits_mlp.gin", "gin/tools/lr_range_test.gin"],
                      SCHEDULED, output_dir=str(tmp_path), print_fn=lambda *_: None)
    assert not os.listdir(tmp_path)


GROW = ["train.batch_size_schedule = @batch_size_schedule()",
        "batch_size_schedule.boundaries = [1]", "batch_size_schedule.factor = 2"]


@pytest.mark.slow
def test_under_mirrored_strategy_each_stage_equals_one_device(tmp_path):
    """B = 256 then 512 (b = 32) over two logical CPUs, the last batch of each epoch split
    unevenly over the replicas: the weights and metrics of one device."""
    mirrored_dir = str(tmp_path / "mirrored")
    os.makedirs(mirrored_dir)
    process = distributed._main("gin/experiments/virtual_batch.gin", mirrored_dir,
                                GROW + ["train.strategy = @mirrored",
                                        "mirrored.num_cpu_devices = 2"])
    single_dir = str(tmp_path / "single")
    launch.launch(["gin/experiments/virtual_batch.gin"], distributed.BINDINGS + GROW, single_dir,
                  print_fn=lambda *_: None)
    distributed._finish(process)
    single = distributed._only_run(single_dir, "virtual_batch")
    distributed._assert_same_training(distributed._only_run(mirrored_dir, "virtual_batch"),
                                      single, updates=6 + 3)  # 1438 rows: 6 x 256, 3 x 512
    assert read_json(os.path.join(single, "result.json"))["final_batch_size"] == 512


@pytest.mark.slow
def test_a_killed_scheduled_run_resumes_with_the_uninterrupted_numbers(tmp_path):
    """SIGKILL mid-epoch in the last stage (the stages change at updates 15 and 25), then
    relaunch: bit-identical metrics, as for a run without a schedule (tests/test_resume.py)."""
    experiment = resume.ARRAYS + [
        "--gin_bindings=train.epochs = 4",
        "--gin_bindings=train.batch_size_schedule = @batch_size_schedule()",
        "--gin_bindings=batch_size_schedule.boundaries = [15, 25]",
        "--gin_bindings=batch_size_schedule.factor = 2",
        "--gin_bindings=batch_size_schedule.unit = 'updates'"]
    output = str(tmp_path)
    resume._run(output, "reference", experiment)
    code, _ = resume._start_and_stop(output, "run", experiment, 25)
    assert code == -signal.SIGKILL
    resume._run(output, "run", experiment)
    result = resume._result(output, "run")
    assert result["resumed_at_updates"][0] >= 25
    assert resume._metrics(result) == resume._metrics(resume._result(output, "reference"))
    # 1438 rows, b = 32: epoch 0 is 12 updates of 128; epoch 1 3 of 128 and 5 of 256; epoch 2
    # 5 of 256 and the last 158 rows in stage 2 (update 25); epoch 3 three of 512.
    assert [s["update"] for s in result["batch_size_stages"]] == [0, 15, 25]
    assert result["updates"] == 12 + 8 + 6 + 3


@pytest.mark.slow
def test_a_stream_run_grows_its_windows_per_update(tmp_path):
    launch.launch(["gin/experiments/char_lm.gin"], [
        "train.verbose = 0", "train.epochs = 2", "stream_text.max_characters = 6000",
        "NUM_STREAMS = 4", "stream_layout.window_length = 25",
        "stateful_stacked_lstm.units = (8,)"] + GROW, output_dir=str(tmp_path),
        print_fn=lambda *_: None)
    (path,) = run_dirs(str(tmp_path))
    result = read_json(os.path.join(path, "result.json"))
    stages = result["batch_size_stages"]
    assert [(s["batch_size"], s["num_micro_batches"]) for s in stages] == [(4, 1), (4, 2)]
    assert result["updates"] == stages[1]["update"] + stages[1]["update"] // 2


@pytest.mark.parametrize("bindings, message", [
    (["batch_size_schedule.batch_sizes = [48]"], "has B=48, not a multiple of the micro-batch"),
    (["batch_size_schedule.factor = 100"], "has B=3200, larger than the 1438 training"),
    (["batch_size_schedule.factor = 2", "batch_size_schedule.boundaries = [3, 1]"],
     "strictly increasing"),
    (["batch_size_schedule.factor = 2", "batch_size_schedule.boundaries = [10]",
      "train.epochs = 10"], "stage 1 .from epoch 10. starts after training ends"),
    (["batch_size_schedule.factor = 2", "batch_size_schedule.boundaries = [450]",
      "batch_size_schedule.unit = 'updates'", "train.epochs = 10"],
     "stage 1 .from update 450. starts after training ends .train.epochs = 10, 450 updates"),
])
def test_bad_schedules_stop_a_launch_before_any_run_directory(tmp_path, bindings, message):
    with pytest.raises(ValueError, match=message):
        launch.launch(["gin/experiments/digits_mlp.gin"],
                      ["train.batch_size_schedule = @batch_size_schedule()",
                       "batch_size_schedule.boundaries = [1]"] + bindings,
                      output_dir=str(tmp_path), print_fn=lambda *_: None)
    assert not run_dirs(str(tmp_path))
