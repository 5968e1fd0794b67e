"""The report's answers claim no more than their numbers: a B_crit outside the sizes tried is a
bound, a U-shaped S(B) gets no B_crit, the fit's misfit is stated, per-B intervals over seeds say
their real level, and verdicts inside seed noise (or from single seeds) read "Cannot tell".

Synthetic run records with known curves (one lr per B); no TensorFlow.
"""

import json

import numpy as np
import pytest

from experiments.analysis import answers, fits
from experiments.analysis.study_report import report_json, summarize

SIZES = [8, 16, 32, 64, 128, 256, 512]


def run(b, cross, seed=0, acc=None, gap=None):
    """A finished run whose val_accuracy meets 0.75 at update ``cross`` (evaluated every 10)."""
    curve = [[u, 0.5 if u <= cross - 10 else min(1.0, 0.5 + 0.5 * (u - cross + 10) / 20)]
             for u in np.arange(10, cross + 60, 10.0)]
    final = {"val_accuracy": curve[-1][1] if acc is None else acc}
    if gap is not None:
        final["gap_accuracy"] = gap
    return {"name": f"b{b}_s{seed}", "status": "finished", "batch_size": b, "learning_rate": 0.1,
            "seed": seed, "curve": {"val_accuracy": curve}, "final": final,
            "updates": curve[-1][0]}


def curve_summary(steps, sizes=SIZES):
    return summarize([run(b, float(s)) for b, s in zip(sizes, steps)], target=0.75)


def noisy(s_min, b_crit, seed=1, noise=0.05):
    rng = np.random.default_rng(seed)
    return [s_min * (1 + b_crit / b) * np.exp(noise * rng.standard_normal()) for b in SIZES]


# ---- S(B) fit: bounds, misfit, rise -------------------------------------------------------


def test_b_crit_far_above_the_sizes_tried_is_a_bound_not_a_number():
    """True B_crit 20000 with B = 8 ... 512: the fit runs to its bound (B_crit ~1.7e9, S_min
    0.0005). The answer must say "no bend" with a lower bound, and state neither number."""
    s = curve_summary(noisy(40, 20000))
    pick = answers._pick_sentence(s)
    assert pick.startswith("No bend within B = 8–512: B_crit above ~")
    bound = s["steps_fit_checks"]["limits"].low
    assert 1000 < bound < 20000  # a bend below ~1000 would show; the truth is not excluded
    assert "B_crit ≈" not in pick and "S_min ≈" not in pick and "RMS misfit" in pick
    assert "not compared" in answers._noise_sentence(dict(s, b_simple=100.0))
    assert report_json(s)["b_crit_beyond"] == "above" and not report_json(s)["b_crit_reported"]


def test_b_crit_far_below_the_sizes_tried_is_a_bound_and_s_min_stays():
    s = curve_summary(noisy(400, 0.5))
    pick = answers._pick_sentence(s)
    assert pick.startswith("S(B) flat within B = 8–512: B_crit below ~")
    assert s["steps_fit_checks"]["limits"].high < 8 and "B_crit ≈" not in pick
    assert "S_min ≈ 399 [90% interval" in pick  # the floor itself is measured
    assert report_json(s)["b_crit_beyond"] == "below"


def test_b_crit_inside_the_range_keeps_its_number_interval_and_misfit():
    s = curve_summary(noisy(40, 64))
    pick = answers._pick_sentence(s)
    assert "B_crit ≈" in pick and "[90% interval" in pick and "(t intervals in log space)" in pick
    assert f"RMS misfit {s['steps_fit'].residual_rms:.3f} in log steps" in pick
    assert report_json(s)["b_crit_beyond"] is None and report_json(s)["b_crit_reported"]


def test_u_shaped_steps_get_no_b_crit():
    """S falls to B = 64 and rises again (residual RMS 0.545 in log units): the model only
    falls, so the answer flags the rise instead of stating B_crit."""
    s = curve_summary([2000, 1000, 500, 260, 300, 600, 1200])
    pick = answers._pick_sentence(s)
    assert "S(B) rises above B = 64" in pick and "B_crit is not reported as an answer" in pick
    assert "RMS misfit 0.545" in pick and "B_crit ≈" not in pick
    assert s["steps_fit_checks"]["rise_p"] < 0.01
    assert "not compared" in answers._noise_sentence(dict(s, b_simple=100.0))


def test_the_known_answer_nqm_keeps_its_b_crit_and_a_narrow_profile_set():
    """The shipped NQM study's measured S(B) (docs/studies.md: 13 sizes, B = 1 ... 4096, the
    floor at 10.1 where the fit says 9.4): its F-test against a rising curve reads p = 0.03, but
    S never climbs above its floor, so B_crit (93.0 [88.2, 98.1]; the exact steps give 94.2)
    stays the answer, and the profile set is that narrow too (it read [0, inf] when the set
    fell between two grid points)."""
    sizes = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    steps = [910.8, 463.6, 232.2, 116.6, 65.7, 34.3, 21.6, 16.2, 12.4, 10.8, 10.3, 10.1, 10.1]
    s = curve_summary(steps, sizes)
    assert s["steps_fit_checks"]["rise_p"] < answers.RISE_P  # the misfit the test alone sees
    pick = answers._pick_sentence(s)
    assert "rises" not in pick and "B_crit ≈ 93" in pick, pick
    limits = s["steps_fit_checks"]["limits"]
    assert 85 < limits.low < 93 < limits.high < 100, limits
    assert not limits.above and not limits.below


def test_rise_test_rarely_fires_on_falling_curves():
    """100 falling curves (B_crit 50, 15% noise, 7 sizes): the rise flag (p < 0.05) fires on at
    most 8 (3.7% of 300 such curves measured; 8 is 2.5 binomial sd above that)."""
    rng = np.random.default_rng(4)
    sizes = np.array(SIZES, dtype=float)
    fired = sum(fits.rise_p_value(sizes, 40 * (1 + 50 / sizes) * np.exp(
        0.15 * rng.standard_normal(sizes.size))) < answers.RISE_P for _ in range(100))
    assert fired <= 8, fired


def test_large_misfit_without_a_rise_is_flagged():
    zigzag = np.array(noisy(40, 64, noise=0.0)) * np.exp(0.35 * np.array([1, -1, 1, -1, 1, -1, 1]))
    s = curve_summary(zigzag)
    assert s["steps_fit"].residual_rms > answers.MISFIT_LIMIT
    assert "does not describe these S(B)" in answers._pick_sentence(s)


# ---- per-B intervals over seeds -----------------------------------------------------------


@pytest.mark.parametrize("num_seeds, level", [(2, 0.5), (3, 0.75), (4, 0.875), (5, 0.9375)])
def test_per_batch_size_interval_states_its_real_level(num_seeds, level):
    """The order-statistic interval holds the true median of 2000 seeded lognormal draws at the
    level it states (the old bootstrap said "90%" and held 51% / 75% / 85.5%)."""
    from experiments.analysis.study_statistics import median_interval

    rng = np.random.default_rng(num_seeds)
    hits = 0
    for _ in range(2000):
        (lo, hi), stated = median_interval(list(np.exp(0.15 * rng.standard_normal(num_seeds))))
        hits += lo <= 1.0 <= hi
    assert stated == pytest.approx(level) and abs(hits / 2000 - level) < 0.03


def test_report_json_and_text_say_the_per_batch_size_level():
    records = [run(b, 100 * (1 + 64 / b) * f, seed) for b in (8, 32, 128)
               for seed, f in enumerate((0.9, 1.0, 1.1))]
    s = summarize(records, target=0.75)
    entry = json.loads(json.dumps(report_json(s)))["per_batch_size"]["32"]
    assert entry["steps_interval_level"] == 0.75
    assert "holds it with probability 75% with 3 seeds" in answers._pick_sentence(s)


# ---- verdicts and seed noise --------------------------------------------------------------


def seeds(b, pairs):
    return [run(b, 50, s, acc, gap) for s, (acc, gap) in enumerate(pairs)]


def test_overlapping_seed_ranges_cannot_tell():
    records = (seeds(16, [(0.90, -0.02), (0.95, -0.05), (0.97, -0.08)])
               + seeds(512, [(0.89, -0.03), (0.92, -0.06), (0.96, -0.07)]))
    s = summarize(records, target=0.75)
    hurt, gap = answers._hurt_sentence(s), answers._gap_sentence(s)
    assert hurt.startswith("Cannot tell whether the largest batch size hurts") and "Yes" not in hurt
    assert "within seed noise" in hurt and "within seed noise" in gap
    assert "cannot be told" in gap and " grows with batch size:" not in gap


def test_a_resolved_change_below_the_threshold_is_said_as_measured():
    """4 seeds each, ranges apart (p = 1/35), B = 512 lower by 0.4%: not "about the same" but
    the difference, and that it is below what the report counts as a change."""
    records = (seeds(16, [(0.9710, -0.01), (0.9715, -0.01), (0.9720, -0.01), (0.9712, -0.01)])
               + seeds(512, [(0.9670, -0.01), (0.9675, -0.01), (0.9680, -0.01),
                             (0.9672, -0.01)]))
    hurt = answers._hurt_sentence(summarize(records, target=0.75))
    assert hurt.startswith("No, batch size does not hurt the model here beyond 0.5%")
    assert "worse (0.4%)" in hurt and "about the same" not in hurt


def test_single_seeds_cannot_tell():
    s = summarize([run(16, 50, 0, 0.950, -0.05), run(512, 50, 0, 0.945, -0.051)], target=0.75)
    hurt, gap = answers._hurt_sentence(s), answers._gap_sentence(s)
    assert hurt.startswith("Cannot tell") and "not measured with several seeds" in hurt
    assert "cannot be told" in gap and "not measured with several seeds" in gap


def test_separated_seed_ranges_give_a_verdict():
    records = (seeds(16, [(0.95, -0.01), (0.96, -0.02), (0.97, -0.015), (0.955, -0.012)])
               + seeds(512, [(0.85, -0.10), (0.88, -0.12), (0.90, -0.11), (0.86, -0.13)]))
    s = summarize(records, target=0.75)
    assert answers._hurt_sentence(s).startswith("Yes, the largest batch size hurts the model")
    assert " grows with batch size: " in answers._gap_sentence(s)


def test_separated_ranges_of_three_seeds_are_not_yet_a_verdict():
    """Ranges of 3 seeds each miss each other in 1 of 10 comparisons without any difference:
    too often for a Yes / No (with 2 seeds, 1 in 3)."""
    records = (seeds(16, [(0.95, -0.01), (0.96, -0.02), (0.97, -0.015)])
               + seeds(512, [(0.85, -0.10), (0.88, -0.12), (0.90, -0.11)]))
    s = summarize(records, target=0.75)
    hurt, gap = answers._hurt_sentence(s), answers._gap_sentence(s)
    assert hurt.startswith("Cannot tell whether the largest batch size hurts")
    assert "with probability 0.1 " in hurt and "cannot be told" in gap


def test_the_separation_p_value_is_the_rate_of_non_overlapping_ranges_without_a_difference():
    """2 n! m! / (n + m)! against draws from one distribution (seeded, 20000 per case)."""
    rng = np.random.default_rng(0)
    for n, m in [(2, 2), (3, 3), (3, 4), (4, 4), (2, 5)]:
        a, b = rng.normal(size=(20000, n)), rng.normal(size=(20000, m))
        apart = np.mean((a.max(1) < b.min(1)) | (b.max(1) < a.min(1)))
        assert abs(apart - answers.separation_p_value(n, m)) < 0.01, (n, m, apart)
    assert answers.separation_p_value(4, 4) <= answers.SEPARATION_P < \
        answers.separation_p_value(3, 4)


def test_a_largest_batch_size_that_diverged_is_named_not_dropped():
    """Every run at B = 512 ends with a NaN or infinite final metric: "does it hurt?" answers
    Yes about B = 512 (it was the comparison the medians left out), and report.json counts
    them; a diverged run beside finite ones is named as left out."""
    records = (seeds(8, [(0.95, -0.01), (0.96, -0.02), (0.97, -0.015)])
               + seeds(128, [(0.96, -0.01), (0.97, -0.02), (0.975, -0.015)])
               + seeds(512, [(float("nan"), None), (float("inf"), None), (float("nan"), None)]))
    records[3]["final"]["val_accuracy"] = float("nan")  # one of B = 128's seeds too
    s = summarize(records, target=0.75)
    hurt = answers._hurt_sentence(s)
    assert hurt.startswith("Yes, the largest batch size hurts the model: every finished run at "
                           "B = 512 diverged (3 run(s)"), hurt
    assert "1 run(s) at B = 128, 3 run(s) at B = 512" in hurt and "inf" not in hurt
    assert report_json(s)["diverged"] == {"128": 1, "512": 3}
    assert 512 not in s["per_batch"] and s["per_batch"][128]["num_seeds"] == 2


def test_runs_that_finished_diverged_stay_diverged_when_read_from_disk(tmp_path):
    """result.json writes a NaN metric as null (JSON has no NaN); the study's record of such a
    run must read it back as NaN, so the report still says B = 512 diverged (it dropped the
    metric, and the answer compared B = 8 with B = 128 as if 512 had not run)."""
    from experiments.common import json_files  # noqa: PLC0415
    from experiments.launch.study_reporting import record  # noqa: PLC0415

    records = []
    for b, finals in ((8, (0.95, 0.96, 0.97)), (128, (0.96, 0.97, 0.975)),
                      (512, (float("nan"),) * 3)):
        for seed, final in enumerate(finals):
            run_dir = tmp_path / f"b{b}_s{seed}"
            run_dir.mkdir()
            with open(run_dir / "result.json", "w") as handle:
                json_files.dump({"batch_size": b, "updates": 100.0,
                                 "final_epoch": {"val_accuracy": final, "loss": 0.3}}, handle)
            assert ("null" in (run_dir / "result.json").read_text()) == (b == 512)
            records.append(record({"name": run_dir.name, "status": "finished",
                                   "hparams": {"batch_size": b, "learning_rate": 0.1,
                                               "seed": seed}}, str(run_dir)))
    s = summarize(records, target=0.75)
    assert report_json(s)["diverged"] == {"512": 3}
    assert answers._hurt_sentence(s).startswith(
        "Yes, the largest batch size hurts the model: every finished run at B = 512 diverged")


def test_the_default_target_is_reached_by_the_median_seed_with_two_seeds():
    """Two seeds per B, no study.target: the target is a value both of the worst B's seeds
    reached (the mean of the two was above one of them, and that B came out "never
    reached")."""
    def capped(b, seed, top):
        record = run(b, 40, seed)
        record["curve"]["val_accuracy"] = [[u, min(v, top)]
                                           for u, v in record["curve"]["val_accuracy"]]
        return record

    records = [capped(16, 0, 0.80), capped(16, 1, 0.90), capped(64, 0, 0.95), capped(64, 1, 0.97)]
    s = summarize(records)
    assert s["target"] == 0.80
    assert not any(v["censored"] for v in s["best"].values())


def test_batch_sizes_that_did_not_reach_the_target_are_named_without_a_fit():
    records = [run(16, 40), run(64, 60)] + [dict(run(256, 40), curve={"val_accuracy": [
        [10.0, 0.5], [20.0, 0.6]]}, updates=20.0)]
    s = summarize(records, target=0.75)
    pick = answers._pick_sentence(s)
    assert "fitting S(B) needs at least 3" in pick
    assert "at B = 256 the median seed did not reach the target within the budget (20 updates)" \
        in pick


def test_a_withheld_b_crit_is_not_stated_by_the_noise_sentence():
    s = curve_summary([2000, 1000, 500, 260, 300, 600, 1200])  # a rise: B_crit withheld
    assert answers.b_crit_withheld(s)
    text = answers._noise_sentence(s)
    assert text.startswith("B_crit cannot be compared") and "≈" not in text


def test_one_seed_per_point_says_it_has_no_interval():
    s = curve_summary(noisy(40, 64))
    assert "is one seed of its best setting, with no interval" in answers._pick_sentence(s)
    assert list(report_json(s)["per_batch_size"]) == [str(b) for b in SIZES]


# ---- open interval ends -------------------------------------------------------------------


def test_open_upper_end_is_worded_per_quantity():
    s = curve_summary(noisy(40, 64))
    s.update(b_simple=120.0, b_simple_interval=[80.0, float("inf")],
             b_simple_info={"num_runs": 3, "note": "test"}, b_crit_over_b_simple=0.5,
             b_crit_over_b_simple_interval=None)
    text = answers._noise_sentence(s)
    assert ("B_simple ≈ 120 [90% interval: 80 to unbounded (|G|² not distinguishable from 0)]"
            in text)
    assert "more than the budget" not in text
    assert answers._interval_text([80.0, float("inf")]).endswith("more than the budget]")


@pytest.mark.parametrize("is_answer", [True, False])
def test_the_figure_draws_b_crit_only_when_the_report_states_it(tmp_path, monkeypatch, is_answer):
    """A withheld B_crit (a rise, a bound, a poor fit) gets no B_crit line or band in the figure;
    the bars name no fixed level (it depends on the seeds)."""
    from experiments.analysis import plots  # noqa: PLC0415

    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig) or path)
    s = curve_summary([2000, 1000, 500, 260, 300, 600, 1200])
    assert answers.b_crit_withheld(s)
    plots.plot_steps_to_result(s["best"], s["steps_fit"], str(tmp_path / "s.png"),
                               intervals=s["steps_intervals"], b_crit_is_answer=is_answer)
    _, labels = drawn[0].axes[0].get_legend_handles_labels()
    assert any(label.startswith("B_crit") for label in labels) == is_answer, labels
    assert not any("90% over seeds" in label for label in labels)


def test_an_open_b_simple_interval_still_bounds_the_ratio_and_a_negative_g2_is_a_lower_bound():
    """B_simple's interval open above (|G|^2 not told from 0) gives B_crit / B_simple an interval
    from 0 (it had none); a pooled |G|^2 at or below 0 is reported as "at least" the pooled lower
    end, never replaced by the lagging curve reading."""
    from experiments.analysis import study_report  # noqa: PLC0415

    fit = fits.fit_steps_to_result(SIZES, noisy(40, 64, noise=0.0))
    intervals = fits.steps_fit_intervals(fit)
    ratio, interval = study_report._ratio(fit, intervals, {"b_simple": 200.0,
                                                           "interval": [120.0, float("inf")]})
    assert interval == [0.0, pytest.approx(intervals.b_crit[1] / 120.0)]
    s = dict(curve_summary(noisy(40, 64, noise=0.0)), b_simple=200.0,
             b_crit_over_b_simple=ratio, b_crit_over_b_simple_interval=interval)
    assert f"[interval 0 to {interval[1]:.2g}, covering at least 80%" in answers._noise_sentence(s)
    _, open_both = study_report._ratio(fit, intervals, {"b_simple": 200.0,
                                                        "interval": [0.0, float("inf")]})
    s.update(b_crit_over_b_simple_interval=open_both)
    said = answers._noise_sentence(s)
    assert open_both == [0.0, float("inf")] and "[interval 0 to unbounded" in said
    assert "the interval holds 1" in said

    def rows(g2):  # every logged update's raw estimate near a crossing at update 100
        return [[u, g2, 30.0, 16, 2] for u in range(90, 112, 2)]

    runs = [{"name": f"r{i}", "status": "finished", "batch_size": 16, "learning_rate": 0.1,
             "seed": i, "curve": {"val_accuracy": [[0, 0.5], [100, 0.75], [200, 0.9]]},
             "final": {"val_accuracy": 0.9}, "updates": 200, "noise_raw": rows(g2)}
            for i, g2 in enumerate([-1.0, 0.4, -0.2])]
    out = study_report._b_simple(runs, None, 0.75, "val_accuracy")
    assert out["b_simple"] is None and out["interval"][1] == float("inf")
    assert out["note"].startswith("the pooled |G|^2 is at or below 0: B_simple is at least")


def _with_raw(steps, trace):
    """``curve_summary``'s runs, each logging raw estimates |G|^2 = 1 and tr(Sigma) = ``trace``
    (a value or a function of the update) every 5 updates through its crossing."""
    records = []
    for b, cross in zip(SIZES, steps):
        record = run(b, float(cross))
        record["noise_raw"] = [[u, 1.0, trace(u) if callable(trace) else trace, b, 4]
                               for u in range(5, int(cross) + 60, 5)]
        records.append(record)
    return records


def test_noise_not_resolved_from_zero_is_b_simple_zero_and_no_ratio():
    """Raw tr(Sigma) estimates whose mean near the target is below 0 (noisy single-update
    estimates of a small tr(Sigma)): B_simple is 0, inside its interval, never negative (it
    said -0.9 with a 90% interval [0, 3.3]); one that is exactly 0 no longer crashes the report
    (a ratio of None was formatted). Either way no ratio is formed, and the sentence says why."""
    for trace in (lambda u: -8.0 if u % 10 else 4.0, 0.0):
        s = summarize(_with_raw(noisy(40, 64, noise=0.0), trace), target=0.75)
        assert s["b_simple"] == 0.0
        # no interval where no B_simple >= 0 fits these deterministic rows; else from 0
        assert s["b_simple_interval"] is None or s["b_simple_interval"][0] == 0.0
        assert s["b_crit_over_b_simple"] is None and s["b_crit_over_b_simple_interval"] is None
        said = answers._noise_sentence(s)
        assert "B_crit / B_simple cannot be formed" in said and "not told from 0" in said
        assert "-" not in said.split("(")[1].split(")")[0]
        assert report_json(s)["b_simple_at_target"] == 0.0


def test_a_larger_batch_that_never_reached_the_target_is_a_rise():
    """S = 40 (1 + 64 / B) on B = 8 ... 256, and B = 512 never reached the target in 80 updates
    (S(256) is 50): S rises, though the fit and the rise test see only the sizes that reached it
    (they read p = 1 and stated B_crit ≈ 43 for the truth 64)."""
    sizes = SIZES[:-1]
    runs = [run(b, 40 * (1 + 64 / b)) for b in sizes]
    runs.append({**run(512, 200.0), "curve": {"val_accuracy": [[u, 0.5] for u in range(10, 90, 10)]},
                 "updates": 80, "final": {"val_accuracy": 0.5}})
    s = summarize(runs, target=0.75)
    assert s["best"][512]["censored"] and s["best"][512]["budget"] == 80
    pick = answers._pick_sentence(s)
    assert "S(B) rises above B = 256" in pick and "B = 512 did not reach the target in 80" in pick
    assert answers.b_crit_withheld(s) and "B_crit ≈" not in pick


def test_the_ratio_interval_states_the_level_it_holds():
    """Two 90% intervals combined hold at least 80% (and 40% with a 50% fallback B_simple)."""
    s = curve_summary(noisy(40, 64, noise=0.0))
    assert answers.ratio_level(dict(s, b_simple_info={"level": 0.9})) == pytest.approx(0.8)
    assert answers.ratio_level(dict(s, b_simple_info={"interval_level": 0.5})) == \
        pytest.approx(0.4)


def lr_summary(rates):
    sizes = [2 ** i for i in range(len(rates))]
    return summarize([dict(run(b, 40 * (1 + 64 / b)), learning_rate=lr)
                      for b, lr in zip(sizes, rates)], target=0.75)


def test_a_best_learning_rate_that_bends_names_no_scaling_rule():
    """Linear up to B = 32, then flat (the noisy quadratic model's shape): the fitted average
    exponent (about 0.5) is not "square-root scaling"."""
    s = lr_summary([min(0.03 * 2 ** i, 1.0) for i in range(13)])
    text = answers._lr_sentence(s)
    assert "does not follow one power law over B = 1–4096" in text
    assert "closest to" not in text and "RMS misfit" in text
    assert report_json(s)["lr_fit_bend_p"] < answers.BEND_P


def test_a_power_law_with_grid_scatter_keeps_its_rule():
    rng = np.random.default_rng(3)
    s = lr_summary([0.01 * 2 ** (0.5 * i) * 2 ** (rng.integers(-1, 2) / 3) for i in range(10)])
    text = answers._lr_sentence(s)
    assert "closest to square-root scaling (0.5)" in text and "RMS misfit" in text
    assert report_json(s)["lr_fit_bend_p"] >= answers.BEND_P


def test_two_batch_sizes_give_an_exponent_but_name_no_rule():
    """Two points fix any line: the exponent is stated, with no interval, and no rule is named
    ("closest to no scaling" from two points would hold for any exponent near it)."""
    s = summarize([dict(run(b, 40 * (1 + 64 / b), seed), learning_rate=lr,
                        name=f"b{b}_lr{lr}_s{seed}")
                   for b in (16, 32) for lr in (0.05, 0.1) for seed in (0, 1)], target=0.75)
    text = answers._lr_sentence(s)
    assert "two points fix the line" in text and "names no rule" in text
    assert "closest to" not in text


def test_rates_that_failed_were_tried_and_the_report_says_only_one_finished():
    """lr 0.1 finishes and lr 1e12 fails at each B: the rates were tried, so the report does not
    say "each batch size tried only one learning rate"; it says the others failed, and the
    finished rate is not called the best of a search."""
    finished_runs = [dict(run(b, 40 * (1 + 64 / b)), name=f"b{b}_lr0.1_s0") for b in (16, 32, 64)]
    failed_runs = [{"name": f"b{b}_lr1e+12_s0", "status": "failed", "batch_size": b,
                    "learning_rate": 1e12, "seed": 0, "error": "loss became nan"}
                   for b in (16, 32, 64)]
    s = summarize(finished_runs + failed_runs, target=0.75)
    assert s["lr_searched"] and not s["lr_compared"]
    text = answers._lr_sentence(s)
    assert "at no batch size did more than one learning rate and rule finish" in text
    assert "tried only one" not in text
    assert "with the best learning rate tried" not in answers._hurt_sentence(s)
    entry = report_json(s)["per_batch_size"]["16"]
    assert entry["learning_rates_tried"] == [0.1, 1e12] and entry["at_edge"] == "low"


def test_stale_batch_norm_averages_are_named_by_batch_size():
    """Runs whose result.json says their BatchNormalization averages were stale (a large B's
    few updates) get a sentence naming those B and the weight left; others get none."""
    records = [run(b, float(s)) for b, s in zip(SIZES, noisy(40, 64))]
    fresh = {"momentum": 0.99, "moving_average_updates": 900, "initial_weight": 1e-4,
             "stale": False}
    for record in records:
        record["result"] = {"batch_norm_statistics": fresh}
    assert not any("BatchNormalization" in t for t in answers.sentences(summarize(
        records, target=0.75)))
    for record, weight in zip(records[-2:], (0.30, 0.55)):
        record["result"] = {"batch_norm_statistics": dict(fresh, initial_weight=weight,
                                                          stale=True)}
    s = summarize(records, target=0.75)
    (sentence,) = [t for t in answers.sentences(s) if "BatchNormalization" in t]
    assert "B = 256 (30%), 512 (55%)" in sentence and "mlp.batch_norm_momentum" in sentence
    assert report_json(s)["batch_norm_stale"] == {"256": 0.30, "512": 0.55}
