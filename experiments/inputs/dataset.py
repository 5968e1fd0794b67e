"""What a data source hands over: examples in memory or a stream, and what the model must know.

Every source (``arrays``, ``digits``, ``stream_text``, ...) returns a ``Data``. The run turns it
into a ``BatchLayout`` (``layout.build``) and then into ``tf.data`` pipelines (``pipelines.make``).
"""

import dataclasses
import functools
import hashlib
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class DataSpec:
    """What a model builder needs to know about the data.

    Attributes:
      input_shape: shape of one example, without the batch axis.
      num_outputs: number of classes (classification) or target dimensions (regression).
      task: 'classification', 'binary', 'regression' or 'language_model'.
      batch_size: the fixed batch size a stateful model must be built with (None otherwise).
      vocabulary_size: for token inputs, the number of distinct ids.
    """

    input_shape: tuple
    num_outputs: int
    task: str = "classification"
    batch_size: Optional[int] = None
    vocabulary_size: Optional[int] = None


def fingerprint(data):
    """What identifies the examples a run trains and validates on: the rows of each part and a
    SHA-256 of its arrays (values, dtypes and shapes). A checkpoint keeps it, so that a run is
    never resumed on data that changed since it started (a file rewritten, another split)."""
    stream = data.stream
    parts = {
        "train": (stream.train_inputs, stream.train_targets) if stream is not None
        else (data.x_train, data.y_train, data.sample_weight_train),
        "validation": (stream.validation_inputs, stream.validation_targets)
        if stream is not None else (data.x_validation, data.y_validation),
    }
    out = {}
    for part, arrays in parts.items():
        digest = hashlib.sha256()
        rows = None
        for array in arrays:
            if array is None:
                digest.update(b"none")
                continue
            array = np.ascontiguousarray(array)
            rows = len(array) if rows is None else rows
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
        out[f"{part}_rows"] = rows or 0
        out[f"{part}_sha256"] = digest.hexdigest()
    return out


def fingerprint_changes(saved, now):
    """The parts of a data fingerprint that differ (``saved`` -> ``now``), as readable lines."""
    lines = []
    for part in ("train", "validation"):
        if saved.get(f"{part}_sha256") != now.get(f"{part}_sha256"):
            before, after = saved.get(f"{part}_rows"), now.get(f"{part}_rows")
            rows = f"{before} -> {after} rows" if before != after else f"{after} rows, values differ"
            lines.append(f"{part}: {rows}")
    return lines


@dataclasses.dataclass
class Data:
    """Examples in memory (``x_train``...) or a stream (``stream``: a ``streams.StreamData``).

    A stream lays out its own batches (S parallel streams in windows of T steps); everything else
    is batched from the in-memory arrays.
    """

    spec: DataSpec
    x_train: Any = None
    y_train: Any = None
    x_validation: Any = None
    y_validation: Any = None
    sample_weight_train: Any = None
    name: str = "data"
    stream: Any = None
    vocabulary: Any = None

    @property
    def num_train(self):
        return len(self.y_train) if self.y_train is not None else None

    @property
    def num_validation(self):
        return 0 if self.y_validation is None else len(self.y_validation)


@dataclasses.dataclass
class Pipelines:
    """Finished, batched pipelines for one run (each training element is one update).

    The training order is a pure function of (seed, epoch): ``train_from(epoch, step,
    num_epochs)`` gives the batches from update ``step`` of ``epoch`` on, for ``num_epochs``
    epochs, the same whether a run starts there or resumes there after a kill.
    ``steps_per_epoch`` is the first epoch's number of updates, ``steps_in(epoch)`` any epoch's
    (they differ under a batch-size schedule: ``updates_in``).
    """

    train_from: Callable[[int, int, int], tf.data.Dataset]
    validation: Optional[tf.data.Dataset]
    steps_per_epoch: int
    validation_steps: Optional[int]
    updates_in: Optional[Callable[[int], int]] = None

    def steps_in(self, epoch):
        """Updates in ``epoch``."""
        return self.steps_per_epoch if self.updates_in is None else self.updates_in(epoch)

    @functools.cached_property
    def train(self):
        """The batches of the first epoch (cardinality known)."""
        return self.train_from(0, 0, 1).apply(
            tf.data.experimental.assert_cardinality(self.steps_per_epoch))
