"""A run's training state across processes: where it starts, when it saves, what it restores.

``RunState`` ties the run directory's checkpoints (``checkpoints``) to the training loop: the
position a resumed run starts from, the ``save`` that ``callbacks.checkpointing`` calls on its
cadence and on a stop signal, the heartbeat written to ``status.json``, and the ``Resume`` the
loop applies once the model and optimizer exist. Only the chief of a multi-worker job writes;
every worker reads the same checkpoint, so all of them resume from the same update.
"""

import os
import time

from absl import logging

from callbacks import summary_writer
from callbacks.checkpointing import PeriodicCheckpoint
from callbacks.heartbeat import Heartbeat
from experiments.run import run_dir as run_dir_lib
from experiments.inputs.dataset import fingerprint_changes
from experiments.run.checkpoints import CheckpointStore, Position, Resume, training_variables


class RunState:
    """Args:
      run_dir: the run directory (its ``checkpoints/`` holds the state).
      settings: ``settings.CheckpointSettings``.
      resuming: start from the newest readable checkpoint, if any.
      writes: this process writes checkpoints and status (the chief).
      checkpoint_dir: where the checkpoints are, when not in ``run_dir`` (a non-chief worker
        reads the chief's).
      from_checkpoint: False: a relaunched run starts again from update 0 (its run mode keeps
        state no checkpoint holds, ``RunMode.resumable``); what it logged is not logged twice.
      synchronized: several workers train together (MultiWorkerMirroredStrategy). Reading the
        metrics' sums is a collective operation there, so every worker takes part in every
        save (only the chief writes), and saves are decided by the update count alone: a clock
        or a signal would reach the workers at different updates. A stop signal then ends the
        worker at once; the job resumes from the last periodic checkpoint.
      started: when this process began the run (``time.time()``; None: now), where its wall
        time counts from.
    """

    def __init__(self, run_dir, settings, resuming=False, writes=True, checkpoint_dir=None,
                 synchronized=False, from_checkpoint=True, started=None):
        self.run_dir = run_dir
        self.settings = settings
        # The run directory was used before (a relaunch): what it logged stays, and is not
        # logged twice, whether or not a readable checkpoint is found.
        self.reused = bool(resuming)
        self.writes = writes
        self.synchronized = synchronized
        self.store = CheckpointStore(checkpoint_dir or os.path.join(run_dir, "checkpoints"),
                                     keep=settings.keep)
        self.model = None
        # The run's measurements' results at a save (``measurements.results``): a run resumed
        # after the last update that logs nothing more still reports them.
        self.measurement_results = list
        self.data_fingerprint = None  # ``inputs.dataset.fingerprint``, saved with each checkpoint
        # More host-side state a checkpoint keeps (an adaptive batch's decisions), as a dict.
        self.more_bookkeeping = dict
        # Host-side state of the run's Keras callbacks (``callback_states.CallbackStates``).
        self.callback_states = None
        self._fit_started = self._fit_ended = None
        # the process's start (the runner's, before its plan): wall time counts from there
        self.process_started = time.time() if started is None else started
        # the interval travels in the status: another host judges its heartbeat's age by it
        self._status = run_dir_lib.running_status(heartbeat_seconds=settings.heartbeat_seconds)
        self.position, self.bookkeeping, self._checkpoint = Position(0, 0, 0), {}, None
        if resuming and from_checkpoint:
            self._find_checkpoint()
        elif resuming:
            logging.info("%s restarts from its first update (its mode is not resumed from a "
                         "checkpoint).", run_dir)
        # The first heartbeat (at the training's start) comes before the checkpoint is restored:
        # a resumed run reports the update it resumes at, not the fresh optimizer's 0.
        self._status["update"] = self.position.update

    def _find_checkpoint(self):
        if self.writes:
            self.store.remove_partial_writes()
        found = self.store.latest_meta()
        if found is None:
            logging.info("No checkpoint in %s: training starts from the beginning.", self.run_dir)
            return
        self._checkpoint, self.position, self.bookkeeping = found
        logging.info("Resuming %s at update %d (epoch %d, step %d).", self.run_dir,
                     self.position.update, self.position.epoch + 1, self.position.step)

    @property
    def resumed(self):
        return self._checkpoint is not None

    def training_started(self):
        self._fit_started = time.monotonic()

    def training_ended(self):
        self._fit_ended = time.monotonic()

    def training_seconds(self):
        """Time spent in the training loop, over every process that trained this run."""
        here = 0.0
        if self._fit_started is not None:
            here = (self._fit_ended or time.monotonic()) - self._fit_started
        return self.bookkeeping.get("train_time_s", 0.0) + here

    def wall_seconds(self):
        """Wall-clock time of the run so far, over every process that ran it up to its last
        checkpoint (a resumed run's earlier processes included)."""
        return self.bookkeeping.get("wall_time_s", 0.0) + time.time() - self.process_started

    def resume(self, model):
        """The ``Resume`` the loop applies (None when starting afresh)."""
        self.model = model
        if self._checkpoint is None:
            return None
        return Resume(self.store, self._checkpoint, model)

    def save(self, epoch, step, update):
        """The checkpoint callback's ``save``: the whole training state at this position."""
        names, variables, _ = training_variables(self.model)
        values = [v.numpy() for v in variables]  # on every worker: collective reads
        if not self.writes:
            return
        # What was logged up to this update reaches the disk with the checkpoint: a resumed run
        # then finds every point before its checkpoint in the event files (and does not log the
        # replayed ones twice).
        summary_writer.flush()
        bookkeeping = {"train_time_s": self.training_seconds(),
                       "wall_time_s": self.wall_seconds(),
                       "resumed_at": self._resumed_at(),
                       "measurement_results": self.measurement_results(),
                       "data": self.data_fingerprint, **self.more_bookkeeping()}
        extra = None
        if self.callback_states:
            bookkeeping["callbacks"] = self.callback_states.state()
            extra = self.callback_states.arrays()
        self.store.save(names, values, Position(epoch, step, update), bookkeeping, extra)
        self.beat()

    def beat(self):
        """Rewrites the 'running' status with a fresh heartbeat and the update reached. A beat
        before the resumed checkpoint is restored (the training's start) finds the optimizer
        at 0: the update is never below the one the run resumed at."""
        if self.writes:
            self._status["heartbeat"] = time.time()
            model = getattr(self, "model", None)
            if model is not None and getattr(model, "optimizer", None) is not None:
                try:  # progress, for the launcher's progress lines and --list
                    self._status["update"] = max(int(model.optimizer.iterations.numpy()),
                                                 self.position.update)
                except (AttributeError, TypeError, ValueError):
                    pass
            run_dir_lib.write_json(self.run_dir, "status.json", self._status)

    def callbacks(self, model, stop_requested):
        """The checkpoint and heartbeat callbacks of this run."""
        self.model = model
        if self.synchronized and self.writes and self.settings.every_n_updates is None:
            logging.warning(
                "No checkpoint will be saved before this multi-worker run ends: its saves are "
                "decided by the update count alone (checkpoints.every_n_minutes is ignored here), "
                "and checkpoints.every_n_updates is not set; a killed job would restart from "
                "update 0. Set checkpoints.every_n_updates = N to make it resumable.")
        minutes = None if self.synchronized else self.settings.every_n_minutes
        stop = None if self.synchronized else stop_requested
        return [PeriodicCheckpoint(self.save, self.settings.every_n_updates, minutes, stop),
                Heartbeat(self.beat, self.settings.heartbeat_seconds)]

    def use_data(self, fingerprint):
        """Records the fingerprint of the run's data (``inputs.dataset.fingerprint``); a resumed
        run whose checkpoint was saved on other data is refused, saying what changed (before
        anything is trained or written: the run stays resumable on its own data)."""
        saved = self.bookkeeping.get("data") if self.resumed else None
        if saved and saved != fingerprint:
            changes = "; ".join(fingerprint_changes(saved, fingerprint))
            raise ValueError(
                f"The run {self.run_dir} was trained on other data than it would resume on "
                f"({changes}). Restore the data it started with, or train a new run (another "
                "--run_name).")
        self.data_fingerprint = fingerprint

    def restored_callbacks(self):
        """(the saved callback states, their arrays) of the checkpoint this run resumed from;
        (None, None) for a fresh run."""
        if not self.resumed:
            return None, None
        return self.bookkeeping.get("callbacks"), self.store.load_extra(self._checkpoint)

    def restored_measurement_results(self):
        """The measurements' results saved with the checkpoint this run resumed from (per
        measurement, in order), or None."""
        return self.bookkeeping.get("measurement_results") if self.resumed else None

    def summary(self):
        """What ``result.json`` records about checkpoints and resumes."""
        return {"resumed_at_updates": self._resumed_at(),
                "train_time_s": self.training_seconds()}

    def _resumed_at(self):
        """Every update this run resumed at, the resume of this process included (a checkpoint
        saved after a second resume keeps the first)."""
        resumed_at = list(self.bookkeeping.get("resumed_at", []))
        if self.resumed:
            resumed_at.append(self.position.update)
        return resumed_at
