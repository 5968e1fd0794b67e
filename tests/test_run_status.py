"""What a run's status.json tells a reader: whether a 'running' run is alive (its pid, its
heartbeat's age for its own interval), the update it is at, and what ``--list`` says of it
(where an interrupted run continues, an error's own line, a group's runs not started yet)."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

from experiments.launch import listing
from experiments.run import run_dir
from tests.helpers import write_run_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _checkpoint(directory, update, whole=True):
    """A file named as ``checkpoints.CheckpointStore`` names its checkpoints (the whole archive,
    or one cut short by a kill)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"state-{update:09d}.npz")
    meta = json.dumps({"position": {"epoch": 0, "step": update, "update": update},
                       "names": [], "shapes": [], "bookkeeping": {}, "extra": []})
    np.savez(path, __meta__=np.frombuffer(meta.encode(), dtype=np.uint8))
    if not whole:
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)


def _dead(update):
    """A 'running' status on another host, silent for an hour, at ``update``."""
    return {"status": "running", "pid": 4242, "host": socket.gethostname() + "-another",
            "started": 0.0, "heartbeat": time.time() - 3600, "update": update}


def test_list_says_a_killed_run_resumes_from_its_newest_checkpoint(tmp_path):
    """A killed run's last heartbeat was at update 140 and its newest checkpoint at 100: --list
    said "resumable from update 140"; it resumes at 100 (a checkpoint cut short is passed over,
    as the resume passes over it), and one without a checkpoint restarts from 0."""
    killed = tmp_path / "exp" / "killed"
    write_run_dir(str(killed), _dead(140))
    _checkpoint(str(killed / "checkpoints"), 50)
    _checkpoint(str(killed / "checkpoints"), 100)
    _checkpoint(str(killed / "checkpoints"), 130, whole=False)
    write_run_dir(str(tmp_path / "exp" / "early"), _dead(20))
    stopped = tmp_path / "exp" / "stopped"  # SIGTERM: its checkpoint saved at its update
    write_run_dir(str(stopped), {"status": "interrupted", "reason": "SIGTERM", "update": 120})
    _checkpoint(str(stopped / "checkpoints"), 120)
    text = listing.format_listing(str(tmp_path))
    assert f"interrupted  resumable from update 100  {killed}" in text
    assert f"interrupted  restarts from update 0     {tmp_path / 'exp' / 'early'}" in text
    assert f"interrupted  resumable from update 120  {stopped}" in text


def test_a_resumed_runs_first_status_holds_the_update_it_resumes_at(tmp_path):
    """The first heartbeat (at the training's start, before the checkpoint is restored) wrote
    the fresh optimizer's update 0 for a run resuming at 25 until its next heartbeat. The status
    holds its heartbeat interval too (``test_a_long_heartbeat_interval...``)."""
    import keras  # noqa: PLC0415

    from experiments.run.checkpoints import CheckpointStore, Position  # noqa: PLC0415
    from experiments.run.settings import checkpoint_settings  # noqa: PLC0415
    from experiments.run.training_state import RunState  # noqa: PLC0415

    CheckpointStore(str(tmp_path / "checkpoints")).save(["model/w"], [np.zeros(2)],
                                                        Position(1, 5, 25))
    state = RunState(str(tmp_path), checkpoint_settings(heartbeat_seconds=600), resuming=True)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    heartbeat = state.callbacks(model, lambda: None)[-1]
    heartbeat.on_train_begin()
    status = run_dir.read_status(str(tmp_path))
    assert int(model.optimizer.iterations.numpy()) == 0  # not restored yet
    assert status["update"] == 25
    assert status["heartbeat_seconds"] == 600.0


def test_a_long_heartbeat_interval_keeps_a_live_run_alive_on_another_host():
    """With checkpoints.heartbeat_seconds = 600 a live run read as dead from another host two
    minutes after each heartbeat (and a relaunch of its shard would train it twice): its
    heartbeat may be 3 intervals and 30 s old. A status without the interval (an older
    batchlab's) keeps the 2-minute rule."""
    now = time.time()
    elsewhere = {"status": "running", "pid": 4242, "host": socket.gethostname() + "-another",
                 "started": now - 7200}
    slow = dict(elsewhere, heartbeat_seconds=600.0)
    assert run_dir.is_alive(dict(slow, heartbeat=now - 700), now)
    assert run_dir.is_alive(dict(slow, heartbeat=now - 1800), now)
    assert not run_dir.is_alive(dict(slow, heartbeat=now - 1900), now)
    assert run_dir.is_alive(dict(elsewhere, heartbeat=now - 100), now)
    assert not run_dir.is_alive(dict(elsewhere, heartbeat=now - 130), now)
    default = dict(elsewhere, heartbeat_seconds=30.0)  # the default keeps 2 minutes
    assert run_dir.is_alive(dict(default, heartbeat=now - 115), now)
    assert not run_dir.is_alive(dict(default, heartbeat=now - 125), now)
    # --list on another host reads it the same way
    assert run_dir.stale_after(slow) == 3 * 600 + 30


def test_a_status_with_this_processs_pid_that_another_process_wrote_is_dead(tmp_path):
    """A container restarted in a fresh PID namespace runs as pid 1 again: its relaunch took its
    own dead run's status (pid 1, this host) for a live one and skipped the run. A status this
    process wrote itself is still alive."""
    path = str(tmp_path)
    mine = run_dir.running_status()
    run_dir.write_json(path, "status.json", mine)
    assert run_dir.effective_status(path) == "running"
    earlier = dict(mine, process="another process, same pid")
    run_dir.write_json(path, "status.json", earlier)
    assert run_dir.effective_status(path) == "interrupted"
    older = {k: v for k, v in mine.items() if k != "process"}  # an older batchlab's status
    run_dir.write_json(path, "status.json", older)
    assert run_dir.effective_status(path) == "interrupted"
    assert listing.run_line(path)[0] == "interrupted"


def test_list_shows_the_errors_own_line(tmp_path):
    """A multi-line error was listed by its last line: "failed  (see the admin)"."""
    write_run_dir(str(tmp_path / "quota"), {"status": "failed", "error": (
        "ValueError: could not write the epoch summary:\n  disk quota exceeded on /runs\n"
        "  (see the admin)")})
    write_run_dir(str(tmp_path / "trace"), {"status": "failed", "error": (
        "Traceback (most recent call last):\n  File \"x.py\", line 1\nOSError: no space\n"
        "  File \"y.py\", line 2")})
    write_run_dir(str(tmp_path / "plain"), {"status": "failed", "error": "exit status -9\n"})
    text = listing.format_listing(str(tmp_path))
    assert f"failed  ValueError: could not write the epoch summary:  {tmp_path / 'quota'}" in text
    assert "OSError: no space" in text and "(see the admin)" not in text
    assert "exit status -9" in text


def test_list_shows_variants_named_figures_or_checkpoints(tmp_path):
    """Those names were skipped at every depth: a sweep's variants so named were not listed.
    A run's own checkpoints/ and a group's tensorboard/ hold no runs."""
    sweep = tmp_path / "exp" / "s"
    for name in ("figures", "checkpoints", "plain"):
        write_run_dir(str(sweep / name), {"status": "finished"}, {"updates": 3})
        _checkpoint(str(sweep / name / "checkpoints"), 3)
    (sweep / "tensorboard").mkdir()
    with open(sweep / "sweep.json", "w") as handle:
        json.dump({"variants": {"figures": [], "checkpoints": [], "plain": []}}, handle)
    runs, groups = listing.find(str(tmp_path))
    assert runs == [str(sweep / n) for n in ("checkpoints", "figures", "plain")]
    assert groups == [str(sweep)]
    assert f"sweep  3 variants: 3 finished  {sweep}" in listing.format_listing(str(tmp_path))


def test_list_counts_a_groups_runs_not_started_yet_as_pending(tmp_path):
    """They read "missing"; study.json calls them pending."""
    study = tmp_path / "exp" / "st"
    write_run_dir(str(study / "b64_s0"), {"status": "finished"}, {"updates": 3})
    with open(study / "study.json", "w") as handle:
        json.dump({"runs": [{"name": "b64_s0", "path": "b64_s0", "status": "finished"},
                            {"name": "b128_s0", "path": "b128_s0", "status": "pending"},
                            {"name": "b8_s0", "path": "b8_s0", "status": "failed"}]}, handle)
    sweep = tmp_path / "exp" / "sw"
    write_run_dir(str(sweep / "a"), {"status": "finished"}, {"updates": 3})
    with open(sweep / "sweep.json", "w") as handle:
        json.dump({"variants": {"a": [], "b": [], "c": []}, "status": {"c": "failed"}}, handle)
    assert listing.group_line(str(study))[:2] == ("study",
                                                  "3 runs: 1 failed, 1 finished, 1 pending")
    assert listing.group_line(str(sweep))[:2] == ("sweep",
                                                  "3 variants: 1 failed, 1 finished, 1 pending")


def test_listing_and_run_status_import_no_tensorflow():
    code = ("import sys; from experiments.launch import listing; "
            "from experiments.run import run_dir; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
