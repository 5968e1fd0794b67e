"""Every user error of issue #22 is one or two lines naming the binding, file or flag, raised
before a run directory exists where possible; gin files find the modules beside them."""

import logging
import os
import subprocess
import sys

import pytest

from experiments import launch
from experiments.common import errors
from experiments.launch import spares
from tests.helpers import run_dirs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = "gin/experiments/digits_mlp.gin"
QUIET = ["train.verbose = 0", "train.epochs = 1", "measurements.enabled = []"]


def _launch(tmp_path, bindings=(), files=(DIGITS,), **kwargs):
    kwargs.setdefault("output_dir", str(tmp_path / "runs"))
    return launch.launch(list(files), QUIET + list(bindings), print_fn=lambda *_: None, **kwargs)


def _assert_no_run(tmp_path):
    assert run_dirs(str(tmp_path / "runs")) == []


def _short(message):
    assert len(str(message).strip().splitlines()) <= 2, message
    return str(message)


def test_missing_batch_size_names_the_binding(tmp_path):
    gin_file = tmp_path / "no_batch.gin"
    gin_file.write_text("include 'gin/base.gin'\ninclude 'gin/models/mlp.gin'\n"
                        "include 'gin/data/digits.gin'\n")
    with pytest.raises(launch.ConfigError, match=r"train.batch_size is not set.*"
                                                 r"--gin_bindings='train.batch_size = \.\.\.'"):
        _launch(tmp_path, files=[str(gin_file)])
    _assert_no_run(tmp_path)
    # gin's own error, should one come from elsewhere, reads as a message too:
    raw = RuntimeError("Required bindings for `train` not provided in config: ['batch_size']")
    assert errors.user_message(raw).startswith("train.batch_size must be set")


def test_nan_loss_is_one_message_naming_the_failed_run(tmp_path):
    command = [sys.executable, "main.py", f"--gin_file={DIGITS}",
               f"--output_dir={tmp_path / 'runs'}",
               "--gin_bindings=keras.optimizers.SGD.learning_rate = 1e30",
               *[f"--gin_bindings={b}" for b in QUIET]]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    error = done.stderr[done.stderr.index("batchlab: error:"):]
    assert "The training loss became nan" in _short(error)
    assert "is marked failed" in error and str(tmp_path / "runs") in error


def test_include_cycle_is_named_with_its_files(tmp_path):
    first, second = tmp_path / "a.gin", tmp_path / "b.gin"
    first.write_text(f"include '{second}'\n")
    second.write_text(f"include '{first}'\n")
    with pytest.raises(launch.ConfigError) as error:
        _launch(tmp_path, files=[str(first)])
    message = _short(error.value)
    assert "include cycle" in message
    assert f"{first} includes {second} includes {first}" in message


def test_a_configurable_bound_to_itself_stops_before_the_run_directory(tmp_path):
    with pytest.raises(launch.ConfigError, match=r"SGD.learning_rate = "
                                                 r"@keras.optimizers.SGD\(\) refers to "
                                                 r"keras.optimizers.SGD itself") as error:
        _launch(tmp_path, ["keras.optimizers.SGD.learning_rate = @keras.optimizers.SGD()"])
    _short(error.value)
    _assert_no_run(tmp_path)


def test_an_output_dir_that_cannot_be_written_names_the_flag(tmp_path):
    target = "/sys/kernel/batchlab-runs"  # sysfs refuses mkdir even to root
    if os.path.exists(target) or not os.path.isdir("/sys/kernel"):
        pytest.skip("no sysfs here")
    with pytest.raises(launch.ConfigError, match="--output_dir='/sys/kernel/batchlab-runs': "
                                                 "cannot write there") as error:
        _launch(tmp_path, output_dir=target)
    _short(error.value)


def test_a_seed_too_large_names_the_binding(tmp_path):
    with pytest.raises(ValueError, match=r"train.seed must be at most 2\*\*32 - 1") as error:
        _launch(tmp_path, ["train.seed = 99999999999999999999"])
    _short(error.value)
    _assert_no_run(tmp_path)


def test_npz_path_to_a_csv_does_not_suggest_pickles(tmp_path):
    csv = tmp_path / "data.csv"
    csv.write_text("x,y\n1,0\n")
    with pytest.raises(ValueError) as error:
        _launch(tmp_path, ["train.data_fn = @npz_file", f"npz_file.path = '{csv}'"])
    assert str(csv) in str(error.value) and "pickle" not in str(error.value)
    _assert_no_run(tmp_path)


@pytest.mark.parametrize("value", ["0", "-5"])
def test_eval_batch_size_zero_is_refused_as_negative_ones_are(tmp_path, value):
    with pytest.raises(ValueError, match=f"train.eval_batch_size must be a positive integer, "
                                         f"got {value}"):
        _launch(tmp_path, [f"train.eval_batch_size = {value}"])
    _assert_no_run(tmp_path)


def test_a_bad_binding_starts_no_jobs_worker(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(spares, "popen", lambda *args: started.append(args))
    with pytest.raises(launch.ConfigError, match="mlp"):
        _launch(tmp_path, ["mlp.hiden_units = (8,)"], files=["gin/quickstart.gin"], jobs=4)
    with pytest.raises(launch.ConfigError, match="--jobs"):
        _launch(tmp_path, files=["gin/quickstart.gin"], jobs=0)
    assert started == []


def test_main_checks_the_configuration_before_starting_jobs_workers():
    source = open(os.path.join(REPO, "main.py"), encoding="utf-8").read()
    assert "spares.start(" not in source  # the launcher starts them once the config parsed


def test_a_gin_file_imports_a_module_beside_it(tmp_path):
    (tmp_path / "batchlab_user_models_22.py").write_text(
        "import gin\n\n@gin.configurable\ndef user_width_22(width=3):\n    return width\n")
    gin_file = tmp_path / "mine.gin"
    gin_file.write_text(f"include '{os.path.join(REPO, DIGITS)}'\n"
                        "import batchlab_user_models_22\nuser_width_22.width = 5\n")
    launch.parse([str(gin_file)], [])
    import gin
    assert gin.query_parameter("user_width_22.width") == 5


def test_a_module_that_cannot_be_imported_says_how_to_make_it_importable(tmp_path):
    gin_file = tmp_path / "mine.gin"
    gin_file.write_text("import batchlab_no_such_module_22\n")
    with pytest.raises(launch.ConfigError, match=r"Put batchlab_no_such_module_22.py in the "
                                                 r"directory of the gin file.*PYTHONPATH"):
        launch.parse([str(gin_file)], [])


def test_no_error_lines_for_gin_search_paths_tried_and_not_needed(tmp_path, monkeypatch,
                                                                     caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        launch.parse([os.path.join(REPO, "gin/quickstart.gin")], [])
    assert not [r for r in caplog.records if "Path not found" in r.getMessage()]


@pytest.mark.parametrize("binding, message", [
    ("train.batch_size = %BATCHH", r"^Unknown macro '%BATCHH' \(when finalizing the "
                                   r"configuration\): train.batch_size uses it, but no 'BATCHH "
                                   r"= \.\.\.' is bound in the gin files or bindings\. Did you "
                                   r"mean: BATCH\?$"),
    ("train.optimizer = @keras.optimizers.Adamm", r"^Unknown configurable "
                                                  r"'@keras.optimizers.Adamm' .*Did you mean: "
                                                  r"keras.optimizers.Adam,"),
    ("train.model_fn = @mlpp", r"^Unknown configurable '@mlpp' .*Did you mean: mlp"),
])
def test_an_unknown_macro_or_reference_is_one_line_with_the_nearest_names(tmp_path, binding,
                                                                         message):
    """A misspelt macro printed the whole parsed configuration (33 lines) and no suggestion; a
    misspelt reference gin's four lines, no suggestion either."""
    with pytest.raises(launch.ConfigError, match=message) as raised:
        _launch(tmp_path, [binding], files=("gin/experiments/virtual_batch.gin",))
    assert "\n" not in str(raised.value)
    _assert_no_run(tmp_path)
