"""The analysis layer: steps to result, the S(B) and power-law fits, figures and report.md.

Pure functions over run records, so the tests build records from known curves (S(B) with
S_min = 1000, B_crit = 200; best learning rate proportional to sqrt(B)) and check that the
analysis gives those numbers back. No TensorFlow is needed.
"""

import math
import os

import numpy as np
import pytest
from scipy import optimize

from experiments.analysis import fits, plots
from experiments.analysis.steps_to_result import steps_to_target
from experiments.analysis.study_statistics import best_per_batch_size
from experiments.analysis.study_report import sentences, summarize, write_report

S_MIN, B_CRIT = 1000.0, 200.0
BATCH_SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]
TARGET = 0.8
LR_FACTORS = (0.5, 1.0, 2.0)
ERROR = "NaN loss at update 37: the run diverged"


def true_steps(batch_size):
    return S_MIN * (1.0 + B_CRIT / batch_size)


def best_lr(batch_size):
    return 0.01 * (batch_size / 8) ** 0.5


def make_record(batch_size, lr_factor, seed=0, status="finished", error=None):
    """A run whose accuracy rises linearly to TARGET at S(B) updates when its lr is the best one,
    later (by a factor per octave of lr mistuning) otherwise, then plateaus below 0.95."""
    mistune = abs(math.log2(lr_factor))
    cross = true_steps(batch_size) * (1.0 + mistune)
    plateau = 0.95 - 0.02 * mistune - 0.005 * math.log2(batch_size / 8)
    acc = [[round(cross * j / 20), min(TARGET * j / 20, plateau)] for j in range(1, 41)]
    loss = [[u, 1.0 - a] for u, a in acc]
    examples_per_sec = 100.0 * batch_size ** 0.7
    record = {
        "name": f"b{batch_size}_lr{lr_factor}_s{seed}", "status": status, "error": error,
        "batch_size": batch_size, "micro_batch_size": None,
        "learning_rate": best_lr(batch_size) * lr_factor, "rule": "none", "seed": seed,
        "epochs": 5, "curve": {"val_accuracy": acc[::-1], "val_loss": loss},
        "final": {"val_accuracy": plateau, "val_loss": 1.0 - plateau, "loss": 0.9 - plateau,
                  "gap_loss": 0.1, "gap_accuracy": -0.01 * math.log2(batch_size)},
        "b_simple": 150.0, "b_simple_curve": [[1, 150.0], [acc[-1][0], 150.0]],
        "examples_per_sec": examples_per_sec,
        "wall_time_s": acc[-1][0] * batch_size / examples_per_sec, "updates": acc[-1][0]}
    if status == "failed":
        record.update(curve={"val_accuracy": acc[:3]}, final={}, b_simple=None,
                      b_simple_curve=None)
    return record


def study_records():
    records = [make_record(b, f) for b in BATCH_SIZES for f in LR_FACTORS]
    records.append(make_record(1024, 8.0, status="failed", error=ERROR))
    return records


def is_png(path):
    with open(path, "rb") as f:
        return f.read(4) == b"\x89PNG"


# ---- steps to target ------------------------------------------------------------------------


def test_steps_to_target_max_min_unsorted_and_never():
    curve = [(300, 0.9), (100, 0.5), (200, 0.85), (400, 0.95)]
    assert steps_to_target(curve, 0.85) == 200
    assert steps_to_target(curve, 0.9, mode="max") == 300
    assert steps_to_target(curve, 0.99) is None
    loss = [(30, 0.4), (10, 1.2), (20, 0.7), (40, 0.3)]
    assert steps_to_target(loss, 0.7, mode="min") == 20
    assert steps_to_target(loss, 0.35, mode="min") == 40
    assert steps_to_target(loss, 0.1, mode="min") is None
    assert steps_to_target([], 0.5) is None
    assert steps_to_target([(1, float("nan")), (2, 0.6)], 0.5) == 2
    with pytest.raises(ValueError, match="mode"):
        steps_to_target(curve, 0.5, mode="maximum")


def test_best_per_batch_size_fewest_steps_ties_to_lower_lr_and_ignores_failed():
    def run(name, b, lr, reach_at, status="finished"):
        return {"name": name, "status": status, "batch_size": b, "learning_rate": lr,
                "curve": {"val_accuracy": [[reach_at - 50, 0.1], [reach_at, 0.9]]}}
    records = [run("slow", 32, 0.1, 500), run("fast", 32, 0.2, 300), run("fast_hi", 32, 0.4, 300),
               run("failed", 32, 0.3, 100, status="failed"), run("b64", 64, 0.1, 200),
               {"name": "never", "status": "finished", "batch_size": 128, "learning_rate": 0.1,
                "curve": {"val_accuracy": [[100, 0.2]]}}]
    best = best_per_batch_size(records, 0.9, "max")
    assert best[32]["steps"] == 300 and best[32]["learning_rate"] == 0.2
    assert [r["name"] for r in best[32]["runs"]] == ["fast"] and best[32]["at_edge"] is None
    assert best[32]["num_runs"] == 3  # the failed run is not counted
    assert best[64]["steps"] == 200
    assert best[128]["steps"] is None and best[128]["censored"] and best[128]["budget"] == 100


# ---- fits -----------------------------------------------------------------------------------


def test_steps_fit_recovers_known_noiseless_values():
    steps = [true_steps(b) for b in BATCH_SIZES]
    fit = fits.fit_steps_to_result(BATCH_SIZES, steps)
    assert fit.s_min == pytest.approx(S_MIN, rel=0.01)
    assert fit.b_crit == pytest.approx(B_CRIT, rel=0.01)
    assert math.isfinite(fit.s_min_stderr) and math.isfinite(fit.b_crit_stderr)
    assert fit.num_points == len(BATCH_SIZES) and fit.residual_rms < 1e-6


def test_steps_fit_with_five_percent_noise():
    rng = np.random.default_rng(0)
    batch_sizes = np.repeat(BATCH_SIZES, 2)
    steps = np.array([true_steps(b) for b in batch_sizes]) * np.exp(
        rng.normal(0.0, 0.05, batch_sizes.size))
    fit = fits.fit_steps_to_result(batch_sizes, steps)
    assert fit.s_min == pytest.approx(S_MIN, rel=0.15)
    assert fit.b_crit == pytest.approx(B_CRIT, rel=0.15)
    assert abs(fit.b_crit - B_CRIT) < 4 * fit.b_crit_stderr
    assert 0.02 < fit.residual_rms < 0.1


def test_steps_fit_needs_three_points():
    fit = fits.fit_steps_to_result([16, 128, 1024], [true_steps(b) for b in (16, 128, 1024)])
    assert fit.b_crit == pytest.approx(B_CRIT, rel=0.01)
    with pytest.raises(ValueError, match="at least 3"):
        fits.fit_steps_to_result([16, 128], [true_steps(16), true_steps(128)])
    with pytest.raises(ValueError, match="positive"):
        fits.fit_steps_to_result([16, 128, 256], [100, 0, 50])


@pytest.mark.parametrize("exponent", [0.5, 1.0])
def test_power_law_recovers_exponent(exponent):
    x = np.array([8, 16, 32, 64, 128, 256])
    fit = fits.fit_power_law(x, 0.003 * x ** exponent)
    assert fit.exponent == pytest.approx(exponent, abs=1e-9)
    assert fit.prefactor == pytest.approx(0.003, rel=1e-9)
    assert fit.exponent_stderr < 1e-6 and fit.num_points == 6


def test_power_law_two_points_has_nan_stderr_and_one_raises():
    fit = fits.fit_power_law([10, 40], [1.0, 2.0])
    assert fit.exponent == pytest.approx(0.5) and math.isnan(fit.exponent_stderr)
    with pytest.raises(ValueError, match="at least 2"):
        fits.fit_power_law([10], [1.0])


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.3, 0.45])
def test_doubling_saves_closed_form_matches_numeric_root(fraction):
    fit = fits.fit_steps_to_result(BATCH_SIZES, [true_steps(b) for b in BATCH_SIZES])
    numeric = optimize.brentq(lambda b: fits.scaling_efficiency(fit, b) - fraction, 1e-6, 1e9,
                              xtol=1e-10)
    closed = fits.batch_size_where_doubling_saves(fit, fraction)
    assert closed == pytest.approx(numeric, rel=1e-6)
    assert fits.scaling_efficiency(fit, closed * 1.01) < fraction < fits.scaling_efficiency(
        fit, closed * 0.99)


def test_scaling_efficiency_limits_and_bad_fractions():
    fit = fits.StepsFit(S_MIN, B_CRIT, 0.0, 0.0, 0.0, 3)
    assert fits.scaling_efficiency(fit, B_CRIT) == pytest.approx(0.25)
    assert fits.scaling_efficiency(fit, 1e-3) == pytest.approx(0.5, abs=1e-5)
    assert fits.batch_size_where_doubling_saves(fit, 0.5) == 0.0
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            fits.batch_size_where_doubling_saves(fit, bad)


# ---- figures and report ---------------------------------------------------------------------


def test_write_report_on_synthetic_study(tmp_path):
    result = write_report(str(tmp_path), study_records(), "synthetic", target=TARGET)
    with open(result["report"], encoding="utf-8") as f:
        report = f.read()
    assert set(result["figures"]) == {"steps_to_result", "final_metric", "generalization_gap",
                                      "best_lr", "throughput"}
    for path in result["figures"].values():
        assert os.path.dirname(path) == str(tmp_path) and is_png(path)
        assert f"]({os.path.basename(path)})" in report
    summary = result["summary"]
    assert summary["steps_fit"].b_crit == pytest.approx(B_CRIT, rel=0.01)
    assert summary["steps_fit"].s_min == pytest.approx(S_MIN, rel=0.01)
    assert summary["lr_fit"].exponent == pytest.approx(0.5, abs=1e-6)
    assert summary["b_simple"] == 150.0
    text = sentences(summary)
    assert any("B^0.50" in s and "square-root" in s for s in text)
    assert any("B_crit ≈ 200" in s and "B_simple ≈ 150" in s for s in text)
    # one seed per batch size: no verdict on "does batch size hurt" (it was "Yes" from 1 seed)
    assert any(s.startswith("Cannot tell whether the largest batch size hurts")
               and "not measured with several seeds" in s for s in text)
    assert any("RMS misfit 0.000 in log steps" in s for s in text)
    assert all(s.endswith(".png)") for s in text[:-1]) and "1 run(s) failed" in text[-1]
    assert ERROR in report and "| failed |" in report and text[0] in report
    assert report.count("\n| b") == len(study_records())


def test_report_default_target_and_min_mode(tmp_path):
    summary = summarize(study_records(), mode="min", metric="val_loss")
    worst_best_loss = max(1.0 - (0.95 - 0.005 * math.log2(b / 8)) for b in BATCH_SIZES)
    assert summary["target"] == pytest.approx(worst_best_loss)
    assert all(v["steps"] is not None for v in summary["best"].values())
    assert summary["gap_key"] == "gap_loss"
    result = write_report(str(tmp_path), study_records(), "loss", mode="min", metric="val_loss")
    assert all(is_png(p) for p in result["figures"].values())


def test_report_with_one_batch_size_and_target_never_reached(tmp_path):
    records = [make_record(64, f) for f in LR_FACTORS]
    result = write_report(str(tmp_path), records, "one batch", target=0.99)
    text = sentences(result["summary"])
    assert result["summary"]["steps_fit"] is None and result["summary"]["lr_fit"] is None
    assert any("no run reached the target val_accuracy >= 0.99" in s for s in text)
    assert any("only one batch size (B = 64)" in s for s in text)
    assert all(is_png(p) for p in result["figures"].values())
    assert os.path.exists(result["report"])


def test_report_when_every_run_failed(tmp_path):
    records = [make_record(b, 1.0, status="failed", error=f"OOM at B={b}") for b in (64, 128)]
    result = write_report(str(tmp_path), records, "all failed")
    assert result["summary"]["target"] is None
    with open(result["report"], encoding="utf-8") as f:
        report = f.read()
    assert "OOM at B=64" in report and "OOM at B=128" in report
    assert all(is_png(p) for p in result["figures"].values())


def test_user_strings_in_the_report_are_text_not_markup(tmp_path):
    hostile = "data/<img src=x onerror=alert(1)></td>|x.csv"
    records = [make_record(b, 1.0, status="failed", error=f"FileNotFoundError: {hostile}")
               for b in (64, 128)]
    records[0]["name"] = "<script>alert(1)</script>"
    result = write_report(str(tmp_path), records, "study <b>bold</b>")
    with open(result["report"], encoding="utf-8") as f:
        report = f.read()
    for markup in ("<img", "</td>", "<script>", "<b>"):
        assert markup not in report
    assert "&lt;img src=x onerror=alert(1)&gt;&lt;/td&gt;\\|x.csv" in report
    assert "# Batch-size study: study &lt;b&gt;bold&lt;/b&gt;" in report


def test_plot_functions_return_their_paths(tmp_path):
    fit = fits.fit_power_law([8, 64], [0.01, 0.03])
    path = plots.plot_best_lr([8, 64], [0.01, 0.03], fit, str(tmp_path / "sub" / "lr.png"))
    assert path == str(tmp_path / "sub" / "lr.png") and is_png(path)
    assert is_png(plots.plot_throughput([], str(tmp_path / "empty.png")))


def test_lr_sentence_flags_grid_edges_and_unsearched_rules():
    edge = summarize([make_record(b, f) for b in (16, 64, 256) for f in (1.0, 2.0)],
                     target=TARGET)
    assert any("edge of those tried" in s for s in sentences(edge))
    ruled = [dict(make_record(b, 1.0), rule="sqrt") for b in (16, 64, 256)]
    text = sentences(summarize(ruled, target=TARGET))
    assert any("configured rule" in s for s in text)
    assert not any("best learning rate tried" in s for s in text)


def test_b_simple_is_read_where_each_best_run_reached_the_target():
    """B_simple grows during training: without noise_at_target the report's fallback compares
    B_crit with its value at the update each batch size's best runs reached the target."""
    from experiments.analysis.steps_to_result import value_at

    def run(name, batch, reach, b_simple_curve):
        return {"name": name, "status": "finished", "batch_size": batch, "learning_rate": 0.1,
                "curve": {"val_accuracy": [[reach - 1, 0.5], [reach, 0.95]]},
                "final": {"val_accuracy": 0.97}, "b_simple": b_simple_curve[-1][1],
                "b_simple_curve": b_simple_curve}

    records = [run("b16", 16, 40, [[10, 20.0], [40, 50.0], [200, 400.0]]),
               run("b64", 64, 20, [[10, 30.0], [20, 60.0], [200, 500.0]]),
               run("b256", 256, 10, [[5, 70.0], [10, 70.0], [200, 600.0]])]
    summary = summarize(records, target=0.95, mode="max", metric="val_accuracy")
    assert summary["b_simple"] == 60.0  # median of 50, 60, 70 (at updates 40, 20, 10)
    assert "reached the target" in summary["b_simple_info"]["note"]
    assert value_at([[5, 1.0], [10, 2.0]], 7) == 1.0 and value_at([[5, 1.0]], 2) == 1.0
    assert value_at([], 3) is None
    without = [dict(r, b_simple_curve=None) for r in records]
    # a value at the end of training is not one at the target: none is given
    assert summarize(without, target=0.95)["b_simple"] is None


def test_a_batch_that_changed_and_came_back_is_labelled_as_changed():
    """An adaptive run that went 16 -> 40 -> 16 is not a run at B = 16 in the tables."""
    from experiments.analysis.tables import batch_label
    assert batch_label({"batch_size": 16}) == 16
    assert batch_label({"batch_size": 16, "final_batch_size": 48,
                        "batch_size_stages": [{"batch_size": 16}, {"batch_size": 48}]}) == "16->48"
    assert batch_label({"batch_size": 16, "final_batch_size": 16,
                        "batch_size_stages": [{"batch_size": 16}, {"batch_size": 40},
                                              {"batch_size": 16}]}) == "16->16"
    assert batch_label({"batch_size": 16, "final_batch_size": 16,
                        "batch_size_stages": [{"batch_size": 16}]}) == 16
    # stream data: B stays the 8 streams, the windows per update grow
    assert batch_label({"batch_size": 8, "final_batch_size": 8, "window_length": 25,
                        "num_micro_batches": 1, "final_num_micro_batches": 2,
                        "batch_size_stages": [{"batch_size": 8}, {"batch_size": 8}]}) == \
        "8 (k 1->2)"
