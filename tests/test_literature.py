"""The shipped literature experiments (gin/literature/*.gin) run, shrunk by their
``# smoke-test:`` line, and record what their claim is judged on."""

import glob
import os

import pytest

from experiments import launch
from tests.helpers import read_json
from tests.test_experiments_smoke import REPO, smoke_bindings

# Every literature experiment trains end to end: slow.
pytestmark = pytest.mark.slow

LITERATURE = sorted(os.path.relpath(p, REPO)
                    for p in glob.glob(os.path.join(REPO, "gin", "literature", "*.gin")))
JUDGED_ON = {  # the result.json entries each claim's table row is read from
    "keskar_sharp_minima": ["measurements.sharpness/phi", "measurements.generalization_gap/loss",
                            "final_validation.accuracy"],
    "hoffer_train_longer": ["final_validation.accuracy", "measurements.weights/distance_from_init"],
    "lr_range_scaling": ["lr_range_test.stopped_because", "lr_range_test.learning_rates"],
    "smith_increase_batch": ["final_validation.accuracy", "final_validation.loss",
                             "final_epoch.loss"],
}


def _lookup(result, dotted):
    section, key = dotted.split(".", 1)
    return result[section][key]


@pytest.mark.parametrize("path", LITERATURE)
def test_literature_experiment_smoke(path, tmp_path):
    name = os.path.splitext(os.path.basename(path))[0]
    results = launch.launch([path], ["train.verbose = 0"] + smoke_bindings(path),
                            output_dir=str(tmp_path), print_fn=lambda *_: None)
    assert len(results) >= 2  # a claim compares at least two runs
    for result in results:
        saved = read_json(os.path.join(result["run_dir"], "result.json"))
        for entry in JUDGED_ON[name]:
            assert _lookup(saved, entry) == _lookup(saved, entry)  # present and not NaN
        assert saved["unused_bindings"] == [], saved["unused_bindings"]
