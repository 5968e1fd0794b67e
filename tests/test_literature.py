"""The shipped literature experiments (gin/literature/*.gin) run, shrunk by their
``# smoke-test:`` line, and record what their claim is judged on; the pieces their table rows are
computed with (the first-order term of the sharpness, seed spreads per arm, the range test's
exponent with its interval and ramp resolution) against closed forms."""

import glob
import json
import math
import os
import re

import numpy as np
import pytest

from callbacks.sharpness import keskar_sharpness
from experiments import launch
from experiments.analysis import lr_range, seed_spread
from tests.helpers import read_json
from tests.test_experiments_smoke import REPO, smoke_bindings

LITERATURE = sorted(os.path.relpath(p, REPO)
                    for p in glob.glob(os.path.join(REPO, "gin", "literature", "*.gin")))
JUDGED_ON = {  # the result.json entries each claim's table row is read from
    "keskar_sharp_minima": ["measurements.sharpness/phi", "measurements.sharpness/phi_first_order",
                            "measurements.generalization_gap/loss", "final_validation.accuracy",
                            "measurements.train_inference/loss"],
    "hoffer_train_longer": ["final_validation.accuracy", "final_validation.loss",
                            "measurements.weights/distance_from_init",
                            "measurements.train_inference/loss"],
    "lr_range_scaling": ["lr_range_test.stopped_because", "lr_range_test.learning_rates"],
    "smith_increase_batch": ["final_validation.accuracy", "final_validation.loss",
                             "final_epoch.loss", "measurements.train_inference/loss"],
}


def _lookup(result, dotted):
    section, key = dotted.split(".", 1)
    return result[section][key]


@pytest.mark.slow  # every literature experiment trains end to end
@pytest.mark.parametrize("path", LITERATURE)
def test_literature_experiment_smoke(path, tmp_path):
    name = os.path.splitext(os.path.basename(path))[0]
    results = launch.launch([path], ["train.verbose = 0"] + smoke_bindings(path),
                            output_dir=str(tmp_path), print_fn=lambda *_: None)
    assert len(results) >= 2  # a claim compares at least two runs
    for result in results:
        saved = read_json(os.path.join(result["run_dir"], "result.json"))
        for entry in JUDGED_ON[name]:
            assert _lookup(saved, entry) == _lookup(saved, entry)  # present and not NaN
        assert saved["unused_bindings"] == [], saved["unused_bindings"]


# ---- the first-order term of the Keskar sharpness ----------------------------------------------


class _Objective:
    """f(x) = f0 + g.(x - x0) + 1/2 sum_i h_i (x - x0)_i^2 in NumPy, with the interface
    ``keskar_sharpness`` uses (get, set, __call__ -> (f, gradient))."""

    def __init__(self, x0, f0, g, h):
        self.x0, self.f0, self.g, self.h = (np.asarray(v, np.float64) for v in (x0, f0, g, h))
        self.x = self.x0.copy()

    def get(self):
        return self.x.copy()

    def set(self, flat):
        self.x = np.array(flat, np.float64)

    def __call__(self, flat=None):
        if flat is not None:
            self.set(flat)
        d = self.x - self.x0
        return float(self.f0 + self.g @ d + 0.5 * np.sum(self.h * d * d)), self.g + self.h * d


X0 = np.array([0.5, -2.0, 0.0, 3.0])
G = np.array([0.3, -0.1, 0.05, -0.2])


def test_first_order_term_equals_phi_for_a_linear_loss():
    """No curvature: the box maximum is the corner along the gradient, phi = phi_1 =
    100 eps sum_i |g_i| (|x_i| + 1) / (1 + f0)."""
    objective = _Objective(X0, 0.7, G, np.zeros(4))
    eps = 1e-2
    result = keskar_sharpness(objective, epsilon=eps)
    expected = 100.0 * eps * np.sum(np.abs(G) * (np.abs(X0) + 1.0)) / 1.7
    np.testing.assert_allclose(result["phi_first_order"], expected, rtol=1e-12)
    np.testing.assert_allclose(result["phi"], expected, rtol=1e-9)
    np.testing.assert_array_equal(objective.get(), X0)  # weights put back


def test_first_order_term_separates_curvature_on_a_quadratic():
    """Convex separable quadratic: phi - phi_1 = 100 * 1/2 sum_i h_i r_i^2 / (1 + f0), the
    curvature's share, with r_i = eps (|x_i| + 1); at a minimum (g = 0) phi_1 is 0."""
    h = np.array([1.0, 40.0, 5.0, 300.0])
    eps = 1e-2
    r = eps * (np.abs(X0) + 1.0)
    for g in (G, np.zeros(4)):
        result = keskar_sharpness(_Objective(X0, 0.2, g, h), epsilon=eps)
        np.testing.assert_allclose(result["phi_first_order"],
                                   100.0 * np.sum(np.abs(g) * r) / 1.2, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(result["phi"] - result["phi_first_order"],
                                   100.0 * 0.5 * np.sum(h * r * r) / 1.2, rtol=1e-6)


def test_first_order_term_in_a_random_subspace():
    """With A (n x p): phi_1 = 100 sum_j |(A^T g)_j| r_j / (1 + f0), r = eps (|A^+ x| + 1)."""
    eps, p, seed = 1e-2, 2, 3
    result = keskar_sharpness(_Objective(X0, 0.0, G, np.zeros(4)), epsilon=eps,
                              projection_dim=p, seed=seed)
    a = np.random.default_rng(seed).standard_normal((4, p))
    r = eps * (np.abs(np.linalg.pinv(a) @ X0) + 1.0)
    np.testing.assert_allclose(result["phi_first_order"], 100.0 * np.sum(np.abs(a.T @ G) * r),
                               rtol=1e-10)
    np.testing.assert_allclose(result["phi"], result["phi_first_order"], rtol=1e-6)


# ---- seed spreads per arm -----------------------------------------------------------------------


def test_arm_of_splits_the_seed_suffix():
    assert seed_spread.arm_of("decay_lr_s2") == ("decay_lr", 2)
    assert seed_spread.arm_of("large_512_e1000_s10") == ("large_512_e1000", 10)
    assert seed_spread.arm_of("small_16") == ("small_16", None)
    assert seed_spread.arm_of("b16_seed") == ("b16_seed", None)


def test_spread_is_mean_sample_sd_and_range():
    s = seed_spread.spread([0.98, 0.97, 0.99])
    assert (s.n, s.low, s.high) == (3, 0.97, 0.99)
    assert s.mean == pytest.approx(0.98)
    assert s.sd == pytest.approx(0.01)  # ddof = 1
    assert s.text() == "0.98 ± 0.01 [0.97, 0.99]"
    one = seed_spread.spread([4])
    assert math.isnan(one.sd) and one.text() == "4 [n = 1]"
    assert seed_spread.spread([1300, 1300]).text() == "1300 ± 0 [1300, 1300]"
    with pytest.raises(ValueError):
        seed_spread.spread([])
    with pytest.raises(ValueError):
        seed_spread.spread([1.0, float("nan")])


def test_by_arm_groups_seeds_and_reads_a_sweep(tmp_path):
    runs = {"decay_s0": (0.98, 2700), "decay_s1": (0.96, 2700), "grow_s0": (0.97, 1300),
            "grow_s1": (0.99, 1300), "grow_s2": (0.98, 1300)}
    order = ["grow_s0", "grow_s1", "grow_s2", "decay_s0", "decay_s1"]  # the sweep's order
    for name, (accuracy, updates) in runs.items():
        os.makedirs(tmp_path / name)
        with open(tmp_path / name / "result.json", "w") as handle:
            json.dump({"final_validation": {"accuracy": accuracy}, "updates": updates,
                       "measurements": {}}, handle)
    os.makedirs(tmp_path / "unfinished_s3")  # no result.json: left out
    with open(tmp_path / "sweep.json", "w") as handle:
        json.dump({"runs": [str(tmp_path / n) for n in order]}, handle)
    results = seed_spread.read_sweep(str(tmp_path))
    assert [r["run"] for r in results] == order
    entries = ["final_validation.accuracy", "updates", "measurements.missing"]
    summary = seed_spread.by_arm(results, entries)
    assert list(summary) == ["grow", "decay"]
    assert summary["grow"]["final_validation.accuracy"].mean == pytest.approx(0.98)
    assert summary["decay"]["updates"].text() == "2700 ± 0 [2700, 2700]"
    assert "measurements.missing" not in summary["grow"]
    table = seed_spread.format_table(summary, entries).splitlines()
    assert table[0].split()[:2] == ["arm", "n"]
    assert table[2].startswith("grow ") and table[2].rstrip().endswith("-")
    assert seed_spread.main(["seed_spread", str(tmp_path), "updates"]) == 0


def test_a_diverged_seed_is_named_not_silently_dropped():
    """result.json writes a NaN loss as null: the arm's numbers are over the finite seeds and
    say which run was left out (n = 2 of 3), not n = 3 with the mean of 2."""
    results = [{"run": "decay_s0", "final_validation": {"loss": 0.10}},
               {"run": "decay_s1", "final_validation": {"loss": 0.12}},
               {"run": "decay_s2", "final_validation": {"loss": None}},
               {"run": "grow_s0", "final_validation": {"loss": float("nan")}},
               {"run": "grow_s1", "final_validation": {}}]
    summary = seed_spread.by_arm(results, ["final_validation.loss"])
    decay = summary["decay"]["final_validation.loss"]
    assert decay.n == 2 and decay.non_finite == ("decay_s2",)
    assert decay.text() == "0.11 ± 0.0141 [0.1, 0.12] (n = 2; not finite: decay_s2)"
    grow = summary["grow"]["final_validation.loss"]  # grow_s1 has no entry: not counted
    assert grow.n == 0 and grow.text() == "- (n = 0; not finite: grow_s0)"


# ---- the range test's exponent, its interval and the ramp's resolution --------------------------


def _range_results(exponent, seeds=3, num_updates=500, low=1e-4, high=10.0, jitter=0.0):
    """Range-test results whose suggestions follow 0.01 B^exponent, snapped to the ramp's rates
    (a suggestion is always one of them), the seeds of one B spread by factors e^(-jitter),
    1, e^jitter, ... (and shifted by a B-dependent sign, so the residuals are not all equal)."""
    ramp = low * (high / low) ** (np.arange(num_updates) / (num_updates - 1))
    results = []
    for i, b in enumerate((16, 32, 64, 128, 256, 512)):
        for seed in range(seeds):
            offset = jitter * (seed - (seeds - 1) / 2) * (1 if i % 2 else -1)
            target = 0.01 * b ** exponent * math.exp(offset)
            rate = float(ramp[np.argmin(np.abs(np.log(ramp / target)))])
            results.append({"batch_size": b, "lr_range_test": {
                "suggested_learning_rate": rate, "min_loss_learning_rate": 10 * rate,
                "learning_rates": ramp.tolist()}})
    return results


def test_scaling_fit_keeps_every_seed_and_gives_the_resolution():
    results = _range_results(0.5, jitter=0.1)
    fit = lr_range.scaling_fit(results)
    assert fit.num_points == 18 and fit.batch_sizes == (16, 32, 64, 128, 256, 512)
    step = 10 ** (5 / 499)
    assert fit.ramp_step == pytest.approx(step, rel=1e-9)
    assert fit.resolution == pytest.approx(math.log(step) / math.log(32), rel=1e-9)
    assert fit.interval[0] < 0.5 < fit.interval[1]
    assert lr_range.scaling_fit(results, "min_loss_learning_rate").exponent == \
        pytest.approx(fit.exponent, abs=1e-9)  # 10x everywhere: same exponent
    sentence = lr_range.scaling_sentence(results)
    assert "over 18 range tests at 6 batch sizes" in sentence
    assert re.search(r"One ramp step \(x1\.02\d* per update\) is worth 0\.007", sentence)
    assert "cannot resolve" not in sentence


def test_scaling_sentence_says_when_the_ramp_cannot_resolve_the_interval():
    """Identical suggestions over seeds (no jitter) on a coarse ramp: the t interval shrinks
    below one ramp step, which the sentence says."""
    results = _range_results(0.05, num_updates=80, high=100.0)
    fit = lr_range.scaling_fit(results)
    assert fit.resolution == pytest.approx(math.log(1e6 ** (1 / 79)) / math.log(32))
    assert fit.interval[1] - fit.interval[0] < fit.resolution
    assert "cannot resolve" in lr_range.scaling_sentence(results)
    assert lr_range.scaling_fit(results[:3]) is None  # one batch size
