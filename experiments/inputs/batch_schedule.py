"""Batch-size schedules: the virtual batch grows during training (Smith et al. 2017, "Don't
Decay the Learning Rate, Increase the Batch Size").

A schedule multiplies k, the micro-batches of one update, at given epochs or updates; b (and so
the memory a step needs) stays. Configured like a learning-rate schedule::

    train.batch_size = 32
    train.batch_size_schedule = @batch_size_schedule()
    batch_size_schedule.boundaries = [10, 20]    # epochs (or updates: unit = 'updates')
    batch_size_schedule.factor = 5               # B = 32, then 160, then 800

or with the batch sizes themselves (``batch_sizes = [160, 800]``: B from each boundary on, each a
multiple of b). Stream data keeps its S streams and grows k, the T-step windows of an update
(``factor`` only).

``UpdateSizes`` turns a schedule into the size of every update of every epoch (rows for arrays,
windows for streams): the pipelines cut each epoch's rows into those sizes, the loop runs that
many updates per epoch, and the train step derives k from the rows it gets, so each update is
exact for its own B. Everything is a function of (epoch, update), so a resumed run reads the
same batches.
"""

import dataclasses
from typing import Optional, Tuple

import gin
import tensorflow as tf

from experiments.common import checks

UNITS = ("epochs", "updates")


@dataclasses.dataclass(frozen=True)
class BatchSizeSchedule:
    """What the user bound, checked for form; sizes are checked against the data by ``resolve``.

    Attributes:
      boundaries: strictly increasing epochs (or updates) at which the next stage starts.
      factors: per boundary, the factor k is multiplied by (None when ``batch_sizes`` is given).
      batch_sizes: per boundary, the B from there on (None when ``factors`` is given).
      unit: 'epochs' or 'updates'.
    """

    boundaries: Tuple[int, ...]
    factors: Optional[Tuple[int, ...]]
    batch_sizes: Optional[Tuple[int, ...]]
    unit: str

    def stage_sizes(self, initial):
        """The size of each stage (B, or k for streams) from the initial one, by ``factors``
        or ``batch_sizes``."""
        if self.batch_sizes is not None:
            return (initial,) + self.batch_sizes
        sizes = [initial]
        for factor in self.factors:
            sizes.append(sizes[-1] * factor)
        return tuple(sizes)

    def stage_name(self, stage):
        """How errors name a stage: 'batch_size_schedule: stage 1 (from epoch 10)'."""
        return (f"batch_size_schedule: stage {stage} (from {self.unit[:-1]} "
                f"{self.boundaries[stage - 1]})")

    def stage_at(self, epoch, update):
        """The stage (0 = before the first boundary) of the update ``update`` in ``epoch``."""
        position = epoch if self.unit == "epochs" else update
        return sum(1 for boundary in self.boundaries if position >= boundary)


@gin.configurable
def batch_size_schedule(boundaries=gin.REQUIRED, factor=None, batch_sizes=None,
                        unit="epochs"):
    """A ``BatchSizeSchedule`` for ``train.batch_size_schedule``.

    Args:
      boundaries: epochs (or updates) where the batch grows, strictly increasing, >= 1.
      factor: k is multiplied by this whole number at each boundary (one number, or one per
        boundary).
      batch_sizes: instead of ``factor``, the virtual batch B from each boundary on (one per
        boundary; each a multiple of the micro-batch b; array data only).
      unit: 'epochs' or 'updates' (the stage can change mid-epoch).
    """
    checks.one_of(unit, UNITS, "batch_size_schedule.unit")
    boundaries = _int_tuple(boundaries, "batch_size_schedule.boundaries")
    for boundary in boundaries:
        checks.positive_int(boundary, "batch_size_schedule.boundaries")
    if any(later <= earlier for earlier, later in zip(boundaries, boundaries[1:])):
        raise ValueError(f"batch_size_schedule.boundaries={list(boundaries)} must be strictly "
                         "increasing.")
    if (factor is None) == (batch_sizes is None):
        raise ValueError("batch_size_schedule: bind exactly one of factor (k multiplied at each "
                         "boundary) and batch_sizes (B from each boundary on).")
    factors = sizes = None
    if factor is not None:
        factors = _per_boundary(factor, boundaries, "batch_size_schedule.factor")
        for value in factors:
            checks.positive_int(value, "batch_size_schedule.factor")
    else:
        sizes = _per_boundary(batch_sizes, boundaries, "batch_size_schedule.batch_sizes")
        for value in sizes:
            checks.positive_int(value, "batch_size_schedule.batch_sizes")
    return BatchSizeSchedule(boundaries, factors, sizes, unit)


def _int_tuple(values, binding):
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    try:
        values = tuple(values)
    except TypeError:
        raise ValueError(f"{binding}={values!r} must be a list of whole numbers.") from None
    if not values:
        raise ValueError(f"{binding} is empty: give at least one boundary.")
    return values


def _per_boundary(value, boundaries, binding):
    """One value per boundary: a single number is repeated."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value,) * len(boundaries)
    values = _int_tuple(value, binding)
    if len(values) != len(boundaries):
        raise ValueError(f"{binding}={list(values)} has {len(values)} values for "
                         f"{len(boundaries)} boundaries {list(boundaries)}: give one per "
                         "boundary (or one number for all).")
    return values


class UpdateSizes:
    """The size of every update of every epoch under a schedule; a pure function of the epoch.

    ``size_of_stage[i]`` is an update's size in stage i (rows for arrays, windows for streams),
    ``capacity`` how much one epoch holds (rows; windows per stream). An update takes its stage's
    size, the last update of an epoch whatever rows remain (``ragged``: arrays) or, when the next
    update no longer fits, the epoch ends there (streams: the remainder is dropped, as without a
    schedule).
    """

    def __init__(self, schedule, size_of_stage, capacity, ragged=True):
        self.schedule = schedule
        self.size_of_stage = tuple(size_of_stage)
        self.capacity = capacity
        self.ragged = ragged
        self._epochs = []  # (updates before, sizes) of epochs 0, 1, ...

    def epoch(self, epoch):
        """(updates before ``epoch``, the sizes of its updates as a tuple)."""
        while len(self._epochs) <= epoch:  # each epoch starts where the one before ended
            before = self._epochs[-1][0] + len(self._epochs[-1][1]) if self._epochs else 0
            self._epochs.append((before, self._sizes(len(self._epochs), before)))
        return self._epochs[epoch]

    @property
    def largest_size(self):
        """The largest size any update can have."""
        return max(self.size_of_stage)

    def size_at(self, epoch, update):
        """The size of update ``update`` (0-based, over the run) in ``epoch`` before the epoch's
        remainder cuts it."""
        return self.size_of_stage[self.schedule.stage_at(epoch, update)]

    def _sizes(self, epoch, update):
        sizes, left = [], self.capacity
        while left > 0:
            size = self.size_at(epoch, update)
            if size > left:
                if not self.ragged:
                    break
                size = left
            sizes.append(size)
            left -= size
            update += 1
        return tuple(sizes)

    def tables(self, first_epoch, num_epochs, unit=1, dtype=tf.int64):
        """The sizes of epochs ``first_epoch`` ... as tensors a tf.data pipeline looks up by the
        epoch's index among them: (starts, sizes, counts); row i holds epoch first_epoch + i's
        update sizes times ``unit`` (padded with 0), their offsets within the epoch, and how many
        there are."""
        per_epoch = [self.epoch(epoch)[1] for epoch in range(first_epoch, first_epoch + num_epochs)]
        width = max(len(sizes) for sizes in per_epoch)
        sizes = tf.constant([[size * unit for size in row] + [0] * (width - len(row))
                             for row in per_epoch], dtype)
        counts = tf.constant([len(row) for row in per_epoch], dtype)
        return tf.math.cumsum(sizes, axis=1, exclusive=True), sizes, counts

    def updates_in(self, epoch):
        return len(self.epoch(epoch)[1])

    def stage_of(self, epoch, update):
        """The stage of update ``update`` (0-based) in ``epoch``."""
        return self.schedule.stage_at(epoch, update)

    def stages(self, epochs):
        """Where each stage starts within ``epochs`` epochs: a list of dicts (stage, epoch,
        update, size), for logs and ``result.json``."""
        starts, last = [], None
        for epoch in range(epochs):
            before, sizes = self.epoch(epoch)
            for index, _ in enumerate(sizes):
                stage = self.stage_of(epoch, before + index)
                if stage != last:
                    starts.append({"stage": stage, "epoch": epoch, "update": before + index,
                                   "size": self.size_at(epoch, before + index)})
                    last = stage
        return starts
