"""What a data source hands over: examples in memory or a stream, and what the model must know.

Every source (``arrays``, ``digits``, ``stream_text``, ...) returns a ``Data``. The run turns it
into a ``BatchLayout`` (``layout.build``) and then into ``tf.data`` pipelines (``pipelines.make``).
"""

import dataclasses
import functools
from typing import Any, Callable, Optional

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
