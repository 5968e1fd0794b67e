"""The launch from anywhere: ``--jobs`` workers find what the user named relative to where they
launched (a gin file, its includes, ``--output_dir``), and ``--help`` lists the user flags only."""

import json
import os
import subprocess
import sys

import pytest

from experiments.launch import executor, grid, spares, worker_processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What the ``batchlab`` console script runs (pyproject.toml's [project.scripts]), without
# installing it: the same ``main.py``, the same flags.
BATCHLAB = [sys.executable, "-c", "import sys; sys.argv[0] = 'batchlab'; "
            "from experiments.launch.cli import main; main()"]

USER_RUN = """\
include 'gin/experiments/digits_mlp.gin'
train.epochs = 1
train.batch_size = 256
measurements.enabled = []
"""

USER_SWEEP = """\
include 'gin/experiments/digits_mlp.gin'
train.epochs = 1
measurements.enabled = []
sweep.variants = {
    'b128': ['train.batch_size = 128'],
    'b256': ['train.batch_size = 256'],
}
"""


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p))


def test_workers_start_in_the_launchers_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert spares.worker_cwd() == str(tmp_path)
    process = spares.popen([sys.executable, "-c", "import os; print(os.getcwd())"], 1, None)
    out, _ = process.communicate(timeout=60)
    assert os.path.samefile(out.strip(), tmp_path)  # not the repository root


@pytest.mark.slow
def test_a_worker_trains_a_job_named_relative_to_the_launchers_directory(tmp_path,
                                                                        monkeypatch):
    """A real ``--jobs`` worker, started as the pool starts one, sent a job whose gin file and run
    directory are relative to the launcher's directory (as ``--gin_file=mine.gin`` gives them):
    it trains it there. A worker started in the repository found no ``mine.gin``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.gin").write_text(USER_RUN)
    job = executor.Job(grid.RunSpec(0, "b256", (), {}), os.path.join("runs", "mine", "b256"))
    os.makedirs(os.path.dirname(job.run_dir))
    child = worker_processes.WorkerProcess.start(
        spares.worker_command(["mine.gin"], [], 1), 1, str(tmp_path / "workers.log"))
    try:
        assert child.wait_ready(), (tmp_path / "workers.log").read_text()[-3000:]
        assert child.send(worker_processes.job_message(job, ["mine.gin"], [])) == 0
    finally:
        child.close()
    log = tmp_path / "runs" / "mine" / "b256.log.txt"
    result_file = tmp_path / job.run_dir / "result.json"
    assert result_file.exists(), log.read_text()[-3000:] if log.exists() else "no log"
    assert json.loads(result_file.read_text())["batch_size"] == 256


@pytest.mark.slow
def test_jobs_2_runs_a_relative_gin_file_from_another_directory(tmp_path):
    """``batchlab --gin_file=mine.gin --jobs=2`` from the user's directory, ``mine.gin`` a sweep
    that includes a shipped experiment: both variants train into ``./runs`` there, nothing lands
    in the checkout. (Which slot trains which variant is timing: the launcher's own slot may take
    both before the worker is ready. The test above sends a worker a job deterministically.)"""
    (tmp_path / "mine.gin").write_text(USER_SWEEP)
    done = subprocess.run(BATCHLAB + ["--gin_file=mine.gin", "--jobs=2", "--output_dir=runs",
                                      "--run_name=rel"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    sweep_dir = tmp_path / "runs" / "mine" / "rel"
    status = json.loads((sweep_dir / "sweep.json").read_text())["status"]
    assert status == {"b128": "finished", "b256": "finished"}, output[-3000:]
    for name in ("b128", "b256"):
        result = json.loads((sweep_dir / name / "result.json").read_text())
        assert result["batch_size"] == int(name[1:])
    assert not os.path.exists(os.path.join(REPO, "runs", "mine"))  # nothing in the checkout


def test_help_lists_the_user_flags_only(tmp_path):
    done = subprocess.run(BATCHLAB + ["--help"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=120)
    text = done.stdout  # (absl's --help exits with status 1)
    listed = sorted(line.split(":")[0].strip().replace("--[no]", "--")
                    for line in text.splitlines() if line.startswith("  --"))
    assert listed == ["--gin_bindings", "--gin_file", "--jobs", "--list", "--output_dir",
                      "--report", "--resume", "--run_name", "--shard"]
    assert text.startswith("batchlab:"), text[:200]  # the usage names the command
    for internal in ("--worker", "--run_dir", "--intra_op_threads", "--logtostderr"):
        assert internal not in text
    full = subprocess.run(BATCHLAB + ["--helpfull"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert "--intra_op_threads" in full.stdout  # still defined, for the workers
