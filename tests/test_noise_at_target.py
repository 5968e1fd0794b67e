"""B_simple at a study's target: the pooling against hand-built runs, and the shipped
known-answer study (isotropic linear regression) against its closed form."""

import json
import os

import numpy as np
import pytest

from experiments import launch
from experiments.analysis import answers, noise_at_target, study_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(name, curve, raw, status="finished"):
    return {"name": name, "status": status, "curve": {"val_loss": curve}, "noise_raw": raw}


def test_crossing_is_interpolated_between_evaluations():
    curve = [[0, 1.0], [10, 0.6], [20, 0.2]]
    assert noise_at_target.crossing_update(curve, 0.4, "min") == pytest.approx(15.0)
    assert noise_at_target.crossing_update(curve, 0.1, "min") is None
    assert noise_at_target.crossing_update([[0, 0.1], [5, 0.5]], 0.3, "max") == \
        pytest.approx(2.5)


def test_pools_only_estimates_near_each_runs_crossing():
    """Two runs cross the target at updates 100 and 200; only raw estimates within 10% of the
    crossing (one update earlier: a row logged at u is the gradient at the weights of u - 1)
    count; a run that never reaches the target and a failed run are left out."""
    def raw(around, g2_near, tr_near):
        rows = []
        for u in range(2, 400, 2):
            near = abs((u - 1) - around) <= 0.1 * around
            rows.append([u, g2_near if near else 100.0, tr_near if near else 1.0, 16, 2])
        return rows

    runs = [
        _run("a", [[0, 2.0], [100, 0.4], [200, 0.1]], raw(100, 1.0, 30.0)),
        _run("b", [[0, 2.0], [200, 0.4], [400, 0.1]], raw(200, 2.0, 60.0)),
        _run("never", [[0, 2.0], [400, 1.0]], raw(100, 50.0, 1.0)),
        _run("failed", [[0, 2.0], [100, 0.4]], raw(100, 50.0, 1.0), status="failed"),
    ]
    out = noise_at_target.pooled_b_simple(runs, 0.4, "val_loss", "min")
    assert out["num_runs"] == 2 and out["num_runs_outside_window"] == 0
    assert "within 10% of the update where each reached the target" in out["note"]
    assert out["b_simple"] == pytest.approx(30.0)  # (30 n_a + 60 n_b) / (1 n_a + 2 n_b)
    low, high = out["interval"]
    assert low <= 30.0 <= high
    none = noise_at_target.pooled_b_simple(runs[2:3], 0.4, "val_loss", "min")
    assert none["b_simple"] is None and none["reason"] == "no_crossing"
    assert none["note"] == "no finished run reached the target"
    unlogged = noise_at_target.pooled_b_simple([_run("a", runs[0]["curve"]["val_loss"], [])],
                                               0.4, "val_loss", "min")
    assert unlogged["reason"] == "no_raw" and "raw" in unlogged["note"]


def test_note_counts_runs_read_outside_the_window():
    """Three runs cross at update 100 (window +-10); two logged rows only at updates 1 and 2000
    (gradients at 0 and 1999), one also at 101 (gradient at 100). The two far runs' nearest rows
    are used, and the note must say so, with how far they lie, not "within 10%" of all."""
    curve = [[50, 0.5], [150, 1.0]]
    far = [[1, 1.0, 10.0, 32, 2], [2000, 0.01, 10.0, 32, 2]]
    runs = [{"status": "finished", "curve": {"val_accuracy": curve}, "noise_raw": raw}
            for raw in (far, far, far + [[101, 0.5, 10.0, 32, 2]])]
    out = noise_at_target.pooled_b_simple(runs, target=0.75)
    assert out["num_runs"] == 3 and out["num_runs_outside_window"] == 2
    assert out["num_estimates"] == 5
    assert "2 of 3 run(s) had no logged estimate within 10% of their crossing" in out["note"]
    assert "up to 1899 updates away" in out["note"]
    assert "where each reached" not in out["note"]


@pytest.mark.slow
def test_study_report_b_simple_at_target_matches_closed_form(tmp_path):
    """The shipped known-answer study, trimmed to 8 runs: isotropic regression (d = 10, s = 0.5)
    trained by SGD from w = 0 (|delta|^2 = |w*|^2, about 10) to a validation loss of 0.35, i.e.
    |delta|^2 = 0.1; there B_simple = (d + 1) + s^2 d / |delta|^2 = 36. The report's pooled
    value is within 25% of it."""
    outcome = launch.launch(
        [os.path.join(REPO, "gin/studies/noise_at_target.gin")],
        ["study.batch_sizes = [16, 64]", "study.seeds = [0, 1]", "train.verbose = 0"],
        output_dir=str(tmp_path), print_fn=lambda *_: None, run_name="t")
    with open(os.path.join(outcome["study_dir"], "report.json")) as handle:
        report = json.load(handle)
    d, s, delta_sq = 10, 0.5, 0.35 - 0.5 ** 2
    expected = (d + 1) + s * s * d / delta_sq
    assert report["b_simple_num_runs"] == 8
    np.testing.assert_allclose(report["b_simple_at_target"], expected, rtol=0.25)
    low, high = report["b_simple_interval"]
    assert low < report["b_simple_at_target"] < high


def test_the_report_gives_no_lagging_number_where_the_raw_estimates_give_none():
    """One run at the target whose raw estimates' mean |G|^2 is <= 0 (the other at k = 1 logs
    none): the report says B_simple is undefined there, not the smoothed curve's 12 (which lags
    the truth); and when no run reaches the target it gives no value "near the target"."""
    curve = [[0, 0.1], [100, 0.5], [200, 0.9]]

    def record(name, batch, raw, b_simple_curve):
        return {"name": name, "status": "finished", "batch_size": batch, "learning_rate": 0.1,
                "seed": 0, "rule": None, "curve": {"val_accuracy": curve}, "noise_raw": raw,
                "b_simple_curve": b_simple_curve,
                "b_simple": b_simple_curve[-1][1] if b_simple_curve else None,
                "updates": 200, "final": {"val_accuracy": 0.9}}

    raw = [[u, g, 40.0, 64, 2] for u, g in
           zip(range(142, 160, 2), [0.5, -0.8, 0.3, -0.6, 0.1, -0.2, 0.2, -0.1, 0.1])]
    smoothed = [[u, 12.0] for u in range(10, 201, 10)]
    records = [record("a", 32, None, None), record("b", 64, raw, smoothed)]
    summary = study_report.summarize(records, target=0.7, metric="val_accuracy")
    assert summary["b_simple"] is None
    assert summary["b_simple_info"]["note"].startswith("B_simple undefined near the target")
    assert not any("≈ 12" in s for s in answers.sentences(summary))
    unreached = study_report.summarize(records, target=0.95, metric="val_accuracy")
    assert unreached["b_simple"] is None
    assert unreached["b_simple_info"]["note"] == "no finished run reached the target"
