"""The benchmark scripts keep working: each imports, the parts that wrap private pieces of the
runner and the loop run at a tiny size, and their verdicts say "met" only on a 95% interval.
No timing is asserted (BUILD.md: benchmarks measure, tests do not)."""

import glob
import importlib
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "benchmarks", "*.py"))))
def test_every_benchmark_imports(path):
    importlib.import_module(os.path.splitext(os.path.basename(path))[0])


def _table(text):
    """{first cell: [other cells]} of the markdown rows in ``text``."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow
def test_the_small_runs_breakdown_runs(tmp_path, capsys):
    """It wraps ``runner.make_callbacks`` (whose return value grew a third item on 2026-12-04
    and broke it) and the loop's private functions."""
    bench_small_runs = importlib.import_module("bench_small_runs")
    bench_small_runs.breakdown(str(tmp_path), epochs=3)
    rows = _table(capsys.readouterr().out)
    assert {"train calls", "validation (evaluate)", "epoch"} <= set(rows)
    assert any(name.startswith("hooks: ") for name in rows)


@pytest.mark.slow
def test_the_phase_table_counts_no_evaluation_after_training(tmp_path, capsys):
    """Validation is part of each epoch's end: the run's final evaluation after training is
    not counted in the "validation" row (it was, and that row came out above the epoch end
    holding it)."""
    bench_measurement = importlib.import_module("bench_measurement")
    setups = [(n, s) for n, s in bench_measurement.SETUPS.items() if "B=32 (k=1)" in n]
    bench_measurement.phase_table(setups, 3, 25, str(tmp_path))
    rows = _table(capsys.readouterr().out)
    for column in (0, 1):  # off, on
        assert float(rows["validation"][column]) <= \
            float(rows["epoch end (validation, hooks)"][column])


def test_a_paired_target_is_met_only_on_a_95_percent_interval():
    verdict = importlib.import_module("bench_measurement").paired_verdict
    within = (1.02, (1.01, 1.04), 0.959)
    assert verdict([within, within], 1.05) == "met"
    assert verdict([within, (1.02, (1.00, 1.07), 0.959)], 1.05).startswith("unclear (interval")
    assert verdict([(1.10, None, None), (1.10, None, None)], 1.05) == "not met"
    # one pair, or a handful whose whole range is a 50% interval: no evidence either way
    assert verdict([(1.02, None, None), (1.02, None, None)], 1.05).startswith(
        "unclear (no 95% interval")
    assert verdict([(1.02, (1.01, 1.03), 0.5), within], 1.05).startswith("unclear (no 95%")


def test_the_lstm_verdict_reports_the_pairs_in_the_slower_rhythm():
    note = importlib.import_module("bench_measurement").rhythm_note([1.02, 1.12, 0.93, 1.01])
    assert note.startswith("1 of 4 pairs above 1.07, 1 below 0.95")


def test_step_kinds_cells_state_a_level_under_95_percent():
    cell = importlib.import_module("bench_step_kinds").with_interval
    assert cell([2.0]) == "2.00"
    assert re.fullmatch(r"3\.00 \[1\.00, 5\.00\]<sub>94%</sub>", cell([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert "<sub>" not in cell([float(v) for v in range(20)])
