"""The JSON files batchlab writes are standard JSON: a non-finite float is null (as in a study's
report.json) and NumPy values are plain numbers (``experiments.common.json_files``; its
``dump`` keeps ``allow_nan=False``, so a value that slips past fails instead of writing
``Infinity``)."""

import json
import math

import numpy as np

from experiments.common import json_files
from experiments.run import run_dir


def _strict(text):
    """json.loads that refuses Infinity and NaN, as JavaScript's JSON.parse does."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_plain_turns_non_finite_floats_into_null_and_numpy_into_numbers():
    value = {"high": math.inf, "low": -math.inf, "nan": math.nan, "f64": np.float64(np.inf),
             "f32": np.float32(2.5), "i": np.int64(3), "rows": [[1, np.float32(np.nan)]],
             "array": np.array([1.0, np.inf]), "tuple": (1, 2), 4: "int key", "ok": 0.5,
             "flag": True, "none": None}
    out = _strict(json_files.dumps(value, sort_keys=False))
    assert out == {"high": None, "low": None, "nan": None, "f64": None, "f32": 2.5, "i": 3,
                   "rows": [[1, None]], "array": [1.0, None], "tuple": [1, 2], "4": "int key",
                   "ok": 0.5, "flag": True, "none": None}


def test_a_run_file_is_standard_json(tmp_path):
    run_dir.write_json(str(tmp_path), "result.json", {
        "measurements": {"noise_probe/b_simple_high": math.inf,
                         "noise_probe/b_simple_low": np.float32(96.5),
                         "noise_probe/probes": [{"noise_probe/b_simple_high": np.float64(np.inf)}]},
        "final_validation": {"loss": math.nan}})
    with open(tmp_path / "result.json") as handle:
        written = _strict(handle.read())
    assert written["measurements"]["noise_probe/b_simple_high"] is None
    assert written["measurements"]["noise_probe/probes"][0]["noise_probe/b_simple_high"] is None
    assert written["measurements"]["noise_probe/b_simple_low"] == 96.5
    assert written["final_validation"]["loss"] is None




def test_dump_writes_odd_values_as_standard_json(tmp_path):
    """A float subclass that is not finite is null; any other object is its string."""
    class Odd(float):
        pass

    class Thing:
        def __str__(self):
            return "thing"

    with open(tmp_path / "x.json", "w") as handle:
        json_files.dump({"odd": Odd("inf"), "thing": Thing(), "bytes": "b"}, handle)
    assert _strict((tmp_path / "x.json").read_text()) == {"odd": None, "thing": "thing",
                                                           "bytes": "b"}


def test_a_nan_metric_written_as_null_reads_back_as_nan(tmp_path):
    """result.json writes a diverged run's NaN metric as null; a sweep relaunch read the file
    back and dropped the metric (its HParams session and table lost the divergence)."""
    path = tmp_path / "result.json"
    with open(path, "w") as handle:
        json_files.dump({"final_epoch": {"loss": 0.5, "val_loss": float("nan")},
                         "final_validation": {"loss": float("inf")}, "updates": 3}, handle)
    result = json_files.read_result(str(path))
    assert result["final_epoch"]["loss"] == 0.5 and math.isnan(result["final_epoch"]["val_loss"])
    assert math.isnan(result["final_validation"]["loss"]) and result["updates"] == 3
    assert json_files.read_result(str(tmp_path / "missing.json")) is None
