"""Checkpoints of a run's whole training state: written atomically, kept a few at a time, read
back with a fallback when the newest is damaged.

A checkpoint is one ``.npz`` file, ``checkpoints/state-<update>.npz``, holding every variable the
continuation needs, in a fixed order: the model's variables (weights, BatchNormalization
statistics, dropout seed states, stateful layers' states), the optimizer's (slots, iteration
count, learning rate), the compiled metrics' sums (so the interrupted epoch's logged means cover
the whole epoch) and the train step's measurement variables (the noise-scale averages) and AdaScale's progress. Beside
them, ``__meta__`` records the position (epoch, step within the epoch, update), the variables'
names and shapes (a checkpoint of another model is refused), and the run's bookkeeping (training
time so far). Everything else is a function of the seed: the data order of every epoch, the
initial weights measurements compare against.

Writing goes to a temporary file in the same directory, flushed and fsynced, then renamed: a kill
at any moment leaves either the previous checkpoint or the new one, never half of one. After each
write only the newest ``keep`` are kept.
"""

import dataclasses
import glob
import json
import os
import re
import zipfile

import numpy as np
from absl import logging

from experiments.engine import states

PATTERN = re.compile(r"state-(\d+)\.npz$")


@dataclasses.dataclass(frozen=True)
class Position:
    """Where training continues: update ``step`` (0-based) of ``epoch``; ``update`` updates done."""

    epoch: int
    step: int
    update: int


def training_variables(model):
    """(names, variables, epoch flags) of everything a checkpoint saves, in a fixed order.

    The epoch flag marks what the interrupted epoch had accumulated (metric sums, stateful layers'
    states): the loop restores those after the epoch's start reset them.
    """
    seen, names, variables, of_epoch = set(), [], [], []

    def add(group, items, epoch=False):
        for variable in items:
            if id(variable) in seen:
                continue
            seen.add(id(variable))
            names.append(f"{group}/{getattr(variable, 'path', None) or variable.name}")
            variables.append(variable)
            of_epoch.append(epoch)

    add("state", states.state_variables(model), epoch=True)
    add("model", model.variables)
    add("optimizer", model.optimizer.variables)
    for metric in model.metrics:
        add("metric", metric.variables, epoch=True)
    if hasattr(model, "measurements"):
        add("measurement", model.measurements.variables())
    scaling = getattr(model, "learning_rate_scaling", None)
    if scaling is not None:  # AdaScale's gain and progress (tau), its base learning rate
        add("adascale", scaling.variables())
    return names, variables, of_epoch


class CheckpointStore:
    """The checkpoints of one run directory (``<run>/checkpoints``)."""

    def __init__(self, directory, keep=2):
        self.directory = directory
        self.keep = keep

    def paths(self):
        """Checkpoint files, newest first (by update count)."""
        found = [(int(PATTERN.search(p).group(1)), p)
                 for p in glob.glob(os.path.join(self.directory, "state-*.npz"))
                 if PATTERN.search(p)]
        return [p for _, p in sorted(found, reverse=True)]

    def path_at(self, update):
        """The file of the checkpoint saved at ``update`` (it may not exist)."""
        return os.path.join(self.directory, f"state-{update:09d}.npz")

    @staticmethod
    def update_of(path):
        """The update a checkpoint file was saved at, from its name."""
        return int(PATTERN.search(path).group(1))

    def save(self, names, values, position, bookkeeping=None, extra=None):
        """Writes one checkpoint atomically; returns its path. ``extra``: more arrays by name
        (host-side state, e.g. the best weights an ``EarlyStopping`` keeps), read by
        ``load_extra``."""
        os.makedirs(self.directory, exist_ok=True)
        extra = dict(extra or {})
        meta = {"position": dataclasses.asdict(position), "names": names,
                "shapes": [list(np.shape(v)) for v in values], "bookkeeping": bookkeeping or {},
                "extra": list(extra)}
        arrays = {f"v{i:05d}": np.asarray(v) for i, v in enumerate(values)}
        arrays.update({f"e{i:05d}": np.asarray(v) for i, v in enumerate(extra.values())})
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        path = self.path_at(position.update)
        temporary = f"{path}.tmp-{os.getpid()}"
        try:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:  # a full disk: no partial file left, the older checkpoints kept
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
        for old in self.paths()[self.keep:]:
            os.remove(old)
        return path

    def latest_meta(self):
        """(path, position, bookkeeping) of the newest readable checkpoint, or None. A damaged
        newest checkpoint (a kill in the middle of a write the filesystem did not finish, a
        truncated copy) is skipped with a warning: the previous one is used."""
        for path in self.paths():
            try:
                meta = _meta(path)
                return path, Position(**meta["position"]), meta.get("bookkeeping", {})
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
                logging.warning("Checkpoint %s cannot be read (%s: %s); using the previous one.",
                                path, type(error).__name__, error)
        return None

    def load(self, path, names):
        """The values saved in ``path``, checked to be those of ``names`` (this model)."""
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["__meta__"].tobytes().decode())
            if meta["names"] != names:
                raise ValueError(
                    f"Checkpoint {path} holds the {len(meta['names'])} variables of another model "
                    f"or configuration, not these {len(names)}.")
            return [archive[f"v{i:05d}"] for i in range(len(names))]

    def load_extra(self, path):
        """The ``extra`` arrays saved in ``path``, by name ({} when none)."""
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["__meta__"].tobytes().decode())
            return {name: archive[f"e{i:05d}"] for i, name in enumerate(meta.get("extra", []))}

    def remove_partial_writes(self):
        """Deletes temporary files a kill left behind in the middle of a write."""
        for path in glob.glob(os.path.join(self.directory, "state-*.npz.tmp-*")):
            os.remove(path)


def _meta(path):
    """The ``__meta__`` record of a checkpoint; reading every array checks the file is whole."""
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(archive["__meta__"].tobytes().decode())
        for i in range(len(meta["names"])):
            archive[f"v{i:05d}"]  # pylint: disable=pointless-statement (CRC check of the entry)
        for i in range(len(meta.get("extra", []))):
            archive[f"e{i:05d}"]  # pylint: disable=pointless-statement
    return meta


class Resume:
    """Restores a checkpoint into a model when its training loop asks (see
    ``engine.custom_loop.CustomLoop.fit_from``): the variables are collected then, once the loop
    has built the optimizer's slots and the metrics.

    Args:
      store: the ``CheckpointStore``; path: the checkpoint; model: the model to restore.
    """

    def __init__(self, store, path, model):
        self._store, self._path, self._model = store, path, model
        self._pairs = None

    def _load(self):
        if self._pairs is None:
            names, variables, of_epoch = training_variables(self._model)
            values = self._store.load(self._path, names)
            self._pairs = list(zip(variables, values, of_epoch))
        return self._pairs

    def restore_training_state(self):
        """Weights, optimizer, measurements: before the first epoch starts."""
        for variable, value, of_epoch in self._load():
            if not of_epoch:
                variable.assign(value)

    def restore_epoch_state(self):
        """Metric sums and stateful layers' states: once the interrupted epoch has started (its
        start resets both)."""
        for variable, value, of_epoch in self._load():
            if of_epoch:
                variable.assign(value)
