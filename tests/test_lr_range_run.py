"""``train.mode = 'lr_range_test'``: a batchlab run that ramps the learning rate to divergence and
records a suggested learning rate, its rule, the curve and a plot."""

import os

import pytest

from experiments import launch
from tests.helpers import event_tags, read_json, run_dirs

FILES = ["gin/experiments/digits_mlp.gin", "gin/tools/lr_range_test.gin"]
QUIET = ["train.verbose = 0", "lr_range_test.num_updates = 60",
         "lr_range_test.max_learning_rate = 100.0"]


def _launch(output, bindings=()):
    return launch.launch(FILES, QUIET + list(bindings), output_dir=str(output),
                         print_fn=lambda *_: None)


def test_a_range_test_run_suggests_a_learning_rate_inside_the_ramp(tmp_path):
    (result,) = _launch(tmp_path)
    saved = read_json(os.path.join(result["run_dir"], "result.json"))
    test = saved["lr_range_test"]
    assert test["stopped_because"] == "diverged"  # 100 is far beyond what SGD with momentum takes
    assert saved["updates"] == test["updates"] <= 60
    assert 1e-4 < test["suggested_learning_rate"] < test["min_loss_learning_rate"] < 100.0
    assert test["rule"] == "steepest" and "falls fastest" in test["explanation"]
    with open(test["plot"], "rb") as handle:
        assert handle.read(4) == b"\x89PNG"
    assert {"lr_range/loss", "lr_range/learning_rate"} <= event_tags(
        os.path.join(result["run_dir"], "tensorboard"))
    assert read_json(os.path.join(result["run_dir"], "status.json"))["status"] == "finished"


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
