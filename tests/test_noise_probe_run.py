"""The noise-scale probe in a run (``measurements.noise_scale_probe``) and on a finished run's
weights from the command line (``gin/tools/probe_noise_scale.gin``)."""

import glob
import json
import os
import shutil

import pytest

from experiments import launch
from experiments.run import noise_probe_run
from tests.helpers import event_values, read_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(REPO, "gin/experiments/digits_mlp.gin")
PROBE = os.path.join(REPO, "gin/tools/probe_noise_scale.gin")


def _only_run(output):
    (run,) = glob.glob(os.path.join(str(output), "digits_mlp", "*"))
    return run


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory):
    """Digits MLP trained by Adam, 1 epoch, b = 8 (k = 4), with the probe every 20 updates and
    at the end."""
    output = tmp_path_factory.mktemp("probe") / "runs"
    launch.launch([DIGITS], [
        "train.optimizer = @keras.optimizers.Adam", "keras.optimizers.Adam.learning_rate = 1e-3",
        "train.epochs = 1", "train.verbose = 0", "train.batch_size = 32",
        "train.micro_batch_size = 8",
        "measurements.enabled = [@measurements.noise_scale_probe]",
        "measurements.noise_scale_probe.num_draws = 12",
        "measurements.noise_scale_probe.every_n_updates = 20"],
        output_dir=str(output), print_fn=lambda *_: None)
    return _only_run(output)


def test_a_run_probes_at_its_updates_and_at_the_end(probed_run):
    result = read_json(os.path.join(probed_run, "result.json"))
    measured = result["measurements"]
    probes = measured["noise_probe/probes"]
    updates = result["updates"]
    assert [p["update"] for p in probes] == [20, 40, updates]
    for probe in probes:
        low, high = probe["noise_probe/b_simple_low"], probe["noise_probe/b_simple_high"]
        assert 0 < low <= high
        assert probe["noise_probe/trace_sigma_low"] <= probe["noise_probe/trace_sigma"] \
            <= probe["noise_probe/trace_sigma_high"]
        assert 0 <= probe["noise_probe/linearity_p"] <= 1  # three sizes: 8, 32, 128
    logged = event_values(os.path.join(probed_run, "tensorboard"), "noise_probe/b_simple_low")
    assert [step for step, _ in logged] == [20, 40, updates]
    # What the probes drew and the level of their intervals are kept beside them (the default
    # sizes b, 4b, 16b at b = 8).
    assert measured["noise_probe/settings"] == {"sizes": [8, 32, 128], "num_draws": 12,
                                                "level": 0.95, "seed": 0}


def test_the_command_line_probe_writes_a_new_file_each_time(probed_run, tmp_path, recwarn):
    config = os.path.join(probed_run, "config.gin")
    bindings = [f"probe_noise_scale.run_dir = '{probed_run}'", "probe_noise_scale.num_draws = 12",
                "probe_noise_scale.sizes = [8, 64]"]
    printed = []
    for _ in range(2):
        launch.launch([config, PROBE], bindings, output_dir=str(tmp_path),
                      print_fn=lambda *args: printed.append(" ".join(map(str, args))))
    written = sorted(os.listdir(os.path.join(probed_run, "noise_probes")))
    assert written == ["final-1.json", "final.json"]
    with open(os.path.join(probed_run, "noise_probes", "final.json")) as handle:
        first = json.load(handle)
    with open(os.path.join(probed_run, "noise_probes", "final-1.json")) as handle:
        again = json.load(handle)
    # A repeat draws other rows (the next seed): an independent repeat, not a copy.
    assert (first["seed"], again["seed"]) == (0, 1)
    assert again["noise_probe/b_simple_low"] != first["noise_probe/b_simple_low"]
    assert first["sizes"] == [8, 64] and first["num_draws"] == 12
    assert first["noise_probe/b_simple_low"] <= first["noise_probe/b_simple_high"]
    assert "noise_probe/linearity_p" not in first  # two sizes: nothing to test linearity on
    # The final weights file brings the optimizer's state: no Keras warning about skipped
    # optimizer variables, the update it was saved at, and (Adam) the preconditioned value.
    assert first["update"] == read_json(os.path.join(probed_run, "result.json"))["updates"]
    assert first["noise_probe/b_preconditioned_low"] <= first["noise_probe/b_preconditioned"] \
        <= first["noise_probe/b_preconditioned_high"]
    assert not [w for w in recwarn if "Skipping variable loading" in str(w.message)]
    # What is printed is the value and its interval, not an empty table of runs.
    assert not any(line.lstrip().startswith("run") for line in printed), printed


def test_the_probe_line_gives_four_figures_and_says_when_b_simple_is_undefined():
    values = {"noise_probe/b_simple": 42.247833211810665, "noise_probe/b_simple_low": 28.2512,
              "noise_probe/b_simple_high": 63.2631}
    assert noise_probe_run.describe(values, 0.95) == \
        "B_simple = 42.25  95% interval [28.25, 63.26]"
    values.update({"noise_probe/b_preconditioned": 7.5, "noise_probe/b_preconditioned_low": 5.0,
                   "noise_probe/b_preconditioned_high": 11.25})
    assert noise_probe_run.describe(values, 0.9).endswith(
        "90% interval [28.25, 63.26]; preconditioned 7.5  90% interval [5, 11.25]")
    values["noise_probe/linearity_p"] = 0.4321
    assert noise_probe_run.describe(values, 0.9, (8, 32, 128), 100).endswith(
        "; 100 draws at each of B = 8, 32, 128, linearity p = 0.43")
    undefined = {"noise_probe/b_simple_low": 3.0, "noise_probe/b_simple_high": float("inf")}
    assert noise_probe_run.describe(undefined, 0.95).startswith("B_simple undefined")


def test_an_open_upper_end_says_what_the_bootstrap_found():
    values = {"noise_probe/b_simple": 271.2, "noise_probe/b_simple_low": 96.61,
              "noise_probe/b_simple_high": float("inf")}
    assert noise_probe_run.describe(values, 0.95) == (
        "B_simple = 271.2  95% interval: 96.61 to unbounded "
        "(|G|^2 <= 0 in some bootstrap replicates)")
    values.update({"noise_probe/b_preconditioned": 7.5, "noise_probe/b_preconditioned_low": 5.0,
                   "noise_probe/b_preconditioned_high": float("inf")})
    assert noise_probe_run.describe(values, 0.95).endswith(
        "; preconditioned 7.5  95% interval: 5 to unbounded (|G|^2 <= 0 in some bootstrap "
        "replicates)")
    assert "inf" not in noise_probe_run.describe(values, 0.95)


def _strict(text):
    """json.loads that refuses Infinity and NaN, as JavaScript's JSON.parse does."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_the_command_line_probe_prints_once_and_writes_standard_json(probed_run, tmp_path,
                                                                      monkeypatch, capsys,
                                                                      caplog):
    """An unbounded end is null in the file (as in report.json), and the line appears once:
    not as a log line and a printed line."""
    def probe(model, data, sizes, num_draws, seed, level):
        return {"noise_probe/b_simple": 271.0, "noise_probe/b_simple_low": 96.6,
                "noise_probe/b_simple_high": float("inf"), "noise_probe/trace_sigma": 6.7,
                "noise_probe/trace_sigma_low": 4.6, "noise_probe/trace_sigma_high": 9.5,
                "noise_probe/gradient_sq_norm": 0.025,
                "noise_probe/gradient_sq_norm_low": float("-inf"),
                "noise_probe/gradient_sq_norm_high": 0.049}

    monkeypatch.setattr(noise_probe_run, "probe", probe)
    run = str(tmp_path / "run")  # a copy: the other tests count the files of the shared run
    shutil.copytree(probed_run, run, ignore=shutil.ignore_patterns("noise_probes"))
    caplog.set_level("INFO")
    launch.launch([os.path.join(run, "config.gin"), PROBE],
                  [f"probe_noise_scale.run_dir = '{run}'"], output_dir=str(tmp_path / "out"),
                  print_fn=lambda *_: None)
    captured = capsys.readouterr()
    everything = captured.out + captured.err + caplog.text
    assert everything.count("B_simple = 271") == 1, everything
    with open(os.path.join(run, "noise_probes", "final.json")) as handle:
        written = _strict(handle.read())
    assert written["noise_probe/b_simple_high"] is None
    assert written["noise_probe/gradient_sq_norm_low"] is None
    assert written["noise_probe/b_simple_low"] == 96.6


def test_probe_files_of_one_name_are_counted_exactly(tmp_path):
    """``update-90.json`` is not a probe of update 9: the first probe of update 9 is
    ``update-9.json``, its repeat ``update-9-1.json``."""
    directory = tmp_path / "noise_probes"
    directory.mkdir()
    (directory / "update-90.json").write_text("{}")
    (directory / "update-90-1.json").write_text("{}")
    path, index = noise_probe_run._output_path(str(tmp_path), "update-9")
    assert (os.path.basename(path), index) == ("update-9.json", 0)
    path, index = noise_probe_run._output_path(str(tmp_path), "update-9")
    assert (os.path.basename(path), index) == ("update-9-1.json", 1)


@pytest.mark.parametrize("binding, message", [
    ("probe_noise_scale.sizes = 8", "must be a list of two or three batch sizes"),
    ("probe_noise_scale.sizes = [8, 8]", "two or more distinct batch sizes"),
    ("probe_noise_scale.level = 0", "must be above 0 and below 1"),
    ("probe_noise_scale.num_draws = 1", "at least 2"),
    ("probe_noise_scale.checkpoint = 'epoch-0'", "'epoch-N' \\(N >= 1\\)"),
])
def test_bad_probe_settings_are_refused_before_loading(probed_run, tmp_path, binding, message):
    run = str(tmp_path / "run")
    shutil.copytree(probed_run, run, ignore=shutil.ignore_patterns("noise_probes"))
    with pytest.raises(ValueError, match=message):
        launch.launch([os.path.join(run, "config.gin"), PROBE],
                      [f"probe_noise_scale.run_dir = '{run}'", binding],
                      output_dir=str(tmp_path / "out"), print_fn=lambda *_: None)
    assert not os.path.exists(os.path.join(run, "noise_probes"))


def test_a_kept_training_checkpoint_is_probed_by_its_update_or_as_the_latest(tmp_path):
    """Checkpoints every 20 updates (two kept): 'latest' probes the newest, an update number the
    one saved there, with the optimizer's state (SGD: no preconditioner); one not kept is
    refused, naming those that are."""
    output = tmp_path / "runs"
    launch.launch([DIGITS], ["train.epochs = 2", "train.verbose = 0", "train.batch_size = 32",
                             "measurements.enabled = []", "checkpoints.every_n_updates = 20"],
                  output_dir=str(output), print_fn=lambda *_: None)
    run = _only_run(output)
    kept = sorted(os.listdir(os.path.join(run, "checkpoints")))
    assert kept[-2:] == ["state-000000060.npz", "state-000000080.npz"], kept
    config = os.path.join(run, "config.gin")
    common = [f"probe_noise_scale.run_dir = '{run}'", "probe_noise_scale.num_draws = 4",
              "probe_noise_scale.sizes = [8, 32, 128]"]
    for checkpoint, name in (("'latest'", "update-80.json"), ("60", "update-60.json")):
        launch.launch([config, PROBE], common + [f"probe_noise_scale.checkpoint = {checkpoint}"],
                      output_dir=str(tmp_path / "out"), print_fn=lambda *_: None)
        written = read_json(os.path.join(run, "noise_probes", name))
        assert written["update"] == int(name[len("update-"):-len(".json")])
        assert written["weights"].endswith(f"state-{written['update']:09d}.npz")
    with pytest.raises(FileNotFoundError, match=r"No training checkpoint at update 20 .*kept: "
                                                r"60, 80"):
        launch.launch([config, PROBE], common + ["probe_noise_scale.checkpoint = 20"],
                      output_dir=str(tmp_path / "out"), print_fn=lambda *_: None)


def test_the_command_line_probe_needs_a_run_directory(tmp_path):
    with pytest.raises(ValueError, match="probe_noise_scale.run_dir"):
        launch.launch([DIGITS, PROBE], ["probe_noise_scale.run_dir = '/nonexistent/run'"],
                      output_dir=str(tmp_path), print_fn=lambda *_: None)


def test_an_epochs_weights_file_is_probed_with_its_optimizer_state(tmp_path):
    """``checkpoints.every_epoch`` files hold the optimizer's variables as final.weights.h5 does
    (the docs said they held none and could not be probed): 'epoch-1' probes the weights after
    the first epoch, Adam's moments included (the preconditioned value); an epoch not saved is
    refused, naming those that are."""
    output = tmp_path / "runs"
    launch.launch([DIGITS], ["train.epochs = 2", "train.verbose = 0", "train.batch_size = 32",
                             "train.optimizer = @keras.optimizers.Adam",
                             "measurements.enabled = []", "checkpoints.every_epoch = True"],
                  output_dir=str(output), print_fn=lambda *_: None)
    run = _only_run(output)
    config = os.path.join(run, "config.gin")
    common = [f"probe_noise_scale.run_dir = '{run}'", "probe_noise_scale.num_draws = 4",
              "probe_noise_scale.sizes = [8, 32, 128]"]
    launch.launch([config, PROBE], common + ["probe_noise_scale.checkpoint = 'epoch-1'"],
                  output_dir=str(tmp_path / "out"), print_fn=lambda *_: None)
    written = read_json(os.path.join(run, "noise_probes", "epoch-1.json"))
    updates = read_json(os.path.join(run, "result.json"))["updates"]
    assert written["update"] == updates // 2  # 45 of 90
    assert written["weights"].endswith("epoch-001.weights.h5")
    assert "noise_probe/b_preconditioned" in written
    with pytest.raises(FileNotFoundError, match=r"epochs saved: 1, 2"):
        launch.launch([config, PROBE], common + ["probe_noise_scale.checkpoint = 'epoch-5'"],
                      output_dir=str(tmp_path / "out"), print_fn=lambda *_: None)
