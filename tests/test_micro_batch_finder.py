"""The micro-batch finder: it measures each b in a process of its own (the run's configuration
with ``find_micro_batch.probe = b``; its ``ProbeResult`` is written to
``find_micro_batch.result_file``) through the plan, model and loop of a real run, and picks the
largest b whose measured peak memory is within the budget."""

import os
import re

import pytest

from experiments import launch
from experiments.engine import custom_loop
from experiments.run import micro_batch_finder

# An LSTM over long sequences: a micro-batch's activations dominate memory, as in the case the
# finder is for ("my LSTM runs out of memory").
LSTM = """
include 'gin/experiments/sequences_stacked_lstm.gin'
include 'gin/tools/find_micro_batch.gin'
synthetic_sequences.sequence_length = 200
synthetic_sequences.num_examples = 320
stacked_lstm.units = (256,)
train.batch_size = 256
find_micro_batch.updates = 1
"""


@pytest.mark.slow
def test_the_finder_picks_the_largest_b_within_a_budget_between_two_probes(tmp_path):
    """Real probes, each in its own process, then the choice for a budget set between two of the
    measured peaks (replayed: a process's peak memory varies by a few tens of MiB from one launch
    to the next, the choice must not depend on that)."""
    config = tmp_path / "lstm.gin"
    config.write_text(LSTM)
    prober = micro_batch_finder.ProcessProber(str(config))
    _, measured = micro_batch_finder.choose(prober, 256, budget_mb=None, smallest=64)
    peaks = {p.micro_batch_size: p.peak_mb for p in measured}
    assert sorted(peaks) == [64, 128, 256]
    assert peaks[256] > peaks[64]  # the activations of 4x the rows are measured
    assert all(p.examples_per_sec > 0 and p.fits for p in measured)
    replay = _Replay(peaks)
    budget = (peaks[128] + peaks[256]) / 2  # between two measured probe sizes
    best, probes = micro_batch_finder.choose(replay, 256, budget_mb=budget, smallest=64)
    assert best.micro_batch_size == 128 and best.num_micro_batches == 2
    assert [(p.micro_batch_size, p.fits) for p in probes] == [(64, True), (128, True),
                                                              (256, False)]
    report = micro_batch_finder.format_report(best, probes, 256, budget)
    assert "train.micro_batch_size = 128" in report and "| 256 | 1 |" in report


class _Replay:
    """Gives back measured peaks (the selection over real measurements)."""

    def __init__(self, peaks):
        self.peaks = peaks

    def measure(self, micro):
        return self.peaks[micro], 1000.0


class _Known:
    """A prober with a known memory per b (to test the selection rules alone)."""

    def __init__(self, peak_per_row):
        self.peak_per_row, self.seen = peak_per_row, []

    def measure(self, micro):
        self.seen.append(micro)
        return 100.0 + self.peak_per_row * micro, 1000.0


def test_selection_stops_at_the_first_b_over_budget():
    prober = _Known(1.0)
    best, probes = micro_batch_finder.choose(prober, 96, budget_mb=150.0, smallest=4)
    assert best.micro_batch_size == 48 and best.num_micro_batches == 2
    assert prober.seen == [4, 6, 8, 12, 16, 24, 32, 48, 96]
    assert [p.fits for p in probes][-2:] == [True, False]
    assert micro_batch_finder.divisors(12) == [1, 2, 3, 4, 6, 12]


def test_bad_settings_name_their_binding():
    with pytest.raises(ValueError, match="find_micro_batch.budget_mb=50 is below what the probe "
                                         "at b = 4 peaked at"):
        micro_batch_finder.choose(_Known(20.0), 96, budget_mb=50.0, smallest=4)
    prober = _Known(20.0)
    with pytest.raises(ValueError, match="find_micro_batch.smallest=64 is above "
                                         "train.batch_size=32: no divisor"):
        micro_batch_finder.choose(prober, 32, budget_mb=5000.0, smallest=64)
    assert prober.seen == []  # refused before any probe
    with pytest.raises(ValueError, match="find_micro_batch.smallest"):
        micro_batch_finder.settings(smallest=0)
    with pytest.raises(ValueError, match="find_micro_batch.budget_mb"):
        micro_batch_finder.settings(budget_mb=-5)


def _spy_on_the_loop(monkeypatch):
    """Records (model, callbacks) of every ``CustomLoop.fit_from``: the loop every run trains in."""
    calls = []
    original = custom_loop.CustomLoop.fit_from

    def fit_from(self, *args, **kwargs):
        calls.append((self.model, list(kwargs.get("callbacks", ()))))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(custom_loop.CustomLoop, "fit_from", fit_from)
    return calls


DIGITS = ["gin/experiments/digits_mlp.gin", "train.batch_size = 64", "train.verbose = 0"]


def _launch(files_and_bindings, output_dir):
    files = [f for f in files_and_bindings if f.endswith(".gin")]
    bindings = [b for b in files_and_bindings if not b.endswith(".gin")]
    return launch.launch(files, bindings, output_dir=str(output_dir), print_fn=lambda *_: None)


@pytest.mark.slow
def test_a_probe_trains_through_the_loop_and_model_of_a_real_run(tmp_path, monkeypatch):
    """One probe, in this process: the same loop class and model class as a real run of the same
    configuration, at b = the probe's; its examples/s is the clock's rows over the loop's timed
    calls; it writes its ``ProbeResult`` to the file it was given and no run directory."""
    calls = _spy_on_the_loop(monkeypatch)
    _launch(DIGITS + ["train.epochs = 1"], tmp_path / "run")
    ((run_model, _),) = calls
    result_file = tmp_path / "probe.json"
    (probed,) = _launch(DIGITS + ["gin/tools/find_micro_batch.gin", "find_micro_batch.probe = 16",
                                  "find_micro_batch.updates = 2",
                                  f"find_micro_batch.result_file = '{result_file}'"],
                        tmp_path / "probe_runs")
    ((probe_model, callbacks),) = calls[1:]
    assert type(probe_model) is type(run_model)  # pylint: disable=unidiomatic-typecheck
    assert (run_model.micro_batch_size, probe_model.micro_batch_size) == (None, 16)
    (clock,) = [c for c in callbacks if isinstance(c, micro_batch_finder.LoopClock)]
    written = micro_batch_finder.ProbeResult.read(str(result_file))
    assert (written.micro_batch_size, written.num_micro_batches) == (16, 4)
    assert written.timed_updates == clock.timed_updates >= 2 and not written.out_of_memory
    assert written.examples_per_sec == pytest.approx(
        written.timed_updates * 64 / written.train_seconds)  # no epoch's ragged end was timed
    assert written.peak_mb > 0 and probed["examples_per_sec"] == written.examples_per_sec
    assert not os.path.exists(tmp_path / "probe_runs")


def test_the_clock_times_calls_after_the_first_and_counts_a_ragged_last_update():
    """Calls of 2 updates in an epoch of 5 whose last update holds 3 rows of B = 8: the first call
    is not timed, the epoch's start restarts the clock, and training stops once 4 are timed."""

    class Model:
        stop_training = False

    clock = micro_batch_finder.LoopClock(4, batch_size=8, last_batch_size=3)
    clock.set_model(Model())
    clock.set_params({"steps": 5})
    clock.on_epoch_begin(0)
    clock.on_train_batch_end(1)  # updates 1-2: tracing, not timed
    clock.on_train_batch_end(3)
    assert (clock.timed_updates, clock.timed_rows) == (2, 16)
    clock.on_train_batch_end(4)  # the epoch's last update: 3 rows
    assert (clock.timed_updates, clock.timed_rows) == (3, 19) and not clock.model.stop_training
    clock.on_epoch_begin(1)
    clock.on_train_batch_end(1)
    assert (clock.timed_updates, clock.timed_rows) == (5, 35) and clock.model.stop_training
    summary = clock.summary()
    assert summary["examples_per_sec"] == pytest.approx(35 / summary["train_seconds"])
    assert micro_batch_finder.probe_epochs(4, updates_per_epoch=5) == 3


def test_candidates_suit_every_batch_the_schedule_reaches():
    """A schedule changes k, not b: b divides every stage's B (B = 24 then 40: b = 24 or 12
    would be refused by the run at its second stage), and an adaptive batch starts at k >= 2
    with a b that divides B_max."""
    from types import SimpleNamespace
    from experiments.inputs.adaptive_batch import adaptive_batch_size
    from experiments.inputs.batch_schedule import batch_size_schedule

    staged = SimpleNamespace(batch_size=24, batch_size_schedule=batch_size_schedule(
        boundaries=[2], batch_sizes=[40]))
    assert micro_batch_finder.reachable_batch_sizes(staged) == ((40,), False)
    assert micro_batch_finder.candidates(24, 1, (40,)) == [1, 2, 4, 8]
    adaptive = SimpleNamespace(batch_size=16, batch_size_schedule=adaptive_batch_size(
        max_batch_size=512))
    sizes, two_pieces = micro_batch_finder.reachable_batch_sizes(adaptive)
    assert (sizes, two_pieces) == ((512,), True)
    assert micro_batch_finder.candidates(16, 4, sizes, two_pieces) == [4, 8]  # not 16: k = 1
    prober = _Known(1.0)
    best, probes = micro_batch_finder.choose(prober, 24, budget_mb=1000.0, smallest=2,
                                             sizes=(40,))
    assert prober.seen == [2, 4, 8] and best.micro_batch_size == 8
    assert best.num_micro_batches == 5  # measured at the largest B, 40
    report = micro_batch_finder.format_report(best, probes, 24, 1000.0, 40)
    assert "Measured at B = 40" in report and "train.micro_batch_size = 8" in report
    with pytest.raises(ValueError, match="No micro-batch b suits train.batch_size=1 "):
        micro_batch_finder.choose(_Known(1.0), 1, budget_mb=1000.0, sizes=(512,),
                                  two_pieces=True)
    with pytest.raises(ValueError, match="above every micro-batch that suits train.batch_size=24 "
                                         "and the schedule's 40: none to probe"):
        micro_batch_finder.choose(_Known(1.0), 24, budget_mb=1000.0, smallest=12, sizes=(40,))


@pytest.mark.slow
def test_a_probe_the_run_refuses_gives_the_runs_own_message(tmp_path):
    """A configuration the run itself refuses (here B larger than the data) is the probe's
    refusal in one line, not a traceback of the finder."""
    config = tmp_path / "digits.gin"
    config.write_text("include 'gin/experiments/digits_mlp.gin'\n"
                      "include 'gin/tools/find_micro_batch.gin'\n"
                      "train.batch_size = 4096\nfind_micro_batch.updates = 1\n")
    prober = micro_batch_finder.ProcessProber(str(config))
    with pytest.raises(ValueError, match="the probe at b = 64 was refused: train.batch_size=4096 "
                                         "is larger than the"):
        prober.measure(64)


def test_a_probe_killed_outright_does_not_fit(monkeypatch):
    """The out-of-memory killer ends a probe with SIGKILL and no Python error: that b does not
    fit (the finder used to end with a RuntimeError)."""
    import signal
    import subprocess

    def killed(command, **kwargs):
        return subprocess.CompletedProcess(command, -signal.SIGKILL, "", "")

    monkeypatch.setattr(micro_batch_finder.subprocess, "run", killed)
    prober = micro_batch_finder.ProcessProber("unused.gin")
    best, probes = micro_batch_finder.find(prober, 64, budget_mb=None, smallest=64)
    assert best is None and [(p.micro_batch_size, p.fits) for p in probes] == [(64, False)]


def _never_probed(monkeypatch):
    """Makes any probe fail the test at once: a configuration refused before probing probes
    nothing (and the old finder, which probed it, fails fast instead of training)."""
    def measure(self, micro):
        raise AssertionError(f"b = {micro} was probed")

    monkeypatch.setattr(micro_batch_finder.ProcessProber, "measure", measure)


SWEEP_FINDER = """
include 'gin/experiments/digits_mlp.gin'
include 'gin/tools/find_micro_batch.gin'
train.batch_size = 64
find_micro_batch.budget_mb = 5000
sweep.variants = {'small': ['mlp.hidden_units = (8,)'], 'big': ['mlp.hidden_units = (64,)']}
"""


@pytest.mark.parametrize("group", ["sweep", "study"])
def test_the_finder_in_a_sweep_or_study_is_refused_before_anything_is_written(
        tmp_path, monkeypatch, group):
    """Each run of a sweep or study would probe (the variants then overwrote one result file,
    and the probes wrote sweep directories into the repository): the launch is refused with one
    line naming the binding, and nothing is written."""
    _never_probed(monkeypatch)
    config = tmp_path / "sweep.gin"
    config.write_text(SWEEP_FINDER)
    files = [str(config)] if group == "sweep" else [
        "gin/studies/noise_at_target.gin", "gin/tools/find_micro_batch.gin"]
    binding = {"sweep": "sweep.variants", "study": "study.batch_sizes"}[group]
    with pytest.raises(launch.ConfigError, match=f"^train.mode = 'find_micro_batch' cannot run "
                                                 f"inside a sweep or a study, but {binding} is "
                                                 "bound: run the finder on one configuration"):
        launch.launch(files, ["find_micro_batch.budget_mb = 5000"],
                      output_dir=str(tmp_path / "runs"), print_fn=lambda *_: None)
    assert not (tmp_path / "runs").exists()


def test_a_probe_starts_where_the_users_run_does_and_writes_into_scratch(tmp_path, monkeypatch):
    """A probe's process starts in the user's working directory, with the directories of the
    user's gin files searched for data files (``find_micro_batch.search_dirs``, restored in the
    probe) and, where the run imported from them, for modules (``PYTHONPATH``); its
    ``--output_dir`` is a scratch directory removed after it, never the repository's runs/."""
    from experiments.common import paths
    import subprocess
    import sys

    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", sys.path + [str(user)])
    paths.set_gin_files([str(user / "mine.gin"), os.path.join(paths.REPO_ROOT, "gin", "x.gin")])
    searched = paths.search_dirs()
    seen = {}

    def run(command, **kwargs):
        seen.update(command=command, **kwargs)
        (result,) = [c.split(" = ", 1)[1].strip("'") for c in command if "result_file" in c]
        micro_batch_finder.ProbeResult(8, 4, peak_mb=1.0, examples_per_sec=2.0).write(result)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(micro_batch_finder.subprocess, "run", run)
    prober = micro_batch_finder.ProcessProber("scratch/run.gin")
    assert prober.measure(8) == (1.0, 2.0)
    assert seen["cwd"] == str(tmp_path)
    (output,) = [c.split("=", 1)[1] for c in seen["command"] if c.startswith("--output_dir=")]
    assert not output.startswith(paths.REPO_ROOT) and not os.path.exists(output)
    assert str(user) in seen["env"]["PYTHONPATH"].split(os.pathsep)
    (dirs,) = [c for c in seen["command"] if "find_micro_batch.search_dirs" in c]
    assert str(user) in dirs
    paths.set_gin_files(["scratch/run.gin"])  # what the probe's own parse leaves
    micro_batch_finder._search_beside(prober.search_dirs)  # pylint: disable=protected-access
    assert paths.search_dirs() == searched


OWN_MODEL = """
import keras
import gin


@gin.configurable
def finder_test_tiny_mlp(spec, width=16):
    return keras.Sequential([keras.Input(spec.input_shape),
                             keras.layers.Dense(width, activation="relu"),
                             keras.layers.Dense(spec.num_outputs, activation="softmax")])
"""

OWN_GIN = """
include 'gin/base.gin'
include 'gin/data/digits.gin'
import finder_test_models
digits.path = 'my_digits.npz'
train.model_fn = @finder_test_tiny_mlp
train.batch_size = 32
"""


@pytest.mark.slow
def test_the_finder_runs_the_readmes_own_model_workflow(tmp_path):
    """README "Your own model": a module and a data file beside the user's gin file, launched
    from another directory; the probes import that module and find that file as the user's run
    does (they ran in the repository, with their gin file in a scratch directory, and failed)."""
    import shutil
    import subprocess
    import sys
    from experiments.common import paths

    user = tmp_path / "user"
    user.mkdir()
    (user / "finder_test_models.py").write_text(OWN_MODEL)
    (user / "mine.gin").write_text(OWN_GIN)
    shutil.copy(os.path.join(paths.REPO_ROOT, "data", "digits.npz"), user / "my_digits.npz")
    process = subprocess.run(
        [sys.executable, os.path.join(paths.REPO_ROOT, "main.py"), "--gin_file=user/mine.gin",
         "--gin_file=gin/tools/find_micro_batch.gin", "--gin_bindings=find_micro_batch.budget_mb"
         " = 5000", "--gin_bindings=find_micro_batch.updates = 1",
         "--gin_bindings=find_micro_batch.smallest = 32", f"--output_dir={tmp_path / 'runs'}"],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    assert "train.micro_batch_size = 32" in process.stdout
    assert sorted(os.listdir(tmp_path)) == ["user"] and len(os.listdir(user)) == 3


SCHEDULE = ["train.batch_size_schedule = @batch_size_schedule()",
            "batch_size_schedule.boundaries = [1]"]


def test_the_check_builds_the_runs_plan_at_each_b_and_gives_its_refusals(tmp_path):
    """The check (``find_micro_batch.check``, one process before any probe) builds the run's own
    plan at each b with the schedule and AdaScale as bound: what the run refuses, in its own
    words (a stage's B larger than the data named as that stage, not as train.batch_size; an
    adaptive batch's B_max; k = 1 where AdaScale needs the noise scale)."""
    digits = ["gin/experiments/digits_mlp.gin", "gin/tools/find_micro_batch.gin",
              "train.batch_size = 64", "train.verbose = 0", "find_micro_batch.check = (32, 64)"]
    cases = [
        (SCHEDULE + ["batch_size_schedule.batch_sizes = [4096]"],
         r"batch_size_schedule: stage 1 \(from epoch 1\) has B=4096, larger than the", (32, 64)),
        (["train.batch_size_schedule = @adaptive_batch_size()",
          "adaptive_batch_size.max_batch_size = 4096"],
         "adaptive_batch_size.max_batch_size=4096 is larger than the", (32, 64)),
        (["train.learning_rate_scaling = @adascale()", "adascale.reference_batch_size = 16"],
         r"train.learning_rate_scaling = @adascale\(\) at B = 64, .* is one micro-batch", (64,)),
    ]
    for bindings, message, refused in cases:
        (checked,) = _launch(digits + bindings, tmp_path / "runs")
        assert tuple(checked["refused"]) == refused
        assert all(re.match(message, m) for m in checked["refused"].values())
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_schedule_the_run_refuses_ends_the_finder_with_the_runs_message(tmp_path, monkeypatch):
    """A shrinking schedule: the finder printed a table and bindings the run then refused; now
    the run's own refusal, before any probe."""
    _never_probed(monkeypatch)
    with pytest.raises(ValueError, match="batch_size_schedule: stage 1 .* has B=32, not larger "
                                         "than the stage before it"):
        _launch(DIGITS + ["gin/tools/find_micro_batch.gin", "find_micro_batch.budget_mb = 5000",
                          "find_micro_batch.smallest = 16", "batch_size_schedule.batch_sizes = "
                          "[32]"] + SCHEDULE, tmp_path / "runs")


@pytest.mark.slow
def test_with_adascale_the_finder_leaves_out_the_b_the_run_refuses(tmp_path, monkeypatch):
    """AdaScale at B = 64 tuned at B_0 = 16 needs the noise scale, so k >= 2: b = 64 is not
    probed (it was, and was picked) and the report says why."""
    seen = []

    def measure(self, micro):
        seen.append(micro)
        return 100.0, 1000.0

    monkeypatch.setattr(micro_batch_finder.ProcessProber, "measure", measure)
    (found,) = _launch(DIGITS + ["gin/tools/find_micro_batch.gin",
                                 "find_micro_batch.budget_mb = 5000",
                                 "find_micro_batch.smallest = 32",
                                 "train.learning_rate_scaling = @adascale()",
                                 "adascale.reference_batch_size = 16"], tmp_path / "runs")
    assert seen == [32] and found["micro_batch_size"] == 32
    assert "Not probed: b = 64, which the run refuses: train.learning_rate_scaling" in \
        found["report"]


class _StoppedBy(KeyboardInterrupt):
    """What main.py raises on SIGTERM: a KeyboardInterrupt carrying the signal."""

    def __init__(self, signum):
        super().__init__(f"signal {signum}")
        self.signum = signum


@pytest.mark.parametrize("stop, status", [(KeyboardInterrupt(), 130), (_StoppedBy(15), 143)])
def test_a_stopped_finder_shows_its_rows_and_exits_without_a_resume_hint(monkeypatch, capsys,
                                                                        stop, status):
    """Ctrl-C or SIGTERM during the second probe: the first row and "nothing was written", the
    status 128 + the signal (the launcher's "relaunch with the same --run_name" was printed,
    and the measured rows were lost)."""
    from types import SimpleNamespace

    class Prober:
        def __init__(self, config_path):
            self.calls = 0

        def check(self, micros):
            return {}

        def measure(self, micro):
            self.calls += 1
            if self.calls == 2:
                raise stop
            return 700.0, 5000.0

    monkeypatch.setattr(micro_batch_finder, "ProcessProber", Prober)
    monkeypatch.setattr(micro_batch_finder, "_has_gpu", lambda: False)
    data = SimpleNamespace(batch_size=64, batch_size_schedule=None)
    finder = micro_batch_finder.FinderSettings(budget_mb=5000.0, smallest=16, updates=1,
                                               probe=None, result_file=None)
    try:
        with pytest.raises(SystemExit) as ended:
            micro_batch_finder.run(SimpleNamespace(data=data), "", SimpleNamespace(finder=finder))
    except KeyboardInterrupt:
        pytest.fail("the stop reached the launcher (its resume hint; the rows lost)")
    assert ended.value.code == status
    out, err = capsys.readouterr()
    assert "| 16 | 4 | 700.0 | 5000 | yes |" in out and "Stopped before the probing ended" in out
    assert "stopped; nothing was written" in err and "relaunch" not in err


def test_a_variant_that_binds_the_finder_is_refused_before_anything_is_written(
        tmp_path, monkeypatch):
    """The launcher's check reads the base configuration; a variant's own ``train.mode``
    binding was refused only when its run started, after the sweep's directory existed."""
    _never_probed(monkeypatch)
    with pytest.raises(launch.ConfigError, match="In sweep variant 'finder': train.mode = "
                                                 "'find_micro_batch' cannot run inside a sweep"):
        launch.launch(["gin/experiments/digits_mlp.gin"], [
            "sweep.variants = {'plain': [], 'finder': [\"train.mode = 'find_micro_batch'\", "
            "'find_micro_batch.budget_mb = 5000']}"],
            output_dir=str(tmp_path / "runs"), print_fn=lambda *_: None)
    assert not (tmp_path / "runs").exists()
