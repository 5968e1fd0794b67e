"""``train.mode = 'lr_range_test'``: a batchlab run that ramps the learning rate to divergence and
records a suggested learning rate, its rule, the curve and a plot; and the run modes around it
(``experiments.run.modes``): chosen once, the runner without mode branches, the plan frozen."""

import ast
import dataclasses
import os
import re

import pytest

from experiments import launch
from experiments.run import modes, range_test, runner
from experiments.run import plan as plan_lib
from tests.helpers import event_tags, read_json, run_dirs

FILES = ["gin/experiments/digits_mlp.gin", "gin/tools/lr_range_test.gin"]
QUIET = ["train.verbose = 0", "lr_range_test.num_updates = 60",
         "lr_range_test.max_learning_rate = 100.0"]


def _launch(output, bindings=(), print_fn=lambda *_: None):
    return launch.launch(FILES, QUIET + list(bindings), output_dir=str(output),
                         print_fn=print_fn)


def test_a_range_test_run_suggests_a_learning_rate_inside_the_ramp(tmp_path, monkeypatch):
    plans = _record_plans(monkeypatch)
    printed = []
    (result,) = _launch(tmp_path, print_fn=printed.append)
    (plan,) = plans  # built once, with the epochs the ramp needs (digits_mlp.gin binds 10)
    assert isinstance(plan.mode, modes.RangeTestMode)
    assert plan.settings.epochs == range_test.epochs_for(
        plan.mode.test, plan.layout.updates_per_epoch) == result["epochs"] == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.settings = None
    saved = read_json(os.path.join(result["run_dir"], "result.json"))
    test = saved["lr_range_test"]
    assert test["stopped_because"] == "diverged"  # 100 is far beyond what SGD with momentum takes
    assert saved["updates"] == test["updates"] <= 60
    assert saved["peak_learning_rate"] == max(test["learning_rates"]) > 1.0  # not the base rate
    assert 1e-4 < test["suggested_learning_rate"] < test["min_loss_learning_rate"] < 100.0
    assert test["rule"] == "steepest" and "falls fastest" in test["explanation"]
    with open(test["plot"], "rb") as handle:
        assert handle.read(4) == b"\x89PNG"
    assert {"lr_range/loss", "lr_range/learning_rate"} <= event_tags(
        os.path.join(result["run_dir"], "tensorboard"))
    assert read_json(os.path.join(result["run_dir"], "status.json"))["status"] == "finished"
    # The console gives the answer, not only result.json.
    (said,) = [line for line in printed if "Suggested learning rate" in line]
    assert f"Suggested learning rate at B = 32: {test['suggested_learning_rate']:.3g}." in said
    assert test["explanation"] in said and "stopped: the loss diverged" in said
    assert test["plot"] in said


@pytest.mark.parametrize("binding, message", [
    ("lr_range_test.min_learning_rate = 200.0", r"min_learning_rate=200.0 must be below "
                                              r"lr_range_test.max_learning_rate=100.0"),
    ("lr_range_test.min_learning_rate = -1e-3", "lr_range_test.min_learning_rate must be a "
                                                "positive number"),
    ("lr_range_test.max_learning_rate = 0.0", "lr_range_test.max_learning_rate must be a "
                                              "positive number"),
    ("lr_range_test.num_updates = 2", "lr_range_test.num_updates=2 must be at least 3"),
    ("lr_range_test.rule = 'valley'", "lr_range_test.rule must be one of"),
])
def test_bad_range_settings_fail_before_any_run(tmp_path, binding, message):
    with pytest.raises(ValueError, match=message):
        _launch(tmp_path / "runs", [binding])
    assert run_dirs(str(tmp_path / "runs")) == []


def _record_plans(monkeypatch):
    """Every ``Plan`` the runner builds."""
    plans = []
    original = plan_lib.build

    def build(settings, run_mode):
        plans.append(original(settings, run_mode))
        return plans[-1]

    monkeypatch.setattr(plan_lib, "build", build)
    return plans


def test_the_runner_has_no_mode_branches():
    """What a mode does differently it does through its ``modes`` class: no condition of
    ``runner.py`` names a mode, and ``train.mode`` is looked up in one table."""
    tree = ast.parse(open(runner.__file__, encoding="utf-8").read())
    conditions = [node.test for node in ast.walk(tree) if isinstance(node, (ast.If, ast.IfExp,
                                                                           ast.While))]
    conditions += [node for node in ast.walk(tree) if isinstance(node, ast.Compare)]
    mode_words = re.compile(r"\bmode\b|\brun_mode\b|Mode\b|range_test|find_micro_batch|"
                            r"micro_batch_finder")
    named = [ast.unparse(c) for c in conditions if mode_words.search(ast.unparse(c))]
    assert not named, named
    assert mode_words.search("settings.range_test is not None")  # what the check would find
    assert mode_words.search("mode == 'lr_range_test'") and not mode_words.search("model.built")
    assert list(modes.RUN_MODES) == ["train", "find_micro_batch", "lr_range_test",
                                     "probe_noise_scale"]
    with pytest.raises(ValueError, match=r"train.mode must be one of \('train', "
                                         r"'find_micro_batch', 'lr_range_test', "
                                         r"'probe_noise_scale'\), got 'fit'"):
        modes.chosen("fit")
