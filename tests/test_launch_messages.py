"""What the launch says, found by a docs walk-through: a user's module beside a gin file inside
gin/ imports, a configurable called with a missing argument is one line, an unknown parameter is
one line with its file and line, --report prints plain text, an included file's settings of an
optimizer the run does not use are not reported as unused, and the README says which overrides are
announced."""

import os
import subprocess
import sys

import gin
import pytest

from experiments import launch
from experiments.launch import gin_config, precedence, study_reporting
from experiments.launch.grid import RunSpec
from tests.helpers import run_dirs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = "gin/experiments/digits_mlp.gin"
QUIET = ["train.verbose = 0", "train.epochs = 1", "measurements.enabled = []"]


def _launch(tmp_path, files, bindings=()):
    return launch.launch(list(files), QUIET + list(bindings), output_dir=str(tmp_path / "runs"),
                         print_fn=lambda *_: None)


# -- 1. README "Your own model": my_models.py beside gin/experiments/my_convnet.gin -----------

MODELS = """\
import gin, keras

@gin.configurable
def fixa_tiny_convnet(spec, width=16):
    return keras.Sequential([
        keras.Input(spec.input_shape),
        keras.layers.Reshape((*spec.input_shape, 1)),
        keras.layers.Conv2D(width, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(spec.num_outputs, activation="softmax"),
    ])
"""


@pytest.fixture
def fake_repository(tmp_path, monkeypatch):
    """A repository root whose gin/experiments/ the test writes into (the real gin/ is shared by
    the other test processes): gin_config sees it as the shipped gin/."""
    gin_config.parse([DIGITS], [])  # the real root on gin's search path (relative includes)
    root = tmp_path / "repo"
    (root / "gin" / "experiments").mkdir(parents=True)
    monkeypatch.setattr(gin_config, "REPO_ROOT", str(root))
    monkeypatch.setattr(gin_config, "_SEARCH_PATHS", [str(root), REPO])
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield root
    sys.modules.pop("fixa_readme_models", None)


def test_a_module_beside_a_gin_file_in_gin_experiments_is_imported_and_trains(
        fake_repository, tmp_path):
    folder = fake_repository / "gin" / "experiments"
    (folder / "fixa_readme_models.py").write_text(MODELS)
    gin_file = folder / "my_convnet.gin"
    # As README's my_convnet.gin: base and data, no model file (whose settings would go unused).
    gin_file.write_text(f"include '{os.path.join(REPO, 'gin/base.gin')}'\n"
                        f"include '{os.path.join(REPO, 'gin/data/digits.gin')}'\n"
                        "import fixa_readme_models\n"
                        "digits.flatten = False\ntrain.model_fn = @fixa_tiny_convnet\n"
                        "fixa_tiny_convnet.width = 4\ntrain.batch_size = 32\n")
    (result,) = _launch(tmp_path, [str(gin_file)])
    operative = open(os.path.join(result["run_dir"], "operative_config.gin")).read()
    assert "fixa_tiny_convnet.width = 4" in operative
    assert result["unused_bindings"] == [], result["unused_bindings"]


def test_shipped_gin_folders_without_python_are_not_searched(fake_repository):
    folder = fake_repository / "gin" / "experiments"
    gin_file = folder / "mine.gin"
    gin_file.write_text(f"include '{os.path.join(REPO, DIGITS)}'\nimport fixa_absent_models\n")
    with pytest.raises(launch.ConfigError) as error:
        launch.parse([str(gin_file)], [])
    message = str(error.value)
    assert "Put fixa_absent_models.py in the directory of the gin file that imports it" in message
    assert f"in {gin_file}, line 2" in message
    assert str(folder) not in sys.path  # nothing importable there: the folder is left alone


# -- 2. a configurable called with a missing argument ------------------------------------------

@gin.configurable("fixa_needs_argument")
def _needs_argument(filename):
    return filename


@gin.configurable("fixa_fails_inside")
def _fails_inside(value=5):
    return len(value)  # a TypeError raised by the configurable's own code


def test_a_missing_argument_of_a_configurables_call_is_a_configuration_error(tmp_path):
    binding = "train.extra_callbacks = [@keras.callbacks.EarlyStopping(), " \
              "@keras.callbacks.CSVLogger()]"
    with pytest.raises(TypeError) as error:
        _launch(tmp_path, [DIGITS], [binding])
    explained = gin_config.call_error(error.value)
    assert explained is not None
    message = str(explained)
    assert len(message.splitlines()) == 1, message
    assert "calling CSVLogger failed" in message
    assert "missing 1 required positional argument: 'filename'" in message
    assert "CSVLogger.filename = ..." in message
    assert run_dirs(str(tmp_path / "runs")) == []


def test_only_the_call_itself_is_a_configuration_error():
    with pytest.raises(TypeError) as missing:
        _needs_argument()
    assert "calling fixa_needs_argument failed" in str(gin_config.call_error(missing.value))
    assert "fixa_needs_argument.filename = ..." in str(gin_config.call_error(missing.value))
    with pytest.raises(TypeError) as inside:
        _fails_inside()
    assert gin_config.call_error(inside.value) is None  # a bug: its traceback is kept
    assert gin_config.call_error(ValueError("x")) is None


def test_the_documented_csv_logger_binding_runs(tmp_path, monkeypatch):
    """docs/measurement.md: EarlyStopping and CSVLogger with its filename bound."""
    monkeypatch.chdir(tmp_path)
    (result,) = launch.launch(
        [os.path.join(REPO, DIGITS)],
        QUIET + ["train.extra_callbacks = [@keras.callbacks.EarlyStopping(), "
                 "@keras.callbacks.CSVLogger()]",
                 "keras.callbacks.CSVLogger.filename = 'epochs.csv'"],
        output_dir=str(tmp_path / "runs"), print_fn=lambda *_: None)
    assert result["final_epoch"]
    assert open(tmp_path / "epochs.csv").read().startswith("epoch,")
    doc = open(os.path.join(REPO, "docs", "measurement.md")).read()
    assert "keras.callbacks.CSVLogger.filename = 'epochs.csv'" in doc


@pytest.mark.slow
@pytest.mark.parametrize("binding, expected", [
    ("train.extra_callbacks = [@keras.callbacks.CSVLogger()]",
     "calling CSVLogger failed: CSVLogger.__init__() missing 1 required positional argument: "
     "'filename'"),
    ("train.bach_size = 64", "'train' has no parameter 'bach_size' (in the command-line binding "
                             "'train.bach_size = 64'). Did you mean: batch_size"),
])
def test_main_prints_one_line_without_a_traceback(tmp_path, binding, expected):
    env = {k: v for k, v in os.environ.items() if k != "BATCHLAB_TRACEBACK"}
    process = subprocess.run(
        [sys.executable, "main.py", f"--gin_file={DIGITS}", f"--gin_bindings={binding}",
         f"--output_dir={tmp_path / 'runs'}"],
        cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
    assert process.returncode == 1, process.stderr[-3000:]
    assert "Traceback" not in process.stderr, process.stderr[-3000:]
    message = process.stderr.split("batchlab: configuration error: ", 1)[1]
    assert message.startswith(expected), message
    assert len(message.strip().splitlines()) == 1, message
    assert run_dirs(str(tmp_path / "runs")) == []


def test_resume_with_gin_flags_is_refused_before_tensorflow_loads(tmp_path):
    """The refusal needs only the flags: it comes before the launch's "loading TensorFlow"
    line (which took about 12 s before it), and the run directory is left as it was."""
    run = tmp_path / "run"
    run.mkdir()
    process = subprocess.run(
        [sys.executable, "main.py", f"--resume={run}", "--gin_bindings=train.epochs = 2"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert process.returncode == 1, process.stderr[-3000:]
    assert "loading TensorFlow" not in process.stdout + process.stderr
    assert process.stderr.strip().endswith(
        "batchlab: configuration error: --resume takes the run's own config.gin; give no "
        "--gin_file or --gin_bindings with it."), process.stderr[-3000:]
    assert os.listdir(run) == []


@pytest.mark.parametrize("flag", ["report", "list"])
def test_an_empty_directory_flag_is_refused_not_read_as_absent(tmp_path, flag):
    """``--report=$UNSET`` trained the quickstart into ./runs before: now a one-line refusal."""
    process = subprocess.run(
        [sys.executable, "main.py", f"--{flag}=", f"--output_dir={tmp_path / 'runs'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert process.returncode == 1, process.stderr[-3000:]
    assert process.stderr.strip().endswith(
        f"batchlab: configuration error: --{flag} needs a directory, got an empty value (an "
        "unset shell variable?); nothing was started."), process.stderr[-3000:]
    assert not os.path.exists(tmp_path / "runs")


# -- 3. an unknown parameter: one line, with its file and line ---------------------------------

def test_an_unknown_parameter_is_one_line_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text(f"include '{os.path.join(REPO, DIGITS)}'\ntrain.bach_size = 64\n")
    with pytest.raises(launch.ConfigError) as error:
        launch.parse([str(bad)], [])
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"'train' has no parameter 'bach_size' (in {bad}, line 2). "
                              "Did you mean: batch_size")
    assert "doesn't have a parameter" not in message  # gin's own text, not repeated


def test_an_unknown_name_in_an_included_file_names_both_files(tmp_path):
    inner = tmp_path / "inner.gin"
    inner.write_text("mlpp.hidden_units = (8,)\n")
    outer = tmp_path / "outer.gin"
    outer.write_text(f"include '{os.path.join(REPO, DIGITS)}'\n\ninclude '{inner}'\n")
    with pytest.raises(launch.ConfigError) as error:
        launch.parse([str(outer)], [])
    message = str(error.value)
    assert message == (f"Unknown configurable 'mlpp' (in {inner}, line 1, included in {outer})."
                       " Did you mean: mlp?")


def test_an_unknown_parameter_in_a_binding_names_the_binding():
    with pytest.raises(launch.ConfigError) as error:
        launch.parse([DIGITS], ["mlp.hiden_units = (8,)"])
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith("'mlp' has no parameter 'hiden_units' (in the command-line binding "
                              "'mlp.hiden_units = (8,)'). Did you mean: hidden_units")


def test_parameters_the_launcher_sets_are_neither_listed_nor_bindable():
    """``train.output_dir`` and its kind are set by flags: a typo's parameter list leaves them
    out, and binding one is one line saying what sets it, not gin's "denylisted kwarg"."""
    with pytest.raises(launch.ConfigError) as error:
        launch.parse([DIGITS], ["train.bach_size = 64"])
    listed = str(error.value).split("Its parameters: ", 1)[1]
    assert "batch_size" in listed and "output_dir" not in listed and "run_name" not in listed
    with pytest.raises(launch.ConfigError) as error:
        launch.parse([DIGITS], ["train.output_dir = 'elsewhere'"])
    message = str(error.value)
    assert len(message.splitlines()) == 1 and "denylisted" not in message, message
    assert message.startswith("'train.output_dir' cannot be bound in gin") and \
        message.endswith("use the --output_dir flag."), message


# -- 4. README: which overrides are announced --------------------------------------------------

def test_the_readme_says_which_overrides_are_announced():
    readme = " ".join(open(os.path.join(REPO, "README.md")).read().split())
    assert "the launch prints each value it overrides" not in readme
    assert ("A command-line binding that overrides a sweep variant's or a study run's own value "
            "is announced") in readme
    assert "one that overrides a value set in a gin file replaces it silently" in readme
    printed = []
    runs = [RunSpec(0, "b16", ("train.epochs = 5",), {})]
    precedence.with_command_line_last(runs, ["train.epochs = 1", "train.seed = 3"],
                                      print_fn=printed.append)
    assert printed == ["Command-line binding 'train.epochs = 1' overrides the sweep variant "
                       "value of b16 (5)."]


# -- 5. --report prints plain text -------------------------------------------------------------

def test_report_prints_a_study_report_unescaped(tmp_path, monkeypatch):
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text("{}")
    report = study / "report.md"
    report.write_text("# Batch-size study: a&lt;b\n\n- val_accuracy &gt;= 0.8134 for B &gt; 30"
                      " &amp; more\n")
    monkeypatch.setattr(study_reporting, "write", lambda directory: {"report": str(report)})
    text = study_reporting.rebuild(str(study))
    assert text == "# Batch-size study: a<b\n\n- val_accuracy >= 0.8134 for B > 30 & more\n"
    assert "&gt;" in report.read_text()  # the markdown file keeps its escapes
    source = open(os.path.join(REPO, "main.py")).read()
    assert "study_reporting.rebuild(FLAGS.report)" in source


def test_report_prints_a_comparison_as_written(tmp_path, monkeypatch):
    from experiments.launch import comparison
    group = tmp_path / "sweep"
    group.mkdir()
    (group / "sweep.json").write_text("{}")
    report = group / "comparison.md"
    report.write_text("x &amp; y\n")
    monkeypatch.setattr(comparison, "write_from_dir", lambda directory: {"report": str(report)})
    assert study_reporting.rebuild(str(group)) == "x &amp; y\n"


# -- 6. an included file's settings of an optimizer the run does not use ------------------------

def _optimizer_lines():
    return [line for line in gin.config_str().splitlines() if "SGD" in line or "Adam" in line]


@pytest.mark.parametrize("experiment", ["gin/experiments/char_lm.gin",
                                        "gin/experiments/long_memory.gin"])
def test_shipped_adam_experiments_leave_out_base_gins_sgd_settings(experiment):
    launch.parse([experiment], [])
    lines = _optimizer_lines()
    assert "train.optimizer = @keras.optimizers.Adam" in lines
    assert not [line for line in lines if line.startswith(("SGD.", "keras.optimizers.SGD."))]


def test_sgd_settings_stay_where_the_run_uses_sgd_or_the_user_set_them(tmp_path):
    launch.parse([DIGITS], [])  # SGD: base.gin's settings are used
    assert "SGD.momentum = 0.9" in _optimizer_lines()
    launch.parse(["gin/experiments/char_lm.gin"], ["OPT = @keras.optimizers.SGD"])
    assert "SGD.momentum = 0.9" in _optimizer_lines()  # referred to (by a macro)
    launch.parse(["gin/experiments/char_lm.gin"], ["keras.optimizers.SGD.momentum = 0.5"])
    assert [line for line in _optimizer_lines() if line.startswith("SGD.")] == \
        ["SGD.momentum = 0.5"]  # the user's, kept (and reported unused); base.gin's lr left out
    mine = tmp_path / "mine.gin"
    mine.write_text("include 'gin/experiments/char_lm.gin'\n"
                    "keras.optimizers.SGD.learning_rate = 0.2\n")
    launch.parse([str(mine)], [])
    assert [line for line in _optimizer_lines() if line.startswith("SGD.")] == \
        ["SGD.learning_rate = 0.2"]


def test_sweep_variants_keep_their_declared_order_when_sgd_defaults_are_left_out(tmp_path):
    """Leaving out base.gin's SGD settings parses the configuration again from its own text,
    where gin prints a dict's keys sorted: the variants must still run in the file's order."""
    mine = tmp_path / "my_experiment.gin"
    mine.write_text("include 'gin/experiments/digits_mlp.gin'\n"
                    "train.optimizer = @keras.optimizers.Adam\n"
                    "sweep.variants = {'b64': ['train.batch_size = 64'], "
                    "'b512': ['train.batch_size = 512'], 'a': []}\n")
    launch.parse([str(mine)], [])
    assert not [line for line in _optimizer_lines() if line.startswith("SGD.")]  # re-parsed
    assert list(gin.query_parameter("sweep.variants")) == ["b64", "b512", "a"]
    # The same held in a macro (sweep.variants = %VARIANTS).
    mine.write_text("include 'gin/experiments/digits_mlp.gin'\n"
                    "train.optimizer = @keras.optimizers.Adam\n"
                    "VARIANTS = {'b64': ['train.batch_size = 64'], 'a': []}\n"
                    "sweep.variants = %VARIANTS\n")
    launch.parse([str(mine)], [])
    assert list(gin.query_parameter("%VARIANTS")) == ["b64", "a"]


def test_an_adam_run_over_base_gin_reports_only_real_unused_bindings(tmp_path):
    mine = tmp_path / "my_experiment.gin"
    mine.write_text("include 'gin/base.gin'\ninclude 'gin/models/mlp.gin'\n"
                    "include 'gin/data/digits.gin'\nmlp.hidden_units = (8,)\n"
                    "train.optimizer = @keras.optimizers.Adam\n"
                    "keras.optimizers.Adam.learning_rate = 1e-3\ntrain.batch_size = 128\n")
    (clean,) = _launch(tmp_path / "a", [str(mine)])
    assert clean["unused_bindings"] == []
    (typo,) = _launch(tmp_path / "b", [str(mine)], ["evall/train.batch_size = 64",
                                                    "keras.optimizers.SGD.momentum = 0.5"])
    assert typo["unused_bindings"] == ["SGD.momentum", "evall/train.batch_size"]


def test_an_experiment_path_that_is_a_file_and_a_list_of_a_file_say_so(tmp_path):
    """Both failed as a bare "Not a directory" / "no such directory"."""
    from experiments.launch import listing
    from experiments.run import run_dir

    (tmp_path / "digits_mlp").write_text("")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        run_dir.create(str(tmp_path), "digits_mlp")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        run_dir.open_named(str(tmp_path), "digits_mlp", "r", "")
    with pytest.raises(NotADirectoryError, match="is a file; give a directory"):
        listing.find(str(tmp_path / "digits_mlp"))


@pytest.mark.parametrize("flags, expected", [
    (["--report={d}", "--resume={d}"], "--report and --resume cannot go together"),
    (["--list={d}", "--gin_file=gin/experiments/digits_mlp.gin"],
     "--list only reads what is on disk; --gin_file does not apply to it"),
    (["--resume={d}", "--output_dir={d}"],
     "--resume takes the run's own config.gin; --output_dir does not apply to it"),
    (["--report={d}", "--jobs=2"], "--report only reads what is on disk; --jobs does not apply"),
    (["--output_dir=", "--gin_file=gin/experiments/digits_mlp.gin"],
     "--output_dir needs a directory, got an empty value"),
    (["--shard=", "--gin_file=gin/studies/nqm_known_answer.gin"],
     "--shard needs i/n, got an empty value"),
    (["--intra_op_threads=-1", "--jobs=2"], "--intra_op_threads must be 0"),
    (["--run_name=" + "x" * 300], "--run_name is 300 bytes long; at most 200"),
])
def test_flags_that_cannot_go_together_are_refused_before_anything_starts(tmp_path, flags,
                                                                          expected):
    """``--report=X --resume=Y`` trained Y and wrote no report; ``--list`` with a launch's
    flags listed and ignored them; an empty ``--output_dir=`` (an unset variable) wrote into
    the working directory; ``--intra_op_threads=-1`` aborted TensorFlow with a core dump."""
    process = subprocess.run(
        [sys.executable, os.path.join(REPO, "main.py")] + [f.format(d=tmp_path) for f in flags],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert process.returncode == 1, process.stderr[-3000:]
    assert "loading TensorFlow" not in process.stdout + process.stderr
    assert expected in process.stderr, process.stderr[-3000:]
    assert len(process.stderr.strip().splitlines()) == 1, process.stderr
    assert os.listdir(tmp_path) == []


def test_a_shard_needs_a_run_name_and_jobs_need_a_group(tmp_path):
    """``--shard=1/2`` without ``--run_name`` wrote half a study into a timestamped directory of
    its own, which no other shard could join; ``--jobs=3`` on one run only cut its threads."""
    from experiments import launch

    with pytest.raises(launch.ConfigError, match="--shard=1/2 needs --run_name"):
        launch.launch(["gin/studies/nqm_known_answer.gin"], [], output_dir=str(tmp_path),
                      print_fn=lambda *_: None, shard="1/2")
    with pytest.raises(launch.ConfigError, match="--jobs=3 applies to sweeps and studies"):
        launch.launch(["gin/experiments/digits_mlp.gin"], [], output_dir=str(tmp_path),
                      print_fn=lambda *_: None, jobs=3)
    assert os.listdir(tmp_path) == []


def test_a_run_name_too_long_for_the_file_system_is_refused_first():
    from experiments.run import run_dir

    assert run_dir.check_user_run_name("x" * 200) == "x" * 200
    with pytest.raises(ValueError, match="--run_name is 300 bytes long; at most 200"):
        run_dir.check_user_run_name("x" * 300)
    assert run_dir.check_run_name("v" * 210) == "v" * 210  # a sweep variant's directory
