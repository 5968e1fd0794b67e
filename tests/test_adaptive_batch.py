"""The adaptive batch (``train.batch_size_schedule = @adaptive_batch_size()``): its rule, its
decisions against the exact linear-regression recursion, every update against plain Keras
``train_on_batch`` on that update's whole batch, a kill and relaunch, MirroredStrategy, and bad
bindings refused before a run directory exists.
"""

import math
import os
import re
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
from experiments.inputs.adaptive_batch import (AdaptiveUpdateSizes, adaptive_batch_size,
                                               target_batch_size)
from experiments.run import adaptive_batch
from experiments.run.adaptive_batch import AdaptiveBatchController
from tests import test_distributed as distributed
from tests import test_resume as resume
from tests.helpers import event_values, linear_model, read_json, run_dirs
from tests.test_adascale import D, Trajectory, regression_data
from tests.test_batch_schedule import _mlp, _relative_error, _rows


# --- the rule and the sizes of every update --------------------------------------------------
def test_the_target_is_c_b_simple_clipped_and_rounded_to_a_multiple_of_b():
    assert target_batch_size(45.2, 1.0, 8, 256)[0] == 48
    assert target_batch_size(43.9, 1.0, 8, 256)[0] == 40
    assert [target_batch_size(w, 1.0, 8, 256)[0] for w in (20.0, 28.0)] == [24, 32]  # halves up
    assert target_batch_size(45.2, 2.0, 8, 256)[0] == 88
    assert target_batch_size(3.0, 1.0, 8, 256)[0] == 8  # below b: b
    assert target_batch_size(900.0, 1.0, 8, 256)[0] == 256  # above B_max: B_max
    size, reason = target_batch_size(float("inf"), 1.0, 8, 256)
    assert size == 256 and "B_max" in reason


def test_decisions_recut_the_epoch_they_fall_in_and_later_ones():
    sizes = AdaptiveUpdateSizes(adaptive_batch_size(max_batch_size=32, every_n_updates=2),
                                8, 4, capacity=50)
    assert sizes.epoch(0) == (0, (8,) * 6 + (2,)) and sizes.epoch(1)[0] == 7
    assert sizes.decide(4, 16)
    assert sizes.epoch(0) == (0, (8, 8, 8, 8, 16, 2))  # 4 x 8 rows, then 16, then the rest
    assert sizes.epoch(1) == (6, (16, 16, 16, 2))
    assert not sizes.decide(8, 16)  # no change: nothing recut
    assert sizes.decide(8, 4) and sizes.epoch(1) == (6, (16, 16, 4, 4, 4, 4, 2))
    assert [s["size"] for s in sizes.stages(2)] == [8, 16, 4]
    restored = AdaptiveUpdateSizes(sizes.schedule, 8, 4, capacity=50)
    restored.restore([list(d) for d in sizes.decisions])
    assert [restored.epoch(e) for e in range(3)] == [sizes.epoch(e) for e in range(3)]
    with pytest.raises(ValueError, match="comes before the last"):
        sizes.decide(2, 8)


class _Averages:
    """A model whose step measured these noise-scale averages (what the controller reads)."""

    def __init__(self):
        self.b_simple = None
        self.measurements = self

    def noise_scale_values(self):
        if self.b_simple is None:
            return {"averages": None}
        return {"averages": {"gradient_sq_norm": 1.0, "trace_sigma": self.b_simple}}


def test_the_controller_follows_b_simple_and_holds_b_within_its_tolerance():
    settings = adaptive_batch_size(scale=1.0, max_batch_size=256, every_n_updates=5,
                                   min_relative_change=0.25)
    sizes = AdaptiveUpdateSizes(settings, 32, 8, capacity=10_000)
    model = _Averages()
    controller = AdaptiveBatchController(model, sizes)
    assert not controller.decide(5)  # no estimate yet: B stays
    for update, b_simple, want in [(10, 37.0, 32), (15, 47.0, 48), (20, 41.0, 48),
                                   (25, 33.0, 32), (30, 1e9, 256), (35, 3.0, 16)]:
        model.b_simple = b_simple
        controller.decide(update)
        assert sizes.current_size == want, (update, b_simple)
    # the one-device floor is 2b (a single micro-batch would measure nothing)
    assert "raised to 2b = 16" in controller.reasons[35]
    assert [row[0] for row in controller.history] == [5, 10, 15, 20, 25, 30, 35]
    assert controller.history[0][1:] == [None, None, 32]


def test_an_undefined_b_simple_keeps_b_and_only_noise_takes_b_max():
    """B_simple is undefined where an average is not finite (a NaN loss) or neither |G|^2 nor
    tr(Sigma) is above 0: B stays (as AdaScale's gain stays 1). Only tr(Sigma) > 0 with
    |G|^2 <= 0 (noise only) takes B_max."""
    settings = adaptive_batch_size(scale=1.0, max_batch_size=512, every_n_updates=5)
    sizes = AdaptiveUpdateSizes(settings, 16, 8, capacity=10_000)
    model = _Averages()
    controller = AdaptiveBatchController(model, sizes)
    undefined = [(math.nan, math.nan), (1.0, math.nan), (math.nan, 4.0), (0.0, 0.0),
                 (-1.0, -2.0), (math.inf, 3.0)]
    for update, (g2, trace) in zip(range(5, 100, 5), undefined):
        model.noise_scale_values = lambda g2=g2, trace=trace: {
            "averages": {"gradient_sq_norm": g2, "trace_sigma": trace}}
        assert not controller.decide(update), (g2, trace)
        assert sizes.current_size == 16, (g2, trace)
    model.noise_scale_values = lambda: {"averages": {"gradient_sq_norm": -1.0,
                                                     "trace_sigma": 5.0}}
    assert controller.decide(40)
    assert sizes.current_size == 512
    assert [row[0] for row in controller.history] == [5, 10, 15, 20, 25, 30, 40]


# --- against the exact recursion -------------------------------------------------------------
def adaptive_linear_run(data, w_star, seed, learning_rate, scale, micro, every, horizon,
                        initial=None):
    """An adaptive run of the linear model from w = 0: (controller, {update: |delta|^2})."""
    keras.utils.set_random_seed(seed)
    settings = adaptive_batch_size(scale=scale, max_batch_size=4096, every_n_updates=every)
    layout = layout_lib.build(data, initial or 2 * micro, micro, schedule=settings)
    pipelines = pipelines_lib.make(data, layout, seed=seed)
    model = as_virtual_batch_model(linear_model(D, np.zeros(D)), micro_batch_size=micro,
                                   track_gradient_noise=True)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    model.measurements.reset_noise_scale(horizon)
    model.measurements.sample_every_update = True
    controller = AdaptiveBatchController(model, layout.update_sizes)
    trajectory = Trajectory(w_star)
    trajectory.every_n_updates = every
    distribute.fit(model, pipelines, 1, [trajectory], tf.distribute.get_strategy(), verbose=0,
                   controller=controller)
    return controller, {update: m for update, _, m in trajectory.rows}


@pytest.mark.slow
def test_the_batch_tracks_c_times_the_true_b_simple_after_burn_in():
    """d = 10, s = 1, SGD at eps = 0.002 from w = 0, c = 2, b = 2, a decision every 10
    updates, averages over 1024 examples: at each decision after the burn-in (the first 2048
    examples, two horizons), B against c * B_simple(m_t) with m_t = |delta_t|^2 read from the
    weights and B_simple(m) = (d + 1) + d s^2 / m computed here. The median relative error of a
    run, median over 3 seeds, within 15%; and B grew as B_simple did (from about 26 to over
    200)."""
    data, w_star = regression_data(40000, seed=0)
    errors, grown = [], []
    for seed in range(3):
        controller, m = adaptive_linear_run(data, w_star, seed, 0.002, 2.0, 2, 10, 1024.0)
        sizes = controller.sizes.epoch(0)[1]
        seen = np.cumsum(sizes)
        relative = []
        for update, _, _, size in controller.history:
            if seen[update - 1] < 2 * 1024:
                continue  # burn-in
            b_simple = (D + 1) + D / m[update]
            relative.append(abs(size / (2.0 * b_simple) - 1))
        errors.append(np.median(relative))
        grown.append(controller.history[-1][3])
    assert np.median(errors) <= 0.15, errors
    assert min(grown) >= 200, grown


# --- exactness: every update is plain Keras on its whole batch -------------------------------
class _WeightsPerUpdate(keras.callbacks.Callback):
    every_n_updates = 1  # one update per call: the weights of every update

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append([w.copy() for w in self.model.get_weights()])


@pytest.mark.parametrize("optimizer", [lambda: keras.optimizers.SGD(0.1, momentum=0.9),
                                       lambda: keras.optimizers.Adam(0.01)])
def test_every_update_of_an_adaptive_run_equals_plain_keras_on_its_whole_batch(optimizer):
    """b = 4, B from 8; c = 0.1 makes B change at several decisions every 3 updates,
    mid-epoch and at epoch ends; each update against ``train_on_batch`` on the rows
    of its own B, with sample weights: <= 1e-5 relative."""
    keras.utils.set_random_seed(0)
    data, epochs, seed = _rows(96), 3, 7
    layout = layout_lib.build(data, 8, 4, schedule=adaptive_batch_size(
        scale=0.1, max_batch_size=32, every_n_updates=3))
    pipelines = pipelines_lib.make(data, layout, seed=seed)
    initial = _mlp().get_weights()
    model = as_virtual_batch_model(_mlp(), micro_batch_size=layout.split_size,
                                   track_gradient_noise=True)
    model.set_weights(initial)
    model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy")
    model.measurements.reset_noise_scale(64.0)
    model.measurements.sample_every_update = True
    controller = AdaptiveBatchController(model, layout.update_sizes)
    seen = _WeightsPerUpdate()
    distribute.fit(model, pipelines, epochs, [seen], tf.distribute.get_strategy(), verbose=0,
                   controller=controller)

    sizes = [layout.update_sizes.epoch(epoch)[1] for epoch in range(epochs)]
    assert len({s for epoch in sizes for s in epoch[:-1]}) >= 2  # B changed, k with it
    reference = _mlp()
    reference.set_weights(initial)
    reference.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy")
    update = 0
    for epoch in range(epochs):
        order = pipelines_lib.epoch_order(96, seed, epoch).numpy()
        start = 0
        for size in sizes[epoch]:
            rows = order[start:start + size]
            reference.train_on_batch(data.x_train[rows], data.y_train[rows],
                                     sample_weight=data.sample_weight_train[rows])
            start += size
            assert _relative_error(seen.weights[update], reference.get_weights()) <= 1e-5, \
                (epoch, update, size)
            update += 1
    assert update == len(seen.weights) == int(model.optimizer.iterations.numpy())


# --- a run from gin: result.json, TensorBoard, a kill, two replicas, bad bindings ------------
ADAPTIVE = ["train.verbose = 0", "train.epochs = 2", "train.batch_size = 32",
            "train.micro_batch_size = 16",
            "train.batch_size_schedule = @adaptive_batch_size()",
            "adaptive_batch_size.max_batch_size = 256", "adaptive_batch_size.scale = 2.0",
            "adaptive_batch_size.every_n_updates = 5",
            "measurements.enabled = [@measurements.gradient_noise_scale]",
            "measurements.gradient_noise_scale.horizon_examples = 512"]


def test_a_run_records_its_decisions_with_reasons_and_logs_b(tmp_path, capsys):
    """Also: the adaptive batch's horizon holds without the noise-scale measurement, and each
    epoch's progress line counts to the updates the epoch ran (its batch changed within it)."""
    launch.launch(["gin/experiments/digits_mlp.gin"], ADAPTIVE + [
        "measurements.enabled = []", "adaptive_batch_size.horizon_examples = 256",
        "train.verbose = 2"], output_dir=str(tmp_path), print_fn=lambda *_: None)
    counts = re.findall(r"^(\d+)/(\d+) - ", capsys.readouterr().out, flags=re.MULTILINE)
    (path,) = run_dirs(str(tmp_path))
    result = read_json(os.path.join(path, "result.json"))
    stages = result["batch_size_stages"]
    assert stages[0] == {"stage": 0, "epoch": 0, "update": 0, "batch_size": 32,
                         "num_micro_batches": 2, "reason": "train.batch_size"}
    assert len(stages) >= 2 and all("c * B_simple" in s["reason"] for s in stages[1:])
    assert all(s["update"] % 5 == 0 and s["batch_size"] % 16 == 0 for s in stages)
    decisions = result["adaptive_batch_size/decisions"]
    assert [d[0] for d in decisions] == list(range(5, 5 * len(decisions) + 1, 5))
    assert result["final_batch_size"] == stages[-1]["batch_size"]
    assert "adaptive_batch_size.horizon_examples" not in " ".join(result["unused_bindings"])
    train_dir = os.path.join(path, "tensorboard", "train")
    logged = dict(event_values(train_dir, "batch_size"))
    # keyed by the 1-based count of the first update with that B, as per-update scalars are
    assert logged[1] == 32 and all(logged[s["update"] + 1] == s["batch_size"] for s in stages)
    assert 0 not in logged
    b_simple = dict(event_values(train_dir, "adaptive_batch_size/b_simple"))
    assert sorted(b_simple) == [d[0] for d in decisions if d[1] is not None and d[1] > 0]
    rows = result["num_train_examples"]
    assert result["updates"] == sum(len(s) for s in _epochs_of(stages, rows, 2))
    assert len(counts) == 2 and all(done == total for done, total in counts), counts
    assert sum(int(done) for done, _ in counts) == result["updates"]


def test_adaptive_batch_and_adascale_run_together(tmp_path):
    """B follows the noise scale and the learning rate follows B: S = B / b grows with B, so
    the gain can exceed what the first batch allows."""
    launch.launch(["gin/experiments/digits_mlp.gin"], ADAPTIVE + [
        "train.learning_rate_scaling = @adascale()"], output_dir=str(tmp_path),
        print_fn=lambda *_: None)
    (path,) = run_dirs(str(tmp_path))
    result = read_json(os.path.join(path, "result.json"))
    train_dir = os.path.join(path, "tensorboard", "train")
    gains = dict(event_values(train_dir, "adascale/gain"))
    sizes = dict(event_values(train_dir, "batch_size"))
    assert len(result["batch_size_stages"]) >= 2
    assert max(gains.values()) > 2.0  # beyond S = 2 of the first batch (B = 32, b = 16)
    each = [size for epoch in _epochs_of(result["batch_size_stages"],
                                          result["num_train_examples"], 2) for size in epoch]
    for update, gain in gains.items():  # r between 1 and S = rows / b of that very update
        scale = each[update - 1] / 16  # (a ragged last batch below b: S < 1, r < 1)
        assert min(1.0, scale) - 1e-6 <= gain <= max(1.0, scale) + 1e-6, (update, gain)
    assert sorted(sizes)[0] == 1  # the first update's B, at its 1-based count
    assert result["updates"] < result["adascale/progress"]


def _epochs_of(stages, rows, epochs):
    """The update sizes of each epoch from the recorded stages (a stage's B from its update
    on, each epoch's last update whatever rows remain): what the run must have trained."""
    out, update = [], 0
    for _ in range(epochs):
        sizes, left = [], rows
        while left > 0:
            size = [s["batch_size"] for s in stages if s["update"] <= update][-1]
            sizes.append(min(size, left))
            left -= sizes[-1]
            update += 1
        out.append(sizes)
    return out


@pytest.mark.slow
def test_a_killed_adaptive_run_resumes_with_the_uninterrupted_numbers(tmp_path):
    """SIGKILL after the checkpoint of update 20 (decisions every 5 updates before and after
    it), then relaunch: the same decisions, AdaScale's progress and bit-identical metrics."""
    experiment = resume.ARRAYS + [f"--gin_bindings={b}" for b in ADAPTIVE[2:]] + [
        "--gin_bindings=train.epochs = 3",
        "--gin_bindings=train.learning_rate_scaling = @adascale()"]
    output = str(tmp_path)
    resume._run(output, "reference", experiment)
    code, _ = resume._start_and_stop(output, "run", experiment, 20)
    assert code == -signal.SIGKILL
    resume._run(output, "run", experiment)
    result, reference = resume._result(output, "run"), resume._result(output, "reference")
    assert result["resumed_at_updates"][0] >= 20
    assert result["batch_size_stages"] == reference["batch_size_stages"]
    assert len(reference["batch_size_stages"]) >= 2
    assert result["adaptive_batch_size/decisions"] == reference["adaptive_batch_size/decisions"]
    assert result["adascale/progress"] == reference["adascale/progress"] > result["updates"]
    assert resume._metrics(result) == resume._metrics(reference)


@pytest.mark.slow
def test_under_mirrored_strategy_the_decided_stages_train_as_on_one_device(tmp_path):
    """Two logical CPUs at k = 1 (B = b = 32: the replicas' halves are the noise scale's
    pieces), c large enough that B goes to B_max = 256 at the first decision; the same stages
    trained on one device by a fixed schedule give the same weights and metrics."""
    mirrored_dir = str(tmp_path / "mirrored")
    os.makedirs(mirrored_dir)
    adaptive = ["BATCH = 32", "train.micro_batch_size = 32",
                "train.batch_size_schedule = @adaptive_batch_size()",
                "adaptive_batch_size.max_batch_size = 256", "adaptive_batch_size.scale = 1000.0",
                "adaptive_batch_size.every_n_updates = 4"]
    process = distributed._main("gin/experiments/virtual_batch.gin", mirrored_dir,
                                adaptive + ["train.strategy = @mirrored",
                                            "mirrored.num_cpu_devices = 2"])
    distributed._finish(process)
    mirrored = distributed._only_run(mirrored_dir, "virtual_batch")
    stages = read_json(os.path.join(mirrored, "result.json"))["batch_size_stages"]
    assert [(s["update"], s["batch_size"]) for s in stages] == [(0, 32), (4, 256)]
    single_dir = str(tmp_path / "single")
    fixed = ["BATCH = 32", "train.micro_batch_size = 32",
             "train.batch_size_schedule = @batch_size_schedule()",
             "batch_size_schedule.boundaries = [4]", "batch_size_schedule.batch_sizes = [256]",
             "batch_size_schedule.unit = 'updates'"]
    launch.launch(["gin/experiments/virtual_batch.gin"], distributed.BINDINGS + fixed,
                  single_dir, print_fn=lambda *_: None)
    single = distributed._only_run(single_dir, "virtual_batch")
    # 1438 rows: epoch 0 is 4 x 32 then 5 x 256 and 30 rows; epoch 1 is 5 x 256 and 158 rows
    distributed._assert_same_training(mirrored, single, updates=10 + 6)


@pytest.mark.parametrize("bindings, message", [
    (["adaptive_batch_size.scale = 0"], "adaptive_batch_size.scale=0 must be a number > 0"),
    (["adaptive_batch_size.scale = -1.5"], "adaptive_batch_size.scale=-1.5"),
    (["adaptive_batch_size.max_batch_size = 250"],
     "adaptive_batch_size.max_batch_size=250 is not a multiple of the micro-batch b=16.*"
     r"\(e.g. 240 or 256\)"),
    (["adaptive_batch_size.max_batch_size = 8"],  # below B: said so, not "8 or 16"
     "adaptive_batch_size.max_batch_size=8 is smaller than the starting batch"),
    (["adaptive_batch_size.max_batch_size = 4992"], "larger than the 1438 training"),
    (["fit.loop = 'keras'"], "fit.loop = 'keras' cannot train with train.batch_size_schedule = "
                             "@adaptive_batch_size"),
    (["train.batch_size = 16"], "train.batch_size = 16 is one micro-batch .k = 1. on one "
                                "replica: nothing measures the noise"),
    (["measurements.track_gradient_noise = False"], "measurements.track_gradient_noise = False"),
    (["adaptive_batch_size.every_n_updates = 0"], "adaptive_batch_size.every_n_updates"),
    (["adaptive_batch_size.min_relative_change = -0.1"], "min_relative_change=-0.1"),
    (["adaptive_batch_size.horizon_examples = 0"], "adaptive_batch_size.horizon_examples"),
    (["adaptive_batch_size.horizon_examples = 512", "adascale.horizon_examples = 256",
      "train.learning_rate_scaling = @adascale()"], "differ: both read the same averages"),
])
def test_bad_adaptive_bindings_stop_a_launch_before_any_run_directory(tmp_path, bindings,
                                                                     message):
    with pytest.raises(ValueError, match=message):
        launch.launch(["gin/experiments/digits_mlp.gin"], ADAPTIVE + bindings,
                      output_dir=str(tmp_path), print_fn=lambda *_: None)
    assert not os.listdir(tmp_path)


def test_an_adaptive_batch_on_stream_data_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot train on stream data"):
        launch.launch(["gin/experiments/char_lm.gin"], [
            "train.batch_size_schedule = @adaptive_batch_size()",
            "adaptive_batch_size.max_batch_size = 64"], output_dir=str(tmp_path),
            print_fn=lambda *_: None)
    assert not os.listdir(tmp_path)


class _Alternating(_Averages):
    """B_simple 8, 16, 8, ...: with c = 1 every decision changes B (8 <-> 16)."""

    def noise_scale_values(self):
        self.b_simple = 16.0 if self.b_simple == 8.0 else 8.0
        return super().noise_scale_values()


def test_no_decision_is_made_or_logged_at_the_runs_last_update(monkeypatch):
    """A decision every update, each one a change: the run's last update is not decided (it
    would size no update: the log said 'batch 88 -> 96' while result.json ended at 88), the
    last epoch's other updates and the earlier epochs' last updates are, and every logged
    change is a stage of the run."""
    keras.utils.set_random_seed(0)
    data, epochs = _rows(96), 2
    layout = layout_lib.build(data, 8, 4, schedule=adaptive_batch_size(
        scale=1.0, max_batch_size=32, every_n_updates=1))
    pipelines = pipelines_lib.make(data, layout, seed=3)
    model = as_virtual_batch_model(_mlp(), micro_batch_size=layout.split_size,
                                   track_gradient_noise=True)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    logged = []
    monkeypatch.setattr(adaptive_batch.logging, "info",
                        lambda message, *args: logged.append(args))
    controller = AdaptiveBatchController(_Alternating(), layout.update_sizes)
    distribute.fit(model, pipelines, epochs, [], tf.distribute.get_strategy(), verbose=0,
                   controller=controller)
    final = int(model.optimizer.iterations.numpy())
    decided = [row[0] for row in controller.history]
    assert decided == list(range(1, final))  # every update but the run's last
    first_epoch = len(layout.update_sizes.epoch(0)[1])
    assert first_epoch in decided  # an earlier epoch's last update still decides
    stages = controller.stages(epochs)
    changes = [(update, new) for update, _, new, _ in logged]
    assert changes and changes[-1][0] == final - 1
    assert changes == [(s["update"], s["batch_size"]) for s in stages[1:]]
    assert controller.result(epochs)["final_batch_size"] == changes[-1][1]
