"""Bad input fails early with a clear message and leaves nothing that looks like a finished run."""

import os
import subprocess
import sys

import pytest

from experiments import launch
from tests.helpers import read_json, run_dirs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = "gin/experiments/digits_mlp.gin"
QUIET = ["train.verbose = 0", "train.epochs = 1"]


def _launch(tmp_path, bindings, files=(DIGITS,)):
    return launch.launch(list(files), QUIET + list(bindings), output_dir=str(tmp_path / "runs"),
                         print_fn=lambda *_: None)


def _assert_no_run(tmp_path):
    assert run_dirs(str(tmp_path / "runs")) == []


def test_unknown_configurable_names_file_line_and_suggestion(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'gin/experiments/digits_mlp.gin'\n\nmlpp.hidden_units = (8,)\n")
    with pytest.raises(launch.ConfigError) as error:
        _launch(tmp_path, [], files=[str(bad)])
    message = str(error.value)
    assert "Unknown configurable 'mlpp'" in message
    assert "Did you mean: mlp" in message
    assert str(bad) in message and "line 3" in message
    _assert_no_run(tmp_path)


def test_unknown_parameter_suggests_the_nearest(tmp_path):
    with pytest.raises(launch.ConfigError, match=r"'mlp' has no parameter 'hiden_units'.*"
                                                 r"Did you mean: hidden_units"):
        _launch(tmp_path, ["mlp.hiden_units = (8,)"])
    _assert_no_run(tmp_path)


def test_gin_syntax_error(tmp_path):
    bad = tmp_path / "syntax.gin"
    bad.write_text("train.batch_size = (32\n")
    with pytest.raises(launch.ConfigError, match="syntax"):
        _launch(tmp_path, [], files=[DIGITS, str(bad)])
    _assert_no_run(tmp_path)


def test_missing_gin_file_and_missing_include(tmp_path):
    with pytest.raises(launch.ConfigError, match="Gin file not found: 'nope.gin'"):
        _launch(tmp_path, [], files=["nope.gin"])
    bad = tmp_path / "include.gin"
    bad.write_text("include 'gin/models/nope.gin'\n")
    with pytest.raises(launch.ConfigError, match="nope.gin"):
        _launch(tmp_path, [], files=[str(bad)])
    _assert_no_run(tmp_path)


def test_missing_data_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        _launch(tmp_path, ["digits.path = 'data/missing.npz'"])
    _assert_no_run(tmp_path)


@pytest.mark.parametrize("value, expected", [
    ("0", "train.batch_size must be a positive integer, got 0"),
    ("-4", "train.batch_size must be a positive integer, got -4"),
    ("12.5", "train.batch_size must be a positive integer, got 12.5"),
    ("5000", "has 1438 examples, fewer than one batch of train.batch_size=5000"),
])
def test_bad_batch_sizes(tmp_path, value, expected):
    with pytest.raises(ValueError, match=expected):
        _launch(tmp_path, [f"train.batch_size = {value}"])
    _assert_no_run(tmp_path)


def test_non_positive_eval_batch_size(tmp_path):
    with pytest.raises(ValueError, match="train.eval_batch_size must be a positive integer"):
        _launch(tmp_path, ["train.eval_batch_size = -1"])
    _assert_no_run(tmp_path)


def test_bad_variant_is_caught_before_any_run(tmp_path):
    bindings = ["sweep.variants = {'ok': ['train.batch_size = 16'], "
                "'bad': ['train.batch_size = 0']}"]
    with pytest.raises(launch.ConfigError, match="In sweep variant 'bad'"):
        _launch(tmp_path, bindings)
    _assert_no_run(tmp_path)


@pytest.mark.slow
def test_nan_loss_fails_the_run_and_says_where(tmp_path):
    with pytest.raises(FloatingPointError, match=r"became (nan|inf) (at update \d+|between "
                                                 r"updates 1 and \d+ \(checked once per graph "
                                                 r"call of updates\)) of epoch 1"):
        _launch(tmp_path, ["keras.optimizers.SGD.learning_rate = 1e12",
                           "keras.optimizers.SGD.momentum = 0.0"])
    (path,) = run_dirs(str(tmp_path / "runs"))
    assert read_json(os.path.join(path, "status.json"))["status"] == "failed"
    assert not os.path.exists(os.path.join(path, "result.json"))
    # Failed inside the first graph call: the values used so far are kept for debugging.
    with open(os.path.join(path, "operative_config.gin")) as handle:
        assert "SGD.learning_rate = 1" in handle.read()


@pytest.mark.slow
@pytest.mark.parametrize("traceback", [False, True])
def test_main_exits_nonzero_with_the_message(tmp_path, traceback):
    """A configuration error is one message; with BATCHLAB_TRACEBACK=1 (README) its traceback too."""
    env = {k: v for k, v in os.environ.items() if k != "BATCHLAB_TRACEBACK"}
    if traceback:
        env["BATCHLAB_TRACEBACK"] = "1"
    process = subprocess.run(
        [sys.executable, "main.py", f"--gin_file={DIGITS}", "--gin_bindings=mlp.widht = 3",
         f"--output_dir={tmp_path / 'runs'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert process.returncode != 0
    assert "'mlp' has no parameter 'widht'" in process.stderr
    assert "Did you mean: width" not in process.stderr  # no such parameter to suggest
    assert ("Traceback (most recent call last)" in process.stderr) == traceback
    _assert_no_run(tmp_path)


def test_existing_run_directory_is_never_overwritten(tmp_path):
    from experiments.run import run_dir
    first = run_dir.create(str(tmp_path), "exp", "same")
    with open(os.path.join(first, "result.json"), "w") as handle:
        handle.write("{}")
    second = run_dir.create(str(tmp_path), "exp", "same")
    assert second != first and os.path.exists(os.path.join(first, "result.json"))


@pytest.mark.parametrize("jobs", [0, -2, 1.5, True])
def test_jobs_must_be_a_positive_integer(tmp_path, jobs):
    with pytest.raises(launch.ConfigError, match=f"--jobs must be a positive integer, got {jobs}"):
        launch.launch([DIGITS], QUIET, output_dir=str(tmp_path / "runs"),
                      print_fn=lambda *_: None, jobs=jobs)
    _assert_no_run(tmp_path)


@pytest.mark.parametrize("name, message", [
    ("'tensorboard'", "one of the sweep's own files"),  # its run would be deleted
    ("'../../escaped'", "single directory name"),  # its run would land outside the sweep
    ("128", "single directory name"),  # a crash after sweep.json was written
])
def test_a_variant_name_that_is_not_a_run_directory_name_is_refused(tmp_path, name, message):
    with pytest.raises(launch.ConfigError, match=message):
        _launch(tmp_path, [f"sweep.variants = {{{name}: ['train.batch_size = 16']}}"])
    _assert_no_run(tmp_path)


def test_the_nan_guard_names_the_updates_between_its_readings():
    """With several updates per graph call the guard reads the loss once per call: it named the
    call's last update as where the loss turned NaN; now the span since the last finite one."""
    from callbacks.nan_guard import FailOnNonFiniteLoss  # noqa: PLC0415

    import keras  # noqa: PLC0415

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    guard = FailOnNonFiniteLoss()
    guard.set_model(model)
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(7, {"loss": 0.5})  # updates 1-8 finite, read after update 8
    with pytest.raises(FloatingPointError, match="between updates 9 and 16 .* of epoch 1"):
        guard.on_train_batch_end(15, {"loss": float("nan")})
    model.optimizer.iterations.assign(8)
    guard.on_epoch_begin(1)
    guard.on_train_batch_end(0, {"loss": 0.5})
    with pytest.raises(FloatingPointError, match="inf at update 2 of epoch 2"):
        guard.on_train_batch_end(1, {"loss": float("inf")})
    # an epoch resumed after its 50th update (batchlab's loop says where the epoch began)
    model.optimizer.iterations.assign(90)
    guard.set_params({"epoch_first_update": 40})
    guard.on_epoch_begin(2)
    with pytest.raises(FloatingPointError, match="between updates 51 and 64 .* of epoch 3"):
        guard.on_train_batch_end(63, {"loss": float("nan")})


@pytest.mark.parametrize("binding, message", [
    ("train.metrics = ['acuracy']", r"train.metrics: 'acuracy' is not a metric Keras knows "
                                    r"\(did you mean 'accuracy'"),
    ("keras.optimizers.SGD.learning_rate = -0.1", r"learning rate is -0.1 at the first update"),
])
def test_a_misspelt_metric_or_a_negative_rate_is_refused_before_the_run_directory(
        tmp_path, binding, message):
    """Both failed after the run directory existed: Keras' "Could not interpret metric
    identifier" naming no binding, and a run climbing its loss to NaN."""
    with pytest.raises(ValueError, match=message):
        _launch(tmp_path, [binding])
    _assert_no_run(tmp_path)


def test_metric_names_are_those_keras_compile_takes():
    """'crossentropy' is a loss's name only (it passed the check, then failed at the first
    update); 'ACC' compiles (Keras reads accuracy's names in any case) and was refused."""
    from experiments.run.settings import check_metrics  # noqa: PLC0415

    check_metrics(["ACC", "Accuracy", "mae", "auc", None])
    for name in ("crossentropy", "ce"):
        with pytest.raises(ValueError, match=f"train.metrics: '{name}' is not a metric"):
            check_metrics([name])


def test_only_a_model_for_rows_gets_the_streams_hint():
    """A sequence model's own error on stream data (a bad binding, a bug) is its own: the hint
    to use a sequence model was added to every ValueError and TypeError."""
    import types  # noqa: PLC0415

    from experiments.run import stateful  # noqa: PLC0415

    data = types.SimpleNamespace(stream=object(), spec=types.SimpleNamespace(input_shape=(None,)),
                                 name="flip_flop")

    def failing(error):
        def model_fn(spec):
            raise error
        return model_fn

    for error in (ValueError("each of stateful_stacked_lstm.units must be a positive integer"),
                  TypeError("unsupported operand")):
        with pytest.raises(type(error)) as raised:
            stateful.build_model(failing(error), data)
        assert raised.value is error
    with pytest.raises(ValueError, match=r"Shapes used .*fully-defined \(no `None` dimensions\)\. "
                                         r"Stream data needs a sequence model"):
        stateful.build_model(failing(ValueError(
            "Shapes used to initialize variables must be fully-defined (no `None` dimensions).")),
            data)
