"""The --jobs executor without training: slots (this process and worker processes), the order
runs are handed out, workers that die, workers started early (``spares``), the worker protocol.

The workers here are a small Python script speaking the worker protocol (ready line, one JSON job
a line, done line), so no test waits on a TensorFlow import; ``worker.run_job`` (this process's
slot) is replaced by the same fake."""

import io
import json
import os
import subprocess
import sys
import time

import pytest

from experiments.launch import executor, grid, spares, worker
from experiments.launch.outcomes import unredirected

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_WORKER = r'''
import json, os, sys, time
if os.environ.get("FAKE_WORKER_DIE_AT_START"):
    sys.exit(3)
print("BATCHLAB-WORKER-READY", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    if os.path.basename(job["run_dir"]) == "die":
        sys.exit(5)
    time.sleep(float(os.environ.get("FAKE_WORKER_SECONDS", "0.2")))
    os.makedirs(job["run_dir"])
    with open(job["log"], "w") as log:
        log.write("worker log\n")
    with open(os.path.join(job["run_dir"], "result.json"), "w") as f:
        json.dump({"pid": os.getpid(), "bindings": job["bindings"],
                   "gin_files": job["gin_files"]}, f)
    with open(os.path.join(job["run_dir"], "status.json"), "w") as f:
        json.dump({"status": "finished"}, f)
    print("BATCHLAB-WORKER-DONE {}", flush=True)
'''


@pytest.fixture
def fake_workers(tmp_path, monkeypatch):
    """Workers are FAKE_WORKER; this process's slot records the order it takes runs in."""
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    monkeypatch.setattr(spares, "worker_command",
                        lambda files, bindings, threads: [sys.executable, str(script)])
    taken_here = []

    def run_here(gin_files, bindings, run_dir, log):
        taken_here.append(os.path.basename(run_dir))
        time.sleep(0.3)
        os.makedirs(run_dir)
        with open(log, "w") as handle:
            handle.write("here log\n")
        with open(os.path.join(run_dir, "result.json"), "w") as handle:
            json.dump({"pid": os.getpid(), "bindings": bindings, "gin_files": gin_files},
                      handle)
        with open(os.path.join(run_dir, "status.json"), "w") as handle:
            json.dump({"status": "finished"}, handle)

    monkeypatch.setattr(worker, "run_job", run_here)
    return taken_here


def jobs_for(tmp_path, names, batch_sizes=None):
    specs = [grid.RunSpec(i, name, (f"train.seed = {i}",),
                          {"batch_size": b, "epochs": 10} if b else {})
             for i, (name, b) in enumerate(zip(names, batch_sizes or [None] * len(names)))]
    return [executor.Job(spec, str(tmp_path / "study" / spec.name)) for spec in specs]


def run(jobs, num_jobs=2):
    lines = []
    outcomes = executor.execute(jobs, None, ["base.gin"], ["train.epochs = 1"], num_jobs,
                                lines.append)
    return outcomes, lines


def test_this_process_and_a_worker_share_the_runs(fake_workers, tmp_path):
    jobs = jobs_for(tmp_path, [f"r{i}" for i in range(8)])
    outcomes, lines = run(jobs)
    assert [o.name for o in outcomes] == [f"r{i}" for i in range(8)]  # the jobs' order
    assert {o.status for o in outcomes} == {"finished"}
    pids = {o.result["pid"] for o in outcomes}
    assert os.getpid() in pids and len(pids) == 2  # the launcher is one of the two slots
    for outcome in outcomes:
        assert outcome.result["gin_files"] == ["base.gin"]
        assert outcome.result["bindings"][0] == "train.epochs = 1"
        assert "train.verbose = 2" in outcome.result["bindings"]
        assert open(os.path.join(outcome.run_dir, "log.txt")).read().endswith("log\n")
    assert len(lines) == 8 and "done 8, running 0, failed 0" in lines[-1]
    executor.wait_for_workers()  # what a launch does after its report: no worker outlives it
    assert not executor._CLOSING


def test_runs_are_handed_out_longest_first(fake_workers, tmp_path):
    jobs = jobs_for(tmp_path, ["b128", "b16", "b64", "b32"], [128, 16, 64, 32])
    assert executor.dispatch_order(jobs) == [1, 3, 2, 0]
    outcomes, _ = run(jobs)
    assert fake_workers[0] == "b16"  # this process starts at once, with the longest run
    assert [o.name for o in outcomes] == ["b128", "b16", "b64", "b32"]


def test_cost_estimates_updates_and_micro_batches():
    def cost(**hparams):
        return executor.cost(grid.RunSpec(0, "r", (), hparams))

    assert cost(batch_size=16, epochs=10) == 2 * cost(batch_size=32, epochs=10)
    assert cost(batch_size=32, epochs=20) == 2 * cost(batch_size=32, epochs=10)
    assert cost(batch_size=64, micro_batch_size=8, epochs=1) == cost(batch_size=8, epochs=1)
    assert cost() == 0.0  # sweeps: no hyperparameters, the order is kept
    jobs = [executor.Job(grid.RunSpec(i, f"v{i}", ()), f"d{i}") for i in range(3)]
    assert executor.dispatch_order(jobs) == [0, 1, 2]


def test_a_worker_that_dies_starting_leaves_the_runs_to_the_other_slot(
        fake_workers, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_DIE_AT_START", "1")
    jobs = jobs_for(tmp_path, ["a", "b", "c"])
    outcomes, lines = run(jobs)
    assert {o.status for o in outcomes} == {"finished"}
    assert {o.result["pid"] for o in outcomes} == {os.getpid()}
    assert any("exited with status 3 before it was ready" in line for line in lines)


def test_a_worker_that_dies_in_a_run_fails_that_run_and_is_replaced(
        fake_workers, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_SECONDS", "0")
    # This process's slot is slow, so the worker takes most runs, the dying one among them.
    monkeypatch.setattr(worker, "run_job", _slow(worker.run_job, 1.5))
    jobs = jobs_for(tmp_path, ["a", "die", "c", "d", "e"])
    outcomes, _ = run(jobs)
    status = {o.name: o.status for o in outcomes}
    assert status["die"] == "failed" and "exit status 5" in outcomes[1].error
    assert [name for name, s in status.items() if s != "finished"] == ["die"]
    worker_pids = {o.result["pid"] for o in outcomes if o.result} - {os.getpid()}
    assert len(worker_pids) >= 1


def _slow(function, seconds):
    def slow(*args):
        time.sleep(seconds)
        return function(*args)
    return slow


def test_a_pool_takes_a_worker_started_early(fake_workers, tmp_path, monkeypatch):
    monkeypatch.setattr(spares, "threads_per_job", lambda num_jobs: 7)
    spares.start(2, ["base.gin"], [])
    started = spares._SPARES[0][0]
    try:
        outcomes, _ = run(jobs_for(tmp_path, [f"r{i}" for i in range(6)]))
    finally:
        spares.release()
    assert not spares._SPARES
    worker_pids = {o.result["pid"] for o in outcomes} - {os.getpid()}
    assert worker_pids <= {started.pid} and started.wait(timeout=10) == 0


def test_release_ends_workers_nobody_took(tmp_path, monkeypatch):
    script = tmp_path / "sleeper.py"
    script.write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setattr(spares, "worker_command",
                        lambda files, bindings, threads: [sys.executable, str(script)])
    spares.start(3, [], [])
    processes = [p for p, _, _ in spares._SPARES]
    assert len(processes) == 2
    assert spares.take(spares.threads_per_job(3) + 1) is None  # other thread counts: not taken
    spares.release()
    assert not spares._SPARES and all(p.poll() is not None for p in processes)


def test_the_worker_says_ready_then_runs_each_job_with_the_files_it_sends(monkeypatch):
    calls = []
    monkeypatch.setattr(worker, "run_job", lambda *args: calls.append(args))
    out = io.StringIO()
    lines = [json.dumps({"gin_files": ["x.gin"], "bindings": ["a = 1"], "run_dir": "d1",
                         "log": "d1.log"}),
             json.dumps({"bindings": ["b = 2"], "run_dir": "d2", "log": "d2.log"})]
    worker.serve(["own.gin"], ["base = 0"], lines=lines, out=out)
    assert calls == [(["x.gin"], ["a = 1"], "d1", "d1.log"),
                     (["own.gin"], ["base = 0", "b = 2"], "d2", "d2.log")]
    said = out.getvalue().splitlines()
    assert said[0] == worker.READY_PREFIX
    assert [json.loads(line[len(worker.DONE_PREFIX):])["run_dir"] for line in said[1:]] == [
        "d1", "d2"]


def test_importing_spares_imports_no_tensorflow():
    code = ("import sys; import experiments.launch.spares; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules, 'gin' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.split() == ["False", "False", "False"], out.stderr


def test_progress_reaches_stdout_while_a_run_here_has_it_redirected(tmp_path, capfd):
    printed, stream = unredirected(print)
    with worker.output_to(str(tmp_path / "run.log")):
        printed("[1/2] a run finished")
        os.write(1, b"inside the run\n")  # what TensorFlow's C++ code writes
    stream.close()
    assert "[1/2] a run finished" in capfd.readouterr().out
    assert open(tmp_path / "run.log").read() == "inside the run\n"


def test_a_worker_dies_with_its_launcher(tmp_path):
    """``lifeline.die_with_parent``: a 'launcher' process starts a 'worker' tied to it and is
    SIGKILLed; the worker (which would sleep for a minute) is gone within 5 s."""
    import signal
    import textwrap

    pid_file = tmp_path / "worker.pid"
    worker = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {REPO!r})
        from experiments.launch import lifeline
        assert lifeline.die_with_parent(int(sys.argv[1]))
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
    """)
    launcher = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", {worker!r}, str(os.getpid())])
        time.sleep(60)
    """)])
    deadline = time.time() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline, "the worker never started"
        time.sleep(0.05)
    worker_pid = int(pid_file.read_text())
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.time() + 5
    while _alive(worker_pid):
        assert time.time() < deadline, "the worker outlived its launcher by 5 s"
        time.sleep(0.05)


def _alive(pid):
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, is not running)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_run_resumed_in_place_keeps_its_earlier_log(tmp_path):
    """A worker's log of a resumed run is appended to the run's log.txt, not written over it."""
    import collections
    import json

    from experiments.launch import outcomes

    run_dir = str(tmp_path / "b32_s0")
    job = collections.namedtuple("Job", "spec run_dir")(
        collections.namedtuple("Spec", "name")("b32_s0"), run_dir)
    os.makedirs(run_dir)
    with open(outcomes.pending_log(run_dir), "w") as handle:
        handle.write("attempt 1: stopped by SIGTERM\n")
    with open(os.path.join(run_dir, "status.json"), "w") as handle:
        json.dump({"status": "interrupted", "reason": "SIGTERM", "update": 300}, handle)
    assert outcomes.collect(job, 143, 1.0).status == "interrupted"
    with open(outcomes.pending_log(run_dir), "w") as handle:
        handle.write("attempt 2: resumed, failed\n")
    with open(os.path.join(run_dir, "status.json"), "w") as handle:
        json.dump({"status": "failed", "error": "x"}, handle)
    assert outcomes.collect(job, 1, 1.0).status == "failed"
    log = open(os.path.join(run_dir, "log.txt")).read()
    assert log.index("attempt 1") < log.index("resumed in a new process") < log.index("attempt 2")
    assert not os.path.exists(outcomes.pending_log(run_dir))
