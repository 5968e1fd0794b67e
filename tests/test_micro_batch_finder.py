"""The micro-batch finder: it measures each b in a process of its own (the run's configuration
with ``find_micro_batch.probe = b``; its ``ProbeResult`` is written to
``find_micro_batch.result_file``) through the plan, model and loop of a real run, and picks the
largest b whose measured peak memory is within the budget."""

import os

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
