"""Studies without training: grid expansion, names, bindings, LR rules, sharding, the curve
callback in a plain ``model.fit``."""

import math

import keras
import numpy as np
import pytest

from callbacks.periodic_evaluation import PeriodicEvaluation
from experiments.launch import grid, study

CONTEXT = grid.GridContext(lr_selector="keras.optimizers.SGD", base_learning_rate=0.05,
                           base_epochs=3, num_train_examples=1000)


def spec(**overrides):
    values = dict(batch_sizes=[8, 32], learning_rates=[0.01, 0.1], seeds=[0, 1])
    values.update(overrides)
    return study.study(**values)


def test_grid_is_the_product_with_readable_unique_names():
    runs = grid.expand(spec(), CONTEXT)
    assert [r.name for r in runs] == ["b8_lr0.01_s0", "b8_lr0.01_s1", "b8_lr0.1_s0",
                                      "b8_lr0.1_s1", "b32_lr0.01_s0", "b32_lr0.01_s1",
                                      "b32_lr0.1_s0", "b32_lr0.1_s1"]
    assert [r.index for r in runs] == list(range(8))
    run = runs[6]
    assert "train.batch_size = 32" in run.bindings
    assert "keras.optimizers.SGD.learning_rate = 0.1" in run.bindings
    assert "train.seed = 0" in run.bindings and "train.epochs = 3" in run.bindings
    assert not any(b.startswith("train.micro_batch_size") for b in run.bindings)
    assert run.hparams == {"batch_size": 32, "micro_batch_size": None, "learning_rate": 0.1,
                           "rule": None, "seed": 0, "epochs": 3}
    assert any(b.startswith("measurements.also") for b in run.bindings)


def test_rules_scale_the_reference_learning_rate():
    runs = grid.expand(spec(learning_rates=None, rules=["none", "linear", "sqrt"],
                            reference_batch_size=32, reference_learning_rate=0.05,
                            batch_sizes=[128], seeds=None), CONTEXT)
    lrs = {r.hparams["rule"]: r.hparams["learning_rate"] for r in runs}
    assert lrs["none"] == pytest.approx(0.05)
    assert lrs["linear"] == pytest.approx(0.2)
    assert lrs["sqrt"] == pytest.approx(0.1)
    assert [r.name for r in runs] == ["b128_none_s0", "b128_linear_s0", "b128_sqrt_s0"]
    assert grid.scaled_learning_rate("sqrt", 0.05, 32, 8) == pytest.approx(0.025)


def test_warmup_wraps_the_learning_rate_in_a_schedule():
    runs = grid.expand(spec(learning_rates=None, rules=["linear"], reference_batch_size=32,
                            reference_learning_rate=0.05, warmup_updates=7, batch_sizes=[64]),
                       CONTEXT)
    bindings = runs[0].bindings
    assert "keras.optimizers.SGD.learning_rate = @batchlab.WarmupSchedule()" in bindings
    assert "batchlab.WarmupSchedule.peak_learning_rate = 0.1" in bindings
    assert "batchlab.WarmupSchedule.warmup_steps = 7" in bindings


def test_update_budget_sets_epochs_per_batch_size_and_micro_axis_names():
    runs = grid.expand(spec(learning_rates=None, update_budget=100, batch_sizes=[8, 64, 500],
                            micro_batch_sizes=[8, 16], seeds=None), CONTEXT)
    epochs = {(r.hparams["batch_size"], r.hparams["micro_batch_size"]): r.hparams["epochs"]
              for r in runs}
    # 1000 rows: 125, 16 and 2 updates per epoch; b = 16 > B = 8 is skipped.
    assert epochs == {(8, 8): 1, (64, 8): 7, (64, 16): 7, (500, 8): 50, (500, 16): 50}
    assert runs[0].name == "b8_m8_s0"
    assert runs[0].hparams["learning_rate"] == 0.05  # the base's, no LR axis
    assert grid.epochs_for_budget(100, 64, 1000) * math.ceil(1000 / 64) >= 100


def test_sharding_runs_every_run_exactly_once():
    runs = grid.expand(spec(batch_sizes=[8, 16, 32, 64, 128]), CONTEXT)
    for count in (1, 2, 3, 7, 25):
        seen = [r.name for i in range(count) for r in grid.shard(runs, i, count)]
        assert sorted(seen) == sorted(r.name for r in runs)
    assert grid.parse_shard("1/3") == (1, 3) and grid.parse_shard(None) == (0, 1)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0", "1/2/3"):
        with pytest.raises(ValueError, match="--shard"):
            grid.parse_shard(bad)


@pytest.mark.parametrize("overrides, message", [
    (dict(batch_sizes=[]), "study.batch_sizes is empty"),
    (dict(learning_rates=[]), "study.learning_rates is empty"),
    (dict(seeds=[]), "study.seeds is empty"),
    (dict(batch_sizes=[0]), "study.batch_sizes must be a positive integer, got 0"),
    (dict(batch_sizes=[8, 8]), "repeats"),
    (dict(learning_rates=[-0.1]), "study.learning_rates must be a positive number, got -0.1"),
    (dict(seeds=[-1]), "study.seeds must be an integer >= 0, got -1"),
    (dict(rules=["cubic"]), "study.rules holds 'cubic'"),
    (dict(learning_rates=None, rules=["linear"]), "needs study.reference_batch_size"),
    (dict(epochs=[2], update_budget=10), "not both"),
    (dict(target_mode="up"), "study.target_mode"),
])
def test_bad_axes_name_the_binding(overrides, message):
    with pytest.raises(study.StudyError, match=message):
        spec(**overrides)


def test_no_study_declared_is_none():
    assert study.study() is None


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def test_periodic_evaluation_in_plain_fit_leaves_training_metrics_alone():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 4)).astype("float32"), rng.integers(0, 3, 100)
    xv, yv = rng.normal(size=(30, 4)).astype("float32"), rng.integers(0, 3, 30)
    plain = _model().fit(x, y, batch_size=10, epochs=2, shuffle=False, verbose=0).history
    curve = PeriodicEvaluation((xv, yv), every_n_updates=3, batch_size=7)
    measured = _model().fit(x, y, batch_size=10, epochs=2, shuffle=False, verbose=0,
                            callbacks=[curve]).history
    np.testing.assert_allclose(measured["loss"], plain["loss"], rtol=1e-6)
    np.testing.assert_allclose(measured["accuracy"], plain["accuracy"], rtol=1e-6)
    points = curve.result()["curve"]
    assert set(points) == {"val_loss", "val_accuracy"}
    assert [u for u, _ in points["val_loss"]] == [3, 6, 9, 12, 15, 18, 20]
    assert all(0.0 <= v <= 1.0 for _, v in points["val_accuracy"])
