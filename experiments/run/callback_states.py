"""What Keras' own callbacks remember between epochs, carried across a resume.

A checkpoint holds every variable of the training state, but ``EarlyStopping``,
``ReduceLROnPlateau`` and ``ModelCheckpoint(save_best_only=True)`` keep their patience counters
and best values in Python attributes, which their ``on_train_begin`` resets: a resumed run would
wait anew from its resume point and stop later (or reduce the learning rate later) than the run it
continues. ``CallbackStates`` saves those attributes with each checkpoint (in its bookkeeping; the
weights ``EarlyStopping(restore_best_weights=True)`` keeps, as arrays beside the variables) and
puts them back after the callbacks' own ``on_train_begin`` (it is listed after them).

``CSVLogger`` is the other callback whose state is outside the model: its file. A resumed run
keeps the rows of the epochs that ended before the checkpoint and appends (``continue_csv``).
"""

import csv
import os

import keras
import numpy as np

# The attributes each callback reads at its epoch ends and resets at the start of training.
KEPT_ATTRIBUTES = (
    (keras.callbacks.EarlyStopping, ("wait", "stopped_epoch", "best", "best_epoch")),
    (keras.callbacks.ReduceLROnPlateau, ("wait", "best", "cooldown_counter")),
    (keras.callbacks.ModelCheckpoint, ("best",)),
)


def _attributes(callback):
    for kind, names in KEPT_ATTRIBUTES:
        if isinstance(callback, kind):
            return names
    return ()


def _plain(value):
    """A JSON value: numbers as float or int (NumPy scalars included), None kept. Not
    ``json_files.plain``: an infinite best (``ModelCheckpoint``'s start) must come back as inf,
    not null (the checkpoint's meta is written with Python's json, which keeps Infinity)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return float(value)


class CallbackStates(keras.callbacks.Callback):
    """Saves and restores the remembered state of the run's Keras callbacks.

    Args:
      callbacks: the run's callbacks (those with state are found by type, keyed by their
        position in this list and their class name, so a changed list is not misread).
      saved: the bookkeeping entry of the checkpoint a run resumes from (None: a fresh run).
      arrays: the checkpoint's extra arrays (``EarlyStopping``'s best weights), by name.
    """

    def __init__(self, callbacks, saved=None, arrays=None):
        super().__init__()
        self.kept = [(f"{index}:{type(callback).__name__}", callback, _attributes(callback))
                     for index, callback in enumerate(callbacks) if _attributes(callback)]
        self._saved = saved or {}
        self._arrays = arrays or {}

    def __bool__(self):
        return bool(self.kept)

    def state(self):
        """{key: {attribute: value}} for the checkpoint's bookkeeping."""
        return {key: {name: _plain(getattr(callback, name, None)) for name in names}
                for key, callback, names in self.kept}

    def arrays(self):
        """{name: array} saved beside the checkpoint's variables: the best weights an
        ``EarlyStopping(restore_best_weights=True)`` holds."""
        out = {}
        for key, callback, _ in self.kept:
            weights = getattr(callback, "best_weights", None)
            if isinstance(callback, keras.callbacks.EarlyStopping) and weights is not None:
                out.update({f"{key}/best_weights/{i:04d}": np.asarray(w)
                            for i, w in enumerate(weights)})
        return out

    def on_train_begin(self, logs=None):
        for key, callback, names in self.kept:
            saved = self._saved.get(key)
            if saved is None:
                continue
            for name in names:
                if name in saved:
                    setattr(callback, name, saved[name])
            prefix = f"{key}/best_weights/"
            weights = sorted(name for name in self._arrays if name.startswith(prefix))
            if weights:
                callback.best_weights = [self._arrays[name] for name in weights]


def continue_csv(callbacks, epoch):
    """A resumed run's ``CSVLogger`` files: the rows of epochs before ``epoch`` (the epoch the
    run resumes in, whose end is still to run) are kept, later ones (logged after the checkpoint,
    before the kill) dropped, and the logger appends."""
    for callback in callbacks:
        if not isinstance(callback, keras.callbacks.CSVLogger):
            continue
        callback.append = True
        path = callback.filename
        if not os.path.exists(path):
            continue
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle, delimiter=callback.sep))
        if not rows:
            continue
        header, body = rows[0], rows[1:]
        column = header.index("epoch") if "epoch" in header else None
        kept = [row for row in body if column is None or int(row[column]) < epoch]
        if len(kept) == len(body):
            continue
        temporary = f"{path}.tmp-{os.getpid()}"
        with open(temporary, "w", newline="") as handle:
            csv.writer(handle, delimiter=callback.sep).writerows([header] + kept)
        os.replace(temporary, path)
