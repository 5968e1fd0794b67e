"""Run names: one atomic claim per named run directory, names that stay inside their experiment,
and the bookkeeping a resumed run keeps (every resume, the signal's name)."""

import multiprocessing
import os

import keras
import numpy as np
import pytest

from callbacks.checkpointing import TrainingInterrupted
from experiments.run import run_dir
from experiments.run.checkpoints import CheckpointStore, Position
from experiments.run.settings import checkpoint_settings
from experiments.run.training_state import RunState


def _open(args):
    output, name, barrier = args
    barrier.wait()
    try:
        path, resuming = run_dir.open_named(output, "exp", name, "train.epochs = 1\n")
        return ("won", path, resuming)
    except run_dir.RunExistsError as error:
        return ("refused", str(error), None)


def test_two_launches_of_one_new_name_exactly_one_wins(tmp_path):
    """2 processes x 100 trials, released together on a fresh name each time. (Fresh
    interpreters: a child forked from this process, whose TensorFlow and pytest-xdist threads
    may hold a lock at the fork, can wait on it for ever.)"""
    context = multiprocessing.get_context("spawn")
    manager = context.Manager()
    with context.Pool(2) as pool:
        for trial in range(100):
            barrier = manager.Barrier(2)
            name = f"race-{trial}"
            outcomes = pool.map(_open, [(str(tmp_path), name, barrier)] * 2)
            kinds = sorted(kind for kind, _, _ in outcomes)
            assert kinds == ["refused", "won"], outcomes
            (won,) = [o for o in outcomes if o[0] == "won"]
            (refused,) = [o for o in outcomes if o[0] == "refused"]
            assert won[1] == os.path.join(str(tmp_path), "exp", name) and won[2] is False
            assert "is running (pid" in refused[1]  # says who holds it
    assert sorted(os.listdir(tmp_path / "exp")) == sorted(f"race-{t}" for t in range(100))


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/anywhere", "a/b", "..", ".", ""])
def test_path_like_run_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="single directory name"):
        run_dir.open_named(str(tmp_path), "exp", name, "")
    with pytest.raises(ValueError, match="single directory name"):
        run_dir.new_directory(str(tmp_path), name)
    assert not os.listdir(tmp_path) or os.listdir(tmp_path) == ["exp"]


def test_every_resume_is_recorded(tmp_path):
    """A checkpoint saved after a second resume keeps the first: resumed at 10, then at 25."""
    settings = checkpoint_settings()
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    store.save(["model/w"], [np.zeros(2)], Position(0, 25, 25), {"resumed_at": [10]})
    state = RunState(str(tmp_path), settings, resuming=True)
    assert state.summary()["resumed_at_updates"] == [10, 25]

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    state.model = model
    state.save(0, 30, 30)
    _, _, bookkeeping = store.latest_meta()
    assert bookkeeping["resumed_at"] == [10, 25]


def test_an_interrupt_names_its_signal():
    assert "(SIGTERM)" in str(TrainingInterrupted(15, 7))
    assert "(SIGINT)" in str(TrainingInterrupted(2, 7))


def test_a_relaunch_may_change_only_what_does_not_change_results(tmp_path):
    config = ("# Parameters for train:\ncheckpoints.every_n_updates = 5\ntrain.batch_size = 32\n"
              "train.verbose = 1\n")
    path, resuming = run_dir.open_named(str(tmp_path), "exp", "run", config)
    run_dir.write_text(path, "config.gin", config)
    run_dir.mark_interrupted(path, "SIGTERM", 5)
    quieter = config.replace("every_n_updates = 5", "every_n_updates = 50").replace(
        "verbose = 1", "verbose = 2")
    assert run_dir.open_named(str(tmp_path), "exp", "run", quieter) == (path, True)
    run_dir.mark_interrupted(path, "SIGTERM", 5)
    with pytest.raises(run_dir.RunExistsError, match=r"\+train.batch_size = 64"):
        run_dir.open_named(str(tmp_path), "exp", "run", config.replace("32", "64"))


@pytest.mark.parametrize("every_n_updates, synchronized, warned", [
    (None, True, True), (5, True, False), (None, False, False)])
def test_a_multi_worker_run_without_an_update_cadence_is_warned(tmp_path, caplog, every_n_updates,
                                                                 synchronized, warned):
    """Under MultiWorkerMirroredStrategy saves follow the update count only: without
    checkpoints.every_n_updates nothing is saved before the end, and the chief says so."""
    state = RunState(str(tmp_path), checkpoint_settings(every_n_updates=every_n_updates),
                     synchronized=synchronized)
    with caplog.at_level("WARNING"):
        state.callbacks(model=None, stop_requested=lambda: None)
    said = any("checkpoints.every_n_updates" in r.getMessage() for r in caplog.records)
    assert said == warned


def test_a_group_runs_config_says_how_to_rerun_it_alone():
    """A sweep variant's config.gin holds sweep.variants: given as --gin_file it launched the
    whole sweep again, each variant's bindings over the run's (1 epoch became 5 and 50)."""
    from experiments.run import run_dir  # noqa: PLC0415

    sweep = "sweep.seeds = [0, 1]\nsweep.variants = \\\n    {'a': []}\ntrain.epochs = 1\n"
    noted = run_dir.with_group_note(sweep)
    assert noted.endswith(sweep) and noted.startswith("# This run is one of a sweep's runs")
    assert "--gin_bindings='sweep.variants = None' --gin_bindings='sweep.seeds = None'" in noted
    assert "study.batch_sizes" not in noted
    assert "--gin_bindings='study.batch_sizes = None'" in run_dir.with_group_note(
        "study.batch_sizes = [8, 16]\n")
    plain = "study.batch_sizes = None\nsweep.variants = None\ntrain.epochs = 1\n"
    assert run_dir.with_group_note(plain) == plain  # a run of its own: no note
    assert run_dir.result_bindings(noted) == run_dir.result_bindings(sweep)  # relaunch check
