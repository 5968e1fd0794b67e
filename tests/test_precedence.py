"""Command-line bindings apply after sweep variants and study axes, and say what they override."""

import pytest

from experiments import launch
from experiments.launch import grid, precedence
from tests.helpers import read_json, run_dirs

DIGITS = "gin/experiments/digits_mlp.gin"
SWEEP = """include 'gin/experiments/digits_mlp.gin'
train.verbose = 0
train.batch_size = 256
measurements.enabled = []
sweep.variants = {
    'e2': ['train.epochs = 2'],
    'e3': ['train.epochs = 3'],
}
"""


def test_a_command_line_binding_wins_inside_a_sweep(tmp_path):
    gin_file = tmp_path / "sweep.gin"
    gin_file.write_text(SWEEP)
    printed = []
    results = launch.launch([str(gin_file)], ["train.epochs = 1"],
                            output_dir=str(tmp_path / "runs"), print_fn=printed.append)
    assert [r["epochs"] for r in results] == [1, 1]
    for run_dir in run_dirs(str(tmp_path / "runs")):
        assert read_json(f"{run_dir}/result.json")["epochs"] == 1
    announced = [line for line in printed if "overrides" in str(line)]
    assert announced == ["Command-line binding 'train.epochs = 1' overrides the sweep variant "
                         "values of e2 (2), e3 (3)."]


def _runs():
    return [grid.RunSpec(0, "b32_s0", ("train.batch_size = 32", "train.epochs = 10",
                                       "keras.optimizers.SGD.learning_rate = 0.1",
                                       "measurements.hparams.values = {'batch_size': 32, "
                                       "'epochs': 10}"), {"batch_size": 32, "epochs": 10}),
            grid.RunSpec(1, "b64_s0", ("train.batch_size = 64", "train.epochs = 10",
                                       "keras.optimizers.SGD.learning_rate = 0.2",
                                       "measurements.hparams.values = {'batch_size': 64, "
                                       "'epochs': 10}"), {"batch_size": 64, "epochs": 10})]


def test_a_study_value_shared_by_every_run_is_overridden_and_recorded():
    printed = []
    runs = precedence.with_command_line_last(_runs(), ["train.epochs = 1", "mlp.dropout = 0.1"],
                                             "study run", study=True, print_fn=printed.append)
    assert printed == ["Command-line binding 'train.epochs = 1' overrides the study run values "
                       "of b32_s0 (10), b64_s0 (10)."]
    for run in runs:
        assert run.bindings[-1] == "train.epochs = 1"  # parsed last: it wins
        assert run.hparams["epochs"] == 1
        assert f"measurements.hparams.values = {run.hparams!r}" in run.bindings


@pytest.mark.parametrize("binding, axis", [
    ("train.batch_size = 128", "study.batch_sizes"),
    ("SGD.learning_rate = 0.5", "study.learning_rates"),  # the short name binds the same
])
def test_overriding_a_study_axis_is_refused_with_the_reason(binding, axis):
    with pytest.raises(precedence.OverrideRefused, match=axis) as error:
        precedence.with_command_line_last(_runs(), [binding], "study run", study=True,
                                          print_fn=lambda *_: None)
    assert "the same" in str(error.value) and "varies" in str(error.value)


def test_a_refused_study_override_stops_before_any_run(tmp_path):
    gin_file = tmp_path / "study.gin"
    gin_file.write_text("include 'gin/experiments/digits_mlp.gin'\n"
                        "study.batch_sizes = [64, 128]\nstudy.epochs = [1]\n")
    with pytest.raises(launch.ConfigError, match="study.batch_sizes"):
        launch.launch([str(gin_file)], ["train.batch_size = 32"],
                      output_dir=str(tmp_path / "runs"), print_fn=lambda *_: None)
    assert run_dirs(str(tmp_path / "runs")) == []


def test_a_command_line_macro_or_second_line_wins_and_is_announced():
    """A macro (``EP = 2``) and every line of a multi-line ``--gin_bindings`` value override the
    runs' own, as a ``configurable.parameter`` binding does (they lost silently before)."""
    runs = [grid.RunSpec(0, "a", ("train.batch_size = 128", "EP = 1")),
            grid.RunSpec(1, "b", ("train.batch_size = 32", "train.seed = 4"))]
    printed = []
    out = precedence.with_command_line_last(
        runs, ["EP = 2", "train.seed = 1\ntrain.batch_size = 64"], print_fn=printed.append)
    assert out[0].bindings[-2:] == ("EP = 2", "train.batch_size = 64")
    assert out[1].bindings[-2:] == ("train.seed = 1", "train.batch_size = 64")
    assert printed[0] == "Command-line binding 'EP = 2' overrides the sweep variant value of a (1)."
    assert any("'train.batch_size = 64' overrides" in line for line in printed)
    assert precedence.statements(["sweep.variants = {\n'a': ['x.y = 1'],\n}\nEP = 3"]) == [
        "sweep.variants = {\n'a': ['x.y = 1'],\n}", "EP = 3"]


def test_a_study_macro_that_varies_is_refused():
    """``study.batch_size_macro``: each run binds its own B to the macro."""
    runs = [grid.RunSpec(0, "b8", ("train.batch_size = 8", "NQM_BATCH_SIZE = 8")),
            grid.RunSpec(1, "b64", ("train.batch_size = 64", "NQM_BATCH_SIZE = 64"))]
    with pytest.raises(precedence.OverrideRefused, match="NQM_BATCH_SIZE \\(a macro\\)"):
        precedence.with_command_line_last(runs, ["NQM_BATCH_SIZE = 32"], "study run",
                                          study=True, print_fn=lambda *_: None)


def test_a_command_line_value_equal_to_the_runs_own_is_not_an_override():
    printed = []
    runs = precedence.with_command_line_last(_runs(), ["train.epochs = 10"], "study run",
                                             study=True, print_fn=printed.append)
    assert printed == [] and [r.bindings for r in runs] == [r.bindings for r in _runs()]
