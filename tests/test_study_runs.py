"""Studies that train (tiny MLP on digits, 1 epoch): study.json, failures, relaunch, --report,
HParams, --jobs=2 child processes, and bad input that must stop before any run."""

import glob
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2

from experiments import launch
from experiments.launch import study_dir as study_dir_lib
from tests.helpers import event_tags, event_values, read_json, run_dirs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = """include 'gin/experiments/digits_mlp.gin'
train.verbose = 0
train.eval_batch_size = 512
keras.optimizers.SGD.momentum = 0.0
measurements.enabled = []
study.batch_sizes = [64, 128]
study.learning_rates = [0.1, 1e12]
study.epochs = [1]
study.eval_every_n_updates = 5
study.target = 0.5
"""


def write_study(directory, text=TINY, name="tiny"):
    path = os.path.join(directory, f"{name}.gin")
    with open(path, "w") as handle:
        handle.write(text)
    return path


def run_study(gin_file, output, bindings=(), **kwargs):
    return launch.launch([gin_file], list(bindings), output_dir=str(output),
                         print_fn=lambda *_: None, run_name="r", **kwargs)


@pytest.fixture(scope="module")
def study_output(tmp_path_factory):
    """One 4-run study (B 64/128 × lr 0.1/1e12): the two runs at lr 1e12 fail with a NaN."""
    root = tmp_path_factory.mktemp("study")
    gin_file = write_study(str(root))
    outcome = run_study(gin_file, root / "runs")
    return root, gin_file, outcome


@pytest.mark.slow
def test_a_failing_run_does_not_stop_the_study(study_output):
    _, _, outcome = study_output
    study_dir = outcome["study_dir"]
    state = read_json(os.path.join(study_dir, "study.json"))
    status = {run["name"]: run["status"] for run in state["runs"]}
    assert status == {"b64_lr0.1_s0": "finished", "b64_lr1e+12_s0": "failed",
                      "b128_lr0.1_s0": "finished", "b128_lr1e+12_s0": "failed"}
    failed = [run for run in state["runs"] if run["status"] == "failed"]
    assert all("loss became nan" in run["error"] for run in failed)
    assert state["axes"]["batch_sizes"] == [64, 128] and state["target"]["value"] == 0.5
    report = open(os.path.join(study_dir, "report.md")).read()
    assert "2 run(s) failed" in report and "loss became nan" in report


@pytest.mark.slow
def test_runs_record_the_validation_curve_and_hparams(study_output):
    study_dir = study_output[2]["study_dir"]
    run = os.path.join(study_dir, "b64_lr0.1_s0")
    result = read_json(os.path.join(run, "result.json"))
    # The experiment is the study's gin file; the group its directory (not the other way).
    assert (result["experiment"], result["group"]) == ("tiny", os.path.basename(study_dir))
    curve = result["measurements"]["curve"]
    assert [u for u, _ in curve["val_accuracy"]] == [5, 10, 15, 20, 23]  # ceil(1438/64) = 23
    assert event_values(os.path.join(run, "tensorboard"), "validation_curve/val_loss")
    hparams = session_hparams(os.path.join(run, "tensorboard"))
    assert hparams["batch_size"] == 64 and hparams["learning_rate"] == pytest.approx(0.1)
    assert hparams["micro_batch_size"] == "none" and hparams["epochs"] == 1
    assert "hparams/val_accuracy" in event_tags(os.path.join(run, "tensorboard"))


def session_hparams(log_dir):
    """{name: value} of the HParams session-start summary written under ``log_dir``."""
    for path in tf.io.gfile.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(
                        value.metadata.plugin_data.content)
                    return {k: getattr(v, v.WhichOneof("kind"))
                            for k, v in data.session_start_info.hparams.items()}
    raise AssertionError(f"no HParams session in {log_dir}")


@pytest.mark.slow
def test_relaunch_runs_only_unfinished_runs(study_output, tmp_path):
    root, gin_file, outcome = study_output
    output = tmp_path / "runs"
    shutil.copytree(root / "runs", output)
    study_dir = os.path.join(output, os.path.relpath(outcome["study_dir"], root / "runs"))
    killed = os.path.join(study_dir, "b128_lr0.1_s0")
    with open(os.path.join(killed, "status.json"), "w") as handle:
        json.dump({"status": "running"}, handle)  # as a killed run leaves it
    kept = os.path.join(study_dir, "b64_lr0.1_s0", "result.json")
    before = os.path.getmtime(kept)
    again = run_study(gin_file, output)
    ran = sorted(o.name for o in again["outcomes"])
    assert ran == ["b128_lr0.1_s0", "b128_lr1e+12_s0", "b64_lr1e+12_s0"]
    assert os.path.getmtime(kept) == before
    assert not os.path.exists(killed + ".attempt-1")  # an interrupted run resumes in place
    assert read_json(os.path.join(killed, "status.json"))["status"] == "finished"
    state = read_json(os.path.join(study_dir, "study.json"))
    assert [r["status"] for r in state["runs"]].count("finished") == 2


@pytest.mark.slow
def test_report_is_rebuilt_from_stored_results(study_output, tmp_path):
    root, _, outcome = study_output
    study_dir = str(tmp_path / "copy")
    shutil.copytree(outcome["study_dir"], study_dir)
    for name in ("report.md", "steps_to_result.png"):
        os.remove(os.path.join(study_dir, name))
    shutil.rmtree(os.path.join(study_dir, "tensorboard"))
    process = subprocess.run([sys.executable, "main.py", f"--report={study_dir}"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr[-2000:]
    assert "# Batch-size study: tiny" in process.stdout
    assert os.path.exists(os.path.join(study_dir, "steps_to_result.png"))
    tags = event_tags(os.path.join(study_dir, "tensorboard"))
    assert {"report/steps_to_result", "report/final_metric", "_hparams_/experiment"} <= tags
    assert len(run_dirs(study_dir)) == 4  # nothing retrained, nothing moved aside
    assert not os.path.exists(os.path.join(study_dir, "b64_lr0.1_s0.attempt-1"))


@pytest.mark.slow
def test_jobs_2_runs_children_with_clean_logs(tmp_path):
    gin_file = write_study(str(tmp_path), TINY.replace("[0.1, 1e12]", "[0.1]"))
    process = subprocess.run(
        [sys.executable, "main.py", f"--gin_file={gin_file}", f"--output_dir={tmp_path / 'o'}",
         "--jobs=2", "--run_name=j"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-2000:]
    assert "[2/2]" in process.stdout and "done 2, running 0, failed 0" in process.stdout
    study_dir = tmp_path / "o" / "tiny" / "j"
    for name in ("b64_lr0.1_s0", "b128_lr0.1_s0"):
        log = open(study_dir / name / "log.txt", encoding="utf-8").read()
        assert log and "\x1b" not in log
        assert read_json(study_dir / name / "status.json")["status"] == "finished"
    assert os.path.exists(study_dir / "report.md")


# ---- bad input: a clear error, nothing written ------------------------------------------------

BAD = [
    ("study.batch_sizes = []", "study.batch_sizes is empty"),
    ("study.target_metric = 'val_accurcy'", r"'val_accurcy' is not logged.*val_accuracy"),
    ("train.optimizer = @scaled_learning_rate",
     r"In study run 'b64_lr0.1_s0'.*no parameter 'learning_rate'"),
    ("study.micro_batch_sizes = [48]", r"In study run 'b64_m48_lr0.1_s0'"),
    ("study.rules = ['linear']", "not both"),
    ("study.micro_batch_sizes = [256]", r"grid is empty.*\[256\].*\[64, 128\]"),
    ("study.micro_batch_sizes = [None, 64]", r"both named 'b64_m64_lr0.1_s0'.*equal to B and None"),
]


@pytest.mark.parametrize("binding, message", BAD)
def test_bad_study_input_stops_before_any_run(tmp_path, binding, message):
    gin_file = write_study(str(tmp_path))
    with pytest.raises(launch.ConfigError, match=message):
        run_study(gin_file, tmp_path / "runs", [binding])
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.parametrize("shard", ["2/2", "x/2", "1"])
def test_bad_shard_stops_before_any_run(tmp_path, shard):
    gin_file = write_study(str(tmp_path))
    with pytest.raises(launch.ConfigError, match="--shard"):
        run_study(gin_file, tmp_path / "runs", shard=shard)
    assert not os.path.exists(tmp_path / "runs")


def test_a_different_study_under_the_same_run_name_is_refused(tmp_path):
    gin_file = write_study(str(tmp_path))
    study_dir = tmp_path / "runs" / "tiny" / "r"
    study_dir.mkdir(parents=True)
    spec = launch.launcher.study_lib.study(batch_sizes=[8], learning_rates=[0.1], epochs=[1],
                                           eval_every_n_updates=5, target=0.5)
    study_dir_lib.write(str(study_dir), study_dir_lib.new_state("tiny", [gin_file], [], spec, []))
    with pytest.raises(launch.ConfigError, match=r"different study.*batch_sizes: \[8\] -> "
                                                 r"\[64, 128\].*learning_rates"):
        run_study(gin_file, tmp_path / "runs")
    assert os.listdir(study_dir) == ["study.json"]


# ---- the shipped studies, shrunk by their "# smoke-test:" line ---------------------------------

STUDIES = sorted(os.path.relpath(p, REPO) for p in
                 glob.glob(os.path.join(REPO, "gin", "studies", "*.gin")))


def smoke_bindings(path):
    with open(os.path.join(REPO, path)) as handle:
        return [b.strip() for line in handle if line.startswith("# smoke-test:")
                for b in line.split(":", 1)[1].split(";") if b.strip()]


def test_the_shipped_studies_exist():
    assert {"gin/studies/batch_size.gin", "gin/studies/steps_to_result.gin"} <= set(STUDIES)


@pytest.mark.slow
@pytest.mark.parametrize("path", STUDIES)
def test_shipped_study_smoke(path, tmp_path):
    bindings = ["train.verbose = 0"] + smoke_bindings(path)
    assert len(bindings) > 1, f"{path} needs a '# smoke-test:' line"
    outcome = launch.launch([path], bindings, output_dir=str(tmp_path), print_fn=lambda *_: None)
    statuses = [o.status for o in outcome["outcomes"]]
    assert statuses and set(statuses) == {"finished"}, [o.error for o in outcome["outcomes"]]
    report = open(os.path.join(outcome["study_dir"], "report.md")).read()
    assert "## Answers" in report and "| run |" in report


@pytest.mark.slow
def test_a_sweep_runs_through_the_same_executor_with_jobs_2(tmp_path):
    bindings = ["train.verbose = 0", "train.epochs = 1", "measurements.enabled = []",
                "sweep.variants = {'b64': ['train.batch_size = 64'], "
                "'bad': ['keras.optimizers.SGD.learning_rate = 1e12', "
                "'keras.optimizers.SGD.momentum = 0.0'], "
                "'nofile': ['train.data_fn = @csv_file', "
                f"'csv_file.path = \"{tmp_path}/missing.csv\"', "
                "'csv_file.label_column = \"label\"']}"]
    results = launch.launch(["gin/experiments/digits_mlp.gin"], bindings,
                            output_dir=str(tmp_path), print_fn=lambda *_: None, jobs=2,
                            run_name="s")
    assert [(r["run"], r["status"]) for r in results] == [
        ("b64", "finished"), ("bad", "failed"), ("nofile", "failed")]
    assert "loss became nan" in results[1]["error"]
    group = tmp_path / "digits_mlp" / "s"
    table = open(group / "table.txt").read()
    assert "b64" in table and "\x1b" not in open(group / "b64" / "log.txt").read()
    # Refused before its run directory existed: its reason is kept in the table and sweep.json,
    # and --list counts it as failed, not missing.
    assert not (group / "nofile").exists()
    assert "missing.csv" in read_json(str(group / "sweep.json"))["errors"]["nofile"]
    assert "nofile: " in table.split("Failed:")[1]
    from experiments.launch import listing
    assert listing.group_line(str(group))[1].startswith("3 variants: 2 failed, 1 finished")


@pytest.mark.slow
def test_sigterm_stops_the_workers_and_a_relaunch_finishes_the_study(tmp_path):
    """--jobs=2 stopped mid-run: no worker outlives the launcher, the runs in progress say
    'interrupted', and the same command run again trains only what is left."""
    import signal
    import time

    gin_file = write_study(str(tmp_path), TINY.replace("[0.1, 1e12]", "[0.1]").replace(
        "study.epochs = [1]", "study.epochs = [400]"))
    command = [sys.executable, "main.py", f"--gin_file={gin_file}",
               f"--output_dir={tmp_path / 'o'}", "--jobs=2", "--run_name=k"]
    study_dir = tmp_path / "o" / "tiny" / "k"
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    run = study_dir / "b64_lr0.1_s0"
    while time.time() < deadline and not (run / "tensorboard" / "train").exists():
        time.sleep(0.2)
    time.sleep(2.0)  # inside training, where the runner turns SIGTERM into a checkpoint
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 143 and "relaunch with the same --run_name" in output
    assert "In call to configurable" not in output
    processes = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [line for line in processes.splitlines() if "--worker" in line and gin_file in line]
    assert study_dir_lib.run_status(str(study_dir / "b64_lr0.1_s0"))[0] == "interrupted"
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert not os.path.exists(study_dir / "b64_lr0.1_s0.attempt-1")  # resumed in place...
    resumed = read_json(study_dir / "b64_lr0.1_s0" / "result.json")["resumed_at_updates"]
    assert resumed and resumed[0] > 0  # ...from the checkpoint its SIGTERM saved
    assert {r["status"] for r in read_json(study_dir / "study.json")["runs"]} == {"finished"}


@pytest.mark.slow
def test_a_sigkilled_launcher_leaves_no_worker_training(tmp_path):
    """--jobs=2 and the launcher SIGKILLed mid-run: its worker stops within 5 s (the kernel's
    parent-death signal) instead of training its run to the end unattended."""
    import signal
    import time

    gin_file = write_study(str(tmp_path), TINY.replace("[0.1, 1e12]", "[0.1]").replace(
        "study.epochs = [1]", "study.epochs = [5000]"))
    command = [sys.executable, "main.py", f"--gin_file={gin_file}",
               f"--output_dir={tmp_path / 'o'}", "--jobs=2", "--run_name=k"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    study_dir = tmp_path / "o" / "tiny" / "k"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(study_dir.glob("*/tensorboard/train"))) < 2:
        time.sleep(0.2)
    assert len(list(study_dir.glob("*/tensorboard/train"))) == 2, "both runs never started"

    def workers():
        lines = subprocess.run(["ps", "-ww", "-eo", "stat=,args="], capture_output=True,
                               text=True).stdout.splitlines()
        return [line for line in lines if "--worker" in line and gin_file in line
                and not line.lstrip().startswith("Z")]

    assert workers()
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.time() + 5
    while workers() and time.time() < deadline:
        time.sleep(0.1)
    assert not workers()


def _session_info(log_dir):
    """(session start group name, session end status) written under ``log_dir``."""
    group, status = None, None
    for path in tf.io.gfile.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(
                    value.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    group = data.session_start_info.group_name
                if data.HasField("session_end_info"):
                    status = data.session_end_info.status
    return group, status


@pytest.mark.slow
def test_hparams_read_back_equal_result_json(study_output):
    """Every hparams/<metric> scalar of a finished run equals result.json's value (the gap is
    the gap callback's own, not fit's running average); trial ids are run names; the status
    is success; the study's own columns (steps to target, examples/s) are there."""
    from tensorboard.plugins.hparams import api_pb2

    from callbacks.hparams import final_metrics

    study_dir = study_output[2]["study_dir"]
    run = os.path.join(study_dir, "b64_lr0.1_s0")
    log_dir = os.path.join(run, "tensorboard")
    result = read_json(os.path.join(run, "result.json"))
    expected = final_metrics(result["final_epoch"])
    written = {}
    for path in tf.io.gfile.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag.startswith("hparams/"):
                    written[value.tag[len("hparams/"):]] = float(tf.make_ndarray(value.tensor))
    for name, value in expected.items():
        assert written[name] == pytest.approx(value, rel=1e-6), name
    assert written["examples_per_sec"] == pytest.approx(result["examples_per_sec"], rel=1e-6)
    from experiments.analysis.study_statistics import crossing
    steps, _ = crossing(result["measurements"]["curve"]["val_accuracy"], 0.5)
    if steps is None:  # never reached: NaN (overwrites an earlier target's), never a number
        assert math.isnan(written["steps_to_target"]) and written["reached_target"] == 0.0
    else:
        assert written["steps_to_target"] == pytest.approx(steps, rel=1e-6)
    group, status = _session_info(log_dir)
    assert group == "b64_lr0.1_s0" and status == api_pb2.STATUS_SUCCESS
    with open(os.path.join(study_dir, "report.json")) as handle:
        assert "b_crit_interval" in json.load(handle)


@pytest.mark.slow
def test_a_relaunch_or_shard_with_other_base_bindings_is_refused(study_output, tmp_path):
    """Runs trained on two configurations must not share one study: the base configuration
    (files and bindings, as parsed) is kept in study.json and compared, nothing written."""
    from experiments.launch.gin_config import ConfigError

    root, gin_file, outcome = study_output
    output = tmp_path / "runs"
    shutil.copytree(root / "runs", output)
    study_dir = os.path.join(output, os.path.relpath(outcome["study_dir"], root / "runs"))
    before = open(os.path.join(study_dir, "study.json")).read()
    with pytest.raises(ConfigError, match="another configuration") as error:
        run_study(gin_file, output, ["keras.optimizers.SGD.momentum = 0.9"])
    assert "momentum = 0.9" in str(error.value)
    with pytest.raises(ConfigError, match="another configuration"):
        run_study(gin_file, output, ["keras.optimizers.SGD.momentum = 0.9"], shard="1/2")
    assert open(os.path.join(study_dir, "study.json")).read() == before
    assert not os.path.exists(os.path.join(study_dir, "b64_lr1e+12_s0.attempt-1"))


def test_a_study_is_not_written_into_a_directory_that_holds_no_study(tmp_path):
    from experiments.launch.gin_config import ConfigError

    gin_file = write_study(str(tmp_path))
    taken = tmp_path / "runs" / "tiny" / "r"
    os.makedirs(taken)
    (taken / "result.json").write_text("{}")  # a finished single run, say
    with pytest.raises(ConfigError, match="holds no study"):
        run_study(gin_file, tmp_path / "runs")
    assert sorted(os.listdir(taken)) == ["result.json"]


SWEEP = """include 'gin/experiments/digits_mlp.gin'
train.verbose = 0
train.epochs = 1
train.batch_size = 256
measurements.enabled = []
sweep.variants = {'a': ('train.seed = 1',)}
"""


@pytest.mark.slow
def test_a_named_sweep_relaunches_and_refuses_other_base_bindings(tmp_path):
    """Variants written as tuples relaunch by name (sweep.json holds lists); a relaunch with
    another base binding is refused with the difference."""
    from experiments.launch.gin_config import ConfigError

    gin_file = write_study(str(tmp_path), SWEEP, name="sw")
    first = launch.launch([gin_file], [], output_dir=str(tmp_path / "runs"),
                          print_fn=lambda *_: None, run_name="s")
    again = launch.launch([gin_file], [], output_dir=str(tmp_path / "runs"),
                          print_fn=lambda *_: None, run_name="s")
    assert [r["status"] for r in first] == [r["status"] for r in again] == ["finished"]
    with pytest.raises(ConfigError, match="another configuration") as error:
        launch.launch([gin_file], ["train.epochs = 2"], output_dir=str(tmp_path / "runs"),
                      print_fn=lambda *_: None, run_name="s")
    assert "train.epochs = 2" in str(error.value)


def test_a_shard_that_finds_the_study_written_while_it_prepares_joins_it(tmp_path, monkeypatch):
    """Two shards started together: the second read no study.json, checked its runs' configs
    (seconds), and by then the first had written study.json: it refused the directory as
    holding "no study"."""
    from experiments.launch import points, study_launch

    gin_file = write_study(str(tmp_path))
    first = run_study(gin_file, tmp_path / "runs", shard="0/2")
    written = open(os.path.join(first["study_dir"], "study.json")).read()
    shutil.rmtree(first["study_dir"])
    check_all = points.check_all

    def check_while_the_other_shard_writes(*args, **kwargs):
        check_all(*args, **kwargs)
        os.makedirs(first["study_dir"], exist_ok=True)
        with open(os.path.join(first["study_dir"], "study.json"), "w") as handle:
            handle.write(written)

    monkeypatch.setattr(study_launch.points, "check_all", check_while_the_other_shard_writes)
    second = run_study(gin_file, tmp_path / "runs", shard="1/2")
    assert second["study_dir"] == first["study_dir"]
