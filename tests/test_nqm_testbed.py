"""The noisy quadratic model testbed: the exact expected steps, the data's noise, the Keras
update, and (slow) a small study through the real launcher that must find the exact steps."""

import os

import numpy as np
import pytest

from experiments.inputs import nqm

# The issue's numbers: the best-constant-rate steps to 2% of the initial expected risk.
ISSUE_STEPS = {1: 938, 2: 472, 4: 239, 8: 123, 16: 65, 32: 36, 64: 22, 128: 16, 256: 13,
               512: 11, 1024: 11, 2048: 10, 4096: 10}
H = nqm.curvatures(20)
TARGET = 0.02 * 0.5 * H.sum()


def test_exact_expected_steps_from_the_recursion():
    got = {b: nqm.exact_steps(b, H, H, TARGET)[0] for b in ISSUE_STEPS}
    assert got == ISSUE_STEPS


def test_the_interpolated_crossing_is_the_curve_read_as_a_study_reads_it():
    """The best rate's crossing of the expected-risk curve, interpolated between updates: found
    here rate by rate on ``expected_risk_curve`` with NumPy's interp, on a coarser grid."""
    rates = np.geomspace(0.05, 2.0, 600)
    for batch_size in (8, 128, 1024):
        crossings = []
        for lr in rates:
            risk = nqm.expected_risk_curve(lr, batch_size, H, H, num_steps=300)
            first = np.nonzero(risk <= TARGET)[0]
            if first.size:
                k = first[0]
                crossings.append(k - 1 + (risk[k - 1] - TARGET) / (risk[k - 1] - risk[k]))
        got, _ = nqm.exact_crossing(batch_size, H, H, TARGET)
        assert got == pytest.approx(min(crossings), abs=0.02)
        assert ISSUE_STEPS[batch_size] - 1 < got <= ISSUE_STEPS[batch_size]


def test_expected_risk_curve_matches_a_monte_carlo_of_sgd():
    """The recursion is the expectation of plain SGD on rows z ~ N(0, c / h^2)."""
    rng = np.random.default_rng(0)
    lr, batch, steps, copies = 0.2, 4, 30, 4000
    w = np.ones((copies, H.size))
    for _ in range(steps):
        z = rng.standard_normal((copies, batch, H.size)) * np.sqrt(1.0 / H)
        w -= lr * H * (w - z.mean(axis=1))
    simulated = np.mean(0.5 * (w ** 2) @ H)
    exact = nqm.expected_risk_curve(lr, batch, H, H, num_steps=steps)[-1]
    assert simulated == pytest.approx(exact, rel=0.05)


def test_data_rows_have_the_model_noise_and_sizes_follow_the_batch():
    data = nqm.nqm(batch_size=1024, examples=2048, min_updates=20, seed=1)
    assert data.x_train.shape[0] == 20 * 1024
    replicas = data.x_train.shape[1]
    assert 16 <= replicas <= 256 and data.spec.input_shape == (replicas, 20)
    variance = data.x_train.reshape(-1, 20).var(axis=0)
    np.testing.assert_allclose(variance, np.arange(1, 21), rtol=0.05)  # c_i / h_i^2 = i
    assert not data.x_validation.any()
    small = nqm.nqm(batch_size=1, examples=2048, seed=1)
    assert small.x_train.shape[:2] == (2048, 256)  # small B: most copies
    with pytest.raises(ValueError, match="num_train"):
        nqm.nqm()


def test_one_keras_update_is_the_nqm_sgd_step():
    import keras

    data = nqm.nqm(num_train=8, replicas=3, seed=2)
    model = nqm.nqm_model(data.spec)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=nqm.NQMLoss(),
                  metrics=[nqm.NQMRisk()])
    model.train_on_batch(data.x_train, data.y_train)
    w = keras.ops.convert_to_numpy(model.get_layer("nqm_w").w)
    expected = 1.0 - 0.5 * H * (1.0 - data.x_train.mean(axis=0))
    np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)
    risk = model.evaluate(data.x_validation, data.y_validation, verbose=0, return_dict=True)
    assert risk["nqm_risk"] == pytest.approx(np.mean(0.5 * (w ** 2) @ H), rel=1e-5)


@pytest.mark.slow
def test_small_study_finds_the_exact_steps(tmp_path):
    """Three batch sizes of the shipped study, each with a window of learning rates around its
    optimum, through the real launcher: S(B) within 10% of the exact steps."""
    import gin

    from experiments.launch import study as study_lib
    from experiments.launch import study_launch
    from experiments.launch.gin_config import parse

    files = [os.path.join(os.path.dirname(__file__), "..", "gin", "studies",
                          "nqm_known_answer.gin")]
    bindings = ["study.batch_sizes = [8, 64, 1024]",
                "study.learning_rates_by_batch_size = {8: [0.19, 0.24, 0.3], "
                "64: [0.85, 1.07, 1.35], 1024: [1.27, 1.6, 1.8]}"]
    gin.clear_config()
    try:
        parse(files, bindings)
        spec = study_lib.study()
        out = study_launch.launch_study(spec, "nqm_small", files, bindings, str(tmp_path),
                                        run_name="t", print_fn=lambda *a: None)
    finally:
        gin.clear_config()
    best = out["report"]["summary"]["best"]
    for b in (8, 64, 1024):  # against the crossing read as the study reads it (interpolated)
        exact, _ = nqm.exact_crossing(b, H, H, TARGET)
        assert best[b]["steps"] == pytest.approx(exact, rel=0.10), (b, best[b])
