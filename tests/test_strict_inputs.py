"""Strict inputs: every bad value is refused with the binding or file named, before any run."""

import os

import pytest

from experiments import launch
from tests.helpers import read_json, run_dirs

DIGITS = "gin/experiments/digits_mlp.gin"
QUIET = ["train.verbose = 0", "train.epochs = 1"]


def _launch(output, bindings, files=(DIGITS,)):
    return launch.launch(list(files), QUIET + list(bindings), output_dir=str(output),
                         print_fn=lambda *_: None)


@pytest.mark.parametrize("binding, message", [
    ("train.epochs = -1", "train.epochs must be a positive integer, got -1"),
    ("train.epochs = 2.5", "train.epochs must be a positive integer, got 2.5"),
    ("train.seed = -3", "train.seed must be an integer >= 0"),
    ("train.seed = 1.5", "train.seed must be an integer >= 0"),
    ("train.dtype_policy = 'float16'", "train.dtype_policy must be one of"),
    ("measurements.every_n_updates = 0", "measurements.every_n_updates must be a positive"),
    ("measurements.gap_subset_size = 2.5", "measurements.gap_subset_size must be a positive"),
    ("stream_layout.num_streams = 0", None),  # unused by digits: reported, not an error
])
def test_integer_and_choice_bindings_are_checked_by_name(tmp_path, binding, message):
    if message is None:
        (result,) = _launch(tmp_path / "runs", [binding])
        assert result["unused_bindings"] == ["stream_layout.num_streams"]
        return
    with pytest.raises(ValueError, match=message):
        _launch(tmp_path / "runs", [binding])
    assert run_dirs(str(tmp_path / "runs")) == []


def test_output_dir_that_is_a_file_is_refused_before_loading(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="is a file; give a directory"):
        _launch(blocker, [])
    with pytest.raises(ValueError, match="lies under the file"):
        _launch(blocker / "runs", [])
    assert blocker.read_text() == "not a directory"


def _csv(tmp_path, text):
    path = tmp_path / "table.csv"
    path.write_text(text)
    return ["train.data_fn = @csv_file", f"csv_file.path = '{path}'",
            "csv_file.label_column = 'label'", "csv_file.validation_split = 0.0",
            "train.batch_size = 2"]


@pytest.mark.parametrize("text, message", [
    ("a,b,label\n1,2,0\n3,4\n5,6,1\n", r"table.csv, line 3: 2 cells, the header has 3"),
    ("a,b,label\n1,2,0\n3,4,1,9\n", r"table.csv, line 3: 4 cells, the header has 3"),
    ("a,b,label\n1,,0\n3,4,1\n", r"table.csv, line 2, column 'b' \(#2\)"),
    ("a,b,label\n1,x,0\n3,4,1\n", r"line 2, column 'b' \(#2\): 'x' is not a number"),
    ("a,b,label\n1,nan,0\n3,4,1\n", r"line 2, column 'b' \(#2\): 'nan' is not a finite number"),
    ("a,b,label\n1,inf,0\n3,4,1\n", r"'inf' is not a finite number"),
])
def test_csv_problems_name_file_line_and_column(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        _launch(tmp_path / "runs", _csv(tmp_path, text))
    assert run_dirs(str(tmp_path / "runs")) == []


def test_gin_syntax_errors_name_the_file_or_the_binding(tmp_path):
    bad = tmp_path / "unclosed.gin"
    bad.write_text(f"include '{DIGITS}'\ntrain.batch_size = 32\nmlp.hidden_units = (8,\n")
    with pytest.raises(launch.ConfigError, match=r"in .*unclosed.gin: a bracket or quote opened "
                                                 r"and never closed"):
        _launch(tmp_path / "runs", [], files=[str(bad)])
    with pytest.raises(launch.ConfigError, match=r"in the command-line binding "
                                                 r"'train.epochs = \(2'"):
        _launch(tmp_path / "runs", ["train.epochs = (2"])
    with pytest.raises(launch.ConfigError, match=r"command-line binding 'train.epochs = 2 3'"):
        _launch(tmp_path / "runs", ["train.epochs = 2 3"])
    assert run_dirs(str(tmp_path / "runs")) == []


def test_an_unused_binding_is_logged_and_recorded(tmp_path):
    (result,) = _launch(tmp_path / "runs", ["vgg_convnet.filters = (8,)"])
    saved = read_json(os.path.join(result["run_dir"], "result.json"))
    assert saved["unused_bindings"] == ["vgg_convnet.filters"]


def test_group_directories_are_created_atomically_and_never_shared(tmp_path):
    """Two sweeps or studies of the same name started in the same second get two directories
    (os.makedirs(exist_ok=False), never a check-then-create)."""
    from concurrent.futures import ThreadPoolExecutor

    from experiments.run import run_dir

    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: run_dir.new_directory(str(tmp_path), "sweep"), range(8)))
    assert len(set(paths)) == 8 and all(os.path.isdir(p) for p in paths)
    stamped = {run_dir.new_directory(str(tmp_path)) for _ in range(3)}  # same second
    assert len(stamped) == 3
