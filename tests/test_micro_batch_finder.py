"""The micro-batch finder: it measures each b in a process of its own (the run's configuration
with ``find_micro_batch.probe = b``) and picks the largest b whose measured peak memory is within
the budget."""

import pytest

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
    with pytest.raises(ValueError, match="find_micro_batch.budget_mb=50 is below the memory of "
                                         "one micro-batch of 4 rows"):
        micro_batch_finder.choose(_Known(20.0), 96, budget_mb=50.0, smallest=4)
    with pytest.raises(ValueError, match="find_micro_batch.smallest"):
        micro_batch_finder.settings(smallest=0)
    with pytest.raises(ValueError, match="find_micro_batch.budget_mb"):
        micro_batch_finder.settings(budget_mb=-5)
