"""Data-parallel virtual batches give the single-device update, through ``main.py``.

The digits MLP at B = 256, b = 32 (two epochs, 6 updates each, last virtual batch 158 rows, split
unevenly over the replicas) is trained three ways: on one device in this process, under
MirroredStrategy over two logical CPU devices, and under MultiWorkerMirroredStrategy with two worker
processes on localhost. Both strategies must be set up before TensorFlow starts, so they run in
subprocesses. Weights, logged metrics and the run directory layout are compared.
"""

import glob
import json
import os
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from experiments import launch
from tests.helpers import saved_at_least

# Every case trains through main.py child processes (MirroredStrategy, two-worker jobs): slow.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINDINGS = ["train.epochs = 2", "train.verbose = 0"]
TIMEOUT_S = 180


def _weights(run_dir):
    """Every array of final.weights.h5, in file order."""
    arrays = []
    with h5py.File(os.path.join(run_dir, "checkpoints", "final.weights.h5"), "r") as handle:
        handle.visititems(lambda name, item: arrays.append(item[()])
                          if isinstance(item, h5py.Dataset) else None)
    return arrays


def _result(run_dir):
    with open(os.path.join(run_dir, "result.json")) as handle:
        return json.load(handle)


def _only_run(output_dir, experiment):
    runs = glob.glob(os.path.join(output_dir, experiment, "*"))
    assert len(runs) == 1, runs
    return runs[0]


def _main(gin_file, output_dir, bindings=(), env=None, flags=()):
    """Starts ``main.py``; its output goes to a log file (a full pipe would stall the run)."""
    command = [sys.executable, os.path.join(REPO, "main.py"), f"--gin_file={gin_file}",
               f"--output_dir={output_dir}", *flags]
    command += [f"--gin_bindings={b}" for b in list(BINDINGS) + list(bindings)]
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    log = open(os.path.join(output_dir, f"main-{len(os.listdir(output_dir))}.log"), "w+")
    process = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=log,
                               stderr=subprocess.STDOUT, text=True)
    process.log = log
    return process


def _finish(process, returncode=0):
    """The process's output once it has ended with ``returncode``."""
    try:
        process.wait(timeout=TIMEOUT_S)
    finally:
        process.log.seek(0)
        output = process.log.read()
        process.log.close()
    assert process.returncode == returncode, output[-3000:]
    return output


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Starts the distributed runs at once (they mostly wait on imports), then the reference.

    Returns {'single': run dir, 'mirrored': (process, output dir), 'multi_worker': ([processes],
    output dir, scratch dirs)}.
    """
    mirrored_dir = str(tmp_path_factory.mktemp("mirrored"))
    mirrored = _main("gin/experiments/virtual_batch.gin", mirrored_dir,
                     ["train.strategy = @mirrored", "mirrored.num_cpu_devices = 2"])
    multi_dir = str(tmp_path_factory.mktemp("multi_worker"))
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    processes, scratch = [], []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        scratch.append(tmp_path_factory.mktemp(f"tmp{index}"))
        processes.append(_main("gin/experiments/virtual_batch_distributed.gin", multi_dir,
                               env={"TF_CONFIG": json.dumps(tf_config),
                                    "TMPDIR": str(scratch[-1])}))
    try:
        single_dir = str(tmp_path_factory.mktemp("single"))
        launch.launch(["gin/experiments/virtual_batch.gin"], BINDINGS, single_dir,
                      print_fn=lambda *_: None)
        yield {"single": _only_run(single_dir, "virtual_batch"),
               "mirrored": (mirrored, mirrored_dir),
               "multi_worker": (processes, multi_dir, scratch)}
    finally:
        for process in [mirrored, *processes]:
            if process.poll() is None:
                process.kill()
                process.wait()


def _assert_same_training(run, reference, updates=12):
    got, want = _weights(run), _weights(reference)
    assert len(got) == len(want) >= 6
    diff = np.concatenate([(g - w).ravel() for g, w in zip(got, want)])
    norm = np.concatenate([w.ravel() for w in want])
    assert np.linalg.norm(diff) / np.linalg.norm(norm) <= 1e-5
    result, expected = _result(run), _result(reference)
    assert result["updates"] == expected["updates"] == updates
    for part in ("final_epoch", "final_validation"):
        for name, value in expected[part].items():
            # Metrics are read across replicas: exact over every row, not a mean of replicas.
            assert result[part][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (part, name)


def test_mirrored_strategy_on_two_logical_cpus(runs):
    process, output_dir = runs["mirrored"]
    _finish(process)
    _assert_same_training(_only_run(output_dir, "virtual_batch"), runs["single"])


def test_multi_worker_mirrored_strategy_with_two_local_workers(runs):
    processes, output_dir, scratch = runs["multi_worker"]
    for process in processes:
        _finish(process)
    # Only the chief (worker 0) writes into output_dir; worker 1 trained in a scratch directory
    # that it removed when it ended.
    chief = _only_run(output_dir, "virtual_batch_distributed")
    assert not glob.glob(str(scratch[0] / "batchlab-*"))
    assert not glob.glob(str(scratch[1] / "batchlab-*"))
    _assert_same_training(chief, runs["single"])


def _workers(output_dir, scratch, bindings, flags):
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(_main("gin/experiments/virtual_batch_distributed.gin", output_dir,
                               bindings, env={"TF_CONFIG": json.dumps(tf_config),
                                              "TMPDIR": str(scratch[index])}, flags=flags))
    return processes


def test_a_multi_worker_job_resumes_every_worker_after_one_dies(tmp_path):
    """Worker 1 is killed mid-run (worker 0 then waits on it for ever and is killed too, as a
    scheduler would); relaunching the job resumes both from the chief's newest checkpoint and
    ends where a single device ends."""
    bindings = ["train.epochs = 4", "checkpoints.every_n_updates = 2"]
    scratch = [tmp_path / "tmp0", tmp_path / "tmp1"]
    for path in scratch:
        path.mkdir()
    output_dir = str(tmp_path / "runs")
    os.makedirs(output_dir)
    processes = _workers(output_dir, scratch, bindings, ["--run_name=job"])
    checkpoints = os.path.join(output_dir, "virtual_batch_distributed", "job", "checkpoints")
    try:
        deadline = time.time() + TIMEOUT_S
        while not saved_at_least(checkpoints, 6):  # the newest two are kept: >= 6, not == 6
            assert time.time() < deadline and all(p.poll() is None for p in processes)
            time.sleep(0.05)
        processes[1].kill()
        processes[0].kill()
    finally:
        for process in processes:
            process.wait()
    processes = _workers(output_dir, scratch, bindings, ["--run_name=job"])
    for process in processes:
        _finish(process)
    single_dir = str(tmp_path / "single")
    launch.launch(["gin/experiments/virtual_batch.gin"], BINDINGS + bindings[:1], single_dir,
                  print_fn=lambda *_: None)
    chief = os.path.join(output_dir, "virtual_batch_distributed", "job")
    result = _result(chief)
    assert result["resumed_at_updates"][0] >= 6 and result["updates"] == 24
    _assert_same_training(chief, _only_run(single_dir, "virtual_batch"), updates=24)
    assert not glob.glob(str(scratch[1] / "batchlab-*"))


def test_one_device_gives_the_same_numbers_whatever_the_loop_or_strategy(runs, tmp_path):
    """virtual_batch_distributed.gin without TF_CONFIG (one worker), virtual_batch.gin through
    batchlab's loop and through ``model.fit``: one data order, one update, identical metrics."""
    output_dir = str(tmp_path / "one_worker")
    os.makedirs(output_dir)
    _finish(_main("gin/experiments/virtual_batch_distributed.gin", output_dir))
    keras_dir = str(tmp_path / "keras")
    launch.launch(["gin/experiments/virtual_batch.gin"], BINDINGS + ["fit.loop = 'keras'"],
                  keras_dir, print_fn=lambda *_: None)
    expected = _result(runs["single"])
    for run in (_only_run(output_dir, "virtual_batch_distributed"),
                _only_run(keras_dir, "virtual_batch")):
        result = _result(run)
        for part in ("final_epoch", "final_validation"):
            assert result[part] == expected[part], (run, part)


def test_a_metric_written_as_a_class_in_gin_reaches_the_strategy(tmp_path):
    """char_lm.gin's train.metrics holds @BitsPerCharacter (a class, built in the strategy's
    scope): with @mirrored on logical CPUs the run gets as far as its own refusal of several
    replicas for stateful streams, one line and no traceback, and writes no run directory.
    (Written @BitsPerCharacter() it started TensorFlow when the configuration was read, and
    the strategy failed with a traceback.)"""
    process = _main("gin/experiments/char_lm.gin", str(tmp_path), bindings=[
        "stream_text.max_characters = 30000", "NUM_STREAMS = 8",
        "stream_layout.window_length = 25", "stateful_stacked_lstm.units = (8,)",
        "train.strategy = @mirrored", "mirrored.num_cpu_devices = 2"])
    process.wait(timeout=TIMEOUT_S)
    process.log.seek(0)
    output = process.log.read()
    process.log.close()
    assert process.returncode != 0
    assert "Stateful streams run on one replica (the strategy has 2)" in output, output[-2000:]
    assert "Traceback" not in output
    assert not os.path.exists(os.path.join(tmp_path, "char_lm"))


def test_a_sweep_on_mirrored_replicas_runs_variants_of_other_batch_sizes(tmp_path):
    """A sweep runs its variants one after another in one process. Each run built a new
    MirroredStrategy, whose collective operations are numbered from the same start as the
    earlier one's: the second variant (another B, so all-reduces of other shapes) failed with
    "Shape mismatch in the collective instance"."""
    _finish(_main("gin/experiments/digits_mlp.gin", str(tmp_path), bindings=[
        "train.epochs = 2", "train.strategy = @mirrored", "mirrored.num_cpu_devices = 2",
        "train.micro_batch_size = 64", "mlp.batch_normalization = True",
        "measurements.every_n_updates = 4",
        "measurements.enabled = [@measurements.gradient_noise_scale, "
        "@measurements.validation_curve, @measurements.generalization_gap]",
        "sweep.variants = {'b256': ['train.batch_size = 256'], "
        "'b128': ['train.batch_size = 128']}"]))
    results = [_result(os.path.dirname(path)) for path in
               glob.glob(os.path.join(str(tmp_path), "**", "result.json"), recursive=True)]
    assert sorted(r["batch_size"] for r in results) == [128, 256]


def test_workers_launched_with_different_bindings_are_refused_together(tmp_path):
    """Nothing compared the workers' commands: a worker given another learning rate trained in
    step with the chief (their updates averaged), and the chief's directory recorded a
    configuration no worker ran. Every worker now refuses, before the run directory exists;
    a binding that does not change results (``checkpoints.*``) may differ."""
    output_dir = str(tmp_path / "runs")
    os.makedirs(output_dir)
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    processes = []
    for index, rate in enumerate((0.05, 0.01)):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(_main("gin/experiments/virtual_batch_distributed.gin", output_dir,
                               [f"keras.optimizers.SGD.learning_rate = {rate}",
                                f"checkpoints.every_n_updates = {index + 2}"],
                               env={"TF_CONFIG": json.dumps(tf_config),
                                    "TMPDIR": str(tmp_path)}, flags=["--run_name=job"]))
    for process in processes:
        output = _finish(process, returncode=1)
        assert "batchlab: error: The workers of this multi-worker job were launched with " \
               "different configurations" in output, output[-3000:]
    assert not os.path.exists(os.path.join(output_dir, "virtual_batch_distributed", "job"))


def test_a_lost_worker_is_one_line_saying_how_to_resume():
    """A worker killed mid-job left the chief with a 120-line traceback ending in TensorFlow's
    UnavailableError and its run marked failed; the runner now marks the run interrupted and
    raises this one line (main.py prints it), naming the checkpoint a relaunch resumes from."""
    import tensorflow as tf

    from experiments.common.errors import user_message
    from experiments.engine import distribute

    error = tf.errors.UnavailableError(
        None, None, "{{function_node __wrapped__CollectiveReduceV2_device_/job:worker/"
                    "replica:0/task:0/device:CPU:0}} "
                    "The following tasks are unhealthy (stopped sending heartbeats):\n"
                    "/job:worker/replica:0/task:1\nThe tasks have crashed.")
    lost = distribute.lost_worker(error, 20)
    assert isinstance(lost, distribute.WorkerLost)
    message = user_message(lost)
    assert message == (
        "a worker of this multi-worker job stopped answering (UnavailableError: The following "
        "tasks are unhealthy (stopped sending heartbeats):); relaunch every worker with the "
        "same command to resume from the chief's newest checkpoint (update 20) (a worker that "
        "stopped on an error of its own says why in its output).")
    assert distribute.lost_worker(ValueError("x")) is None
    assert distribute.lost_worker(tf.errors.InvalidArgumentError(None, None, "x")) is None
