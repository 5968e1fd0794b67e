"""Model builders, dtype policies, a user's own builder from gin, and seeded determinism."""

import os
import sys

import keras
import numpy as np
import pytest

from experiments import launch
from experiments.models import builders as models
from experiments.inputs.dataset import DataSpec
from tests.helpers import read_json

DIGITS = "gin/experiments/digits_mlp.gin"
QUIET = ["train.verbose = 0"]


@pytest.mark.parametrize("builder, spec, batch", [
    (models.mlp, DataSpec((12,), 5), np.zeros((2, 12))),
    (models.mlp, DataSpec((12,), 1, task="binary"), np.zeros((2, 12))),
    (models.mlp, DataSpec((12,), 3, task="regression"), np.zeros((2, 12))),
    (models.vgg_convnet, DataSpec((8, 8), 10), np.zeros((2, 8, 8))),
    (models.lstm_classifier, DataSpec((7, 3), 4), np.zeros((2, 7, 3))),
    (models.conv1d_classifier, DataSpec((9,), 2, vocabulary_size=30), np.ones((2, 9), "int32")),
    (models.stacked_lstm, DataSpec((7, 3), 4), np.zeros((2, 7, 3))),
    (models.stateful_stacked_lstm, DataSpec((5,), 11, batch_size=2, vocabulary_size=11),
     np.ones((2, 5), "int32")),
])
def test_builders_produce_the_right_output(builder, spec, batch):
    model = builder(spec)
    out = np.asarray(model(batch))
    expected_tail = (spec.num_outputs,)
    assert out.shape[0] == 2 and out.shape[-1:] == expected_tail
    if spec.task == "classification":
        np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-5)
    if spec.task == "binary":
        assert ((out > 0) & (out < 1)).all()


@pytest.mark.parametrize("build, message", [
    (lambda: models.mlp(DataSpec((12,), 5), hidden_units=64), "mlp.hidden_units is a list"),
    (lambda: models.vgg_convnet(DataSpec((8, 8), 10), filters=32), "vgg_convnet.filters is a"),
    (lambda: models.stacked_lstm(DataSpec((7, 3), 4), units=32), "stacked_lstm.units is a"),
    (lambda: models.stacked_lstm(DataSpec((7, 3), 4), units=()), "at least one layer"),
    (lambda: models.mlp(DataSpec((12,), 5), hidden_units=(64, 0)), "each of mlp.hidden_units"),
])
def test_a_width_binding_of_the_wrong_shape_names_itself(build, message):
    with pytest.raises(ValueError, match=message):
        build()
    assert models.mlp(DataSpec((12,), 5), hidden_units=()).count_params() == 12 * 5 + 5


def test_stateful_builder_needs_a_fixed_batch_size():
    with pytest.raises(ValueError, match="fixed batch size"):
        models.stateful_stacked_lstm(DataSpec((5,), 11, vocabulary_size=11))


@pytest.mark.slow
@pytest.mark.parametrize("policy, variable_dtype, compute_dtype", [
    ("float32", "float32", "float32"),
    ("mixed_bfloat16", "float32", "bfloat16"),
    ("float64", "float64", "float64"),
])
def test_dtype_policy_from_gin(tmp_path, policy, variable_dtype, compute_dtype):
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            dense = [l for l in self.model.layers if isinstance(l, keras.layers.Dense)][0]
            seen["variable"] = dense.kernel.dtype
            seen["compute"] = dense.compute_dtype

    import gin
    launch.parse([DIGITS], QUIET + ["train.epochs = 1", f"train.dtype_policy = '{policy}'",
                                    "mlp.hidden_units = (8,)"])
    from experiments.run import runner
    result = runner.train(output_dir=str(tmp_path), experiment="dtype",
                          extra_callbacks=[Probe()], config_text=gin.config_str())
    assert seen == {"variable": variable_dtype, "compute": compute_dtype}
    assert np.isfinite(result["final_validation"]["loss"])


def test_a_users_own_model_builder_works_after_import(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import gin, keras\n"
        "@gin.configurable\n"
        "def tiny(spec, width=4):\n"
        "    return keras.Sequential([keras.Input(spec.input_shape),\n"
        "        keras.layers.Dense(width, activation='tanh', name='users_layer'),\n"
        "        keras.layers.Dense(spec.num_outputs, activation='softmax')])\n")
    (tmp_path / "mine.gin").write_text(
        f"include '{DIGITS}'\nimport my_models\ntrain.model_fn = @tiny\ntiny.width = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (result,) = launch.launch([str(tmp_path / "mine.gin")], QUIET + ["train.epochs = 1"],
                              output_dir=str(tmp_path / "runs"), print_fn=lambda *_: None)
    operative = open(os.path.join(result["run_dir"], "operative_config.gin")).read()
    assert "tiny.width = 3" in operative
    sys.modules.pop("my_models", None)


@pytest.mark.slow
def test_same_seed_twice_gives_identical_results(tmp_path):
    bindings = QUIET + ["train.epochs = 2", "train.seed = 7", "mlp.dropout = 0.2"]
    runs = [launch.launch([DIGITS], bindings, output_dir=str(tmp_path / name),
                          print_fn=lambda *_: None)[0] for name in ("a", "b")]
    saved = [read_json(os.path.join(r["run_dir"], "result.json")) for r in runs]
    for key in ("final_epoch", "final_validation", "updates", "seed"):
        assert saved[0][key] == saved[1][key]
    other = launch.launch([DIGITS], QUIET + ["train.epochs = 2", "train.seed = 8",
                                             "mlp.dropout = 0.2"],
                          output_dir=str(tmp_path / "c"), print_fn=lambda *_: None)[0]
    assert other["final_epoch"]["loss"] != saved[0]["final_epoch"]["loss"]


def test_deterministic_ops_holds_for_its_run_only():
    """A run's ``deterministic_ops`` switches TensorFlow's op determinism on, and the next run in
    the same process without it (a sweep's variant, a study's run, the next test) switches it off
    again: it computes as in a fresh process (it had kept the earlier run's kernels, and lost the
    validation curve's seconds)."""
    from experiments.engine import keras_internals
    from experiments.run import seeding
    seeding.seed_everything(3, deterministic_ops=True)
    assert keras_internals.op_determinism_enabled()
    seeding.seed_everything(3, deterministic_ops=False)
    assert not keras_internals.op_determinism_enabled()


def test_warmup_schedule_round_trips_with_its_after_schedule_and_checks_its_arguments():
    """A saved optimizer or model reloads its schedule (``after`` was left a dict: a TypeError at
    the first update); nonsense values are refused with the argument's name."""
    import pytest

    from experiments.models import schedules

    after = keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.1, 0.01])
    warm = schedules.WarmupSchedule(peak_learning_rate=0.1, warmup_steps=3, after=after)
    optimizer = keras.optimizers.SGD(learning_rate=warm)
    again = keras.optimizers.SGD.from_config(optimizer.get_config())
    assert float(again.learning_rate) == pytest.approx(0.1 / 3, rel=1e-6)  # at update 0
    restored = keras.optimizers.schedules.deserialize(optimizer.get_config()["learning_rate"])
    expected = [0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1, 0.1, 0.01]  # after counted from update 3
    for step, value in enumerate(expected):
        assert float(restored(step)) == pytest.approx(value, rel=1e-6), step
    for kwargs, name in [({"warmup_steps": -3}, "warmup_steps"),
                         ({"warmup_steps": 2.7}, "warmup_steps"),
                         ({"peak_learning_rate": -0.1}, "peak_learning_rate"),
                         ({"initial_learning_rate": -1.0}, "initial_learning_rate")]:
        arguments = dict({"peak_learning_rate": 0.1, "warmup_steps": 3}, **kwargs)
        with pytest.raises(ValueError, match=f"WarmupSchedule.{name}"):
            schedules.WarmupSchedule(**arguments)
    with pytest.raises(ValueError, match="scaled_learning_rate.base_batch_size"):
        schedules.scaled_learning_rate(0.1, 0, 64)
    with pytest.raises(ValueError, match="scaled_learning_rate.batch_size"):
        schedules.scaled_learning_rate(0.1, 32, 0)
