"""docs/cluster.md's recipes, run locally the way a cluster runs them.

- SLURM array job / Kubernetes Indexed Job: one process per shard (``--shard=$INDEX/$COUNT``),
  all with the same ``--run_name`` into one shared output directory, then ``--report`` once every
  shard has finished.
- MultiWorkerMirroredStrategy from ``TF_CONFIG``: two local worker processes, tested in
  ``tests/test_distributed.py`` (``test_multi_worker_mirrored_strategy_with_two_local_workers``
  and the resume of a killed job), which run ``main.py`` exactly as the recipe does.
"""

import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import read_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = """include 'gin/experiments/digits_mlp.gin'
train.eval_batch_size = 512
measurements.enabled = []
study.batch_sizes = [128, 256]
study.epochs = [1]
study.target = 0.3
"""


@pytest.mark.slow
def test_shards_as_separate_processes_into_one_directory_then_report(tmp_path):
    gin_file = tmp_path / "tiny_study.gin"
    gin_file.write_text(STUDY)
    output = tmp_path / "shared"
    count = 2
    shards = []
    for index in range(count):  # what each array task / indexed pod runs
        log = open(tmp_path / f"shard{index}.log", "w")
        shards.append((subprocess.Popen(
            [sys.executable, "main.py", f"--gin_file={gin_file}", f"--output_dir={output}",
             "--run_name=job42", f"--shard={index}/{count}"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log))
    for process, log in shards:
        process.wait(timeout=600)
        log.close()
        assert process.returncode == 0, open(log.name).read()[-3000:]
    study_dir = output / "tiny_study" / "job42"
    report = subprocess.run([sys.executable, "main.py", f"--report={study_dir}"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    state = read_json(str(study_dir / "study.json"))
    assert {run["name"]: run["status"] for run in state["runs"]} == {
        "b128_s0": "finished", "b256_s0": "finished"}
    assert os.path.isfile(study_dir / "report.md")
    assert "b128_s0" in report.stdout and "b256_s0" in report.stdout


@pytest.mark.slow
def test_a_relaunch_waits_for_its_run_held_by_a_dying_launch_then_resumes_it(tmp_path,
                                                                             monkeypatch):
    """A requeued shard found its own run "running" (the killed launch's heartbeat still young,
    or its pid taken again) and exited 0 with the run never trained. It now waits for the runs
    another process holds and resumes those whose process is gone."""
    import threading

    from experiments import launch
    from experiments.common import json_files
    from experiments.launch import study_launch

    gin_file = tmp_path / "one_run.gin"
    gin_file.write_text(STUDY.replace("[128, 256]", "[128]").replace("[1]", "[3]"))
    output = tmp_path / "shared"
    run_dir = output / "one_run" / "job" / "b128_s0"
    first = subprocess.Popen([sys.executable, "main.py", f"--gin_file={gin_file}",
                              f"--output_dir={output}", "--run_name=job"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # the first launch is training its run
            status = json_files.read_json(str(run_dir / "status.json")) or {}
            if status.get("status") == "running" or first.poll() is not None:
                break
            threading.Event().wait(0.1)
        assert status.get("status") == "running", status
        os.kill(first.pid, signal.SIGSTOP)  # alive, holding its run, until we kill it
        monkeypatch.setattr(study_launch, "POLL_SECONDS", 0.2, raising=False)
        messages = []

        def print_fn(message):
            messages.append(str(message))
            if str(message).startswith("Waiting for"):  # the holder dies while we wait
                first.kill()
                first.wait()

        out = launch.launch([str(gin_file)], [], output_dir=str(output), print_fn=print_fn,
                            run_name="job")
    finally:
        first.kill()
        first.wait()
    assert any(m.startswith("Waiting for 1 run(s) live in another launch: b128_s0")
               for m in messages), messages
    assert [(o.name, o.status) for o in out["outcomes"]] == [("b128_s0", "finished")]
    assert read_json(str(run_dir / "status.json"))["status"] == "finished"
