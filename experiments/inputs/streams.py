"""Stateful stream pipelines: one long series laid out as S parallel streams cut into windows.

A stateful RNN carries its state from one batch to the next, row by row. That is only right when
*row i of batch k+1 continues row i of batch k* (Keras' own stateful example broke this rule,
keras#1820, keras#7212). The layout here makes it hold by construction:

    series (N steps) --drop a seeded offset--> S contiguous streams of L steps each
    stream i = series[offset + i*L : offset + (i+1)*L]
    batch b  = rows i = 0..S-1, steps [b*k*T, (b+1)*k*T) of stream i      shape (S, k*T, ...)

T is ``stream_layout.window_length`` (the truncated-BPTT window), k is
``stream_layout.num_micro_batches`` (windows of one optimizer update: the train step splits the
batch along time into k windows and carries the state from one to the next, see
``VirtualBatchModel.configure_time_windows``). Such a virtual batch holds S independent streams,
not k × S: its k windows are consecutive stretches of the same S streams.

Rules that keep it honest:
- The batch size is fixed: S = ``stream_layout.num_streams``, the batch the stateful model is
  built with (``DataSpec.batch_size``). ``train.batch_size`` and ``train.eval_batch_size`` must
  equal it (keras#21183: a batch of another size is silently broadcast into the state).
- L is a whole number of k*T windows: the remainder that does not fill a batch is dropped; there
  is never a short batch.
- Rows are never shuffled. Per-epoch variety comes from a seeded offset in [0, max_offset] that
  shifts every stream (and so every window boundary). The offset of epoch e is a function of
  (seed, e) only (``epoch_offset``), drawn inside tf.data, so a resumed run lays out the same
  windows as an uninterrupted one.
- The held-out part is the *end* of the series (contiguous text never trained on), laid out the same
  way with windows of T and no offset.

The sources that build a ``StreamData`` from files or arrays are in ``stream_sources``.
"""

import dataclasses
from typing import Optional

import gin
import tensorflow as tf

from experiments.common import checks
from experiments.inputs.dataset import Pipelines



@dataclasses.dataclass(frozen=True)
class StreamLayout:
    """How a series becomes batches; see the module docstring.

    Attributes:
      num_streams: S, rows of every batch (the stateful model's fixed batch size).
      window_length: T, time steps of one window (the truncated-BPTT length).
      num_micro_batches: k, consecutive windows in one optimizer update (batch is (S, k*T)).
      max_offset: largest per-epoch offset of the streams (None: T; 0: no offset).
      stateful: False lays out the same windows for a stateless baseline (no fixed batch size in
        the spec, so a stateless model is accepted and no state is carried).
    """

    num_streams: int
    window_length: int
    num_micro_batches: int = 1
    max_offset: Optional[int] = None
    stateful: bool = True

    def __post_init__(self):
        for name in ("num_streams", "window_length", "num_micro_batches"):
            checks.positive_int(getattr(self, name), f"stream_layout.{name}")
        offset = self.max_offset
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int)
                                   or offset < 0):
            raise ValueError(
                f"stream_layout.max_offset must be None or an integer >= 0, got {offset!r}.")

    @property
    def offset_range(self):
        return self.window_length if self.max_offset is None else self.max_offset

    @property
    def update_length(self):
        """k*T: time steps of one training batch."""
        return self.window_length * self.num_micro_batches

    def stream_length(self, num_steps):
        """L: steps per stream in one training epoch (a whole number of k*T windows)."""
        return (num_steps - self.offset_range) // self.num_streams \
            // self.update_length * self.update_length

    def min_train_steps(self):
        return self.num_streams * self.update_length + self.offset_range

    def min_validation_steps(self):
        return self.num_streams * self.window_length


@gin.configurable
def stream_layout(num_streams=gin.REQUIRED, window_length=gin.REQUIRED, num_micro_batches=1,
                  max_offset=None, stateful=True):
    """The stream layout every stateful source uses (bind ``stream_layout.*`` once in gin)."""
    return StreamLayout(num_streams, window_length, num_micro_batches, max_offset, stateful)


def stream_batches(inputs, targets, num_streams, stream_length, batch_length, offset):
    """(inputs, targets) laid out as a dataset of (S, batch_length, ...) batches; tf ops.

    ``offset`` may be a scalar tensor. Stream i is ``series[offset + i*L : offset + (i+1)*L]``.
    """
    num_batches = stream_length // batch_length

    def cut(series):
        block = series[offset:offset + num_streams * stream_length]
        feature_shape = series.shape[1:]
        block = tf.reshape(block, [num_streams, num_batches, batch_length, *feature_shape])
        perm = [1, 0, 2] + list(range(3, 3 + len(feature_shape)))
        return tf.transpose(block, perm)  # (batches, S, batch_length, ...)

    return tf.data.Dataset.from_tensor_slices((cut(inputs), cut(targets)))


class StreamData:
    """A training and a held-out series with their layout; ``pipelines`` builds the tf.data pipelines."""

    def __init__(self, name, layout, train_inputs, train_targets, validation_inputs=None,
                 validation_targets=None):
        self.name = name
        self.layout = layout
        self.train_inputs, self.train_targets = train_inputs, train_targets
        self.validation_inputs, self.validation_targets = validation_inputs, validation_targets
        self._check_lengths()

    def _check_lengths(self):
        lay = self.layout
        n = len(self.train_inputs)
        if n < lay.min_train_steps():
            raise ValueError(
                f"'{self.name}': the training series has {n} steps, too few for one batch of "
                f"stream_layout.num_streams={lay.num_streams} streams × "
                f"stream_layout.window_length={lay.window_length} steps × "
                f"stream_layout.num_micro_batches={lay.num_micro_batches} windows plus "
                f"stream_layout.max_offset={lay.offset_range}: it needs at least "
                f"{lay.min_train_steps()} steps. Use more data or fewer/shorter streams.")
        if self.validation_inputs is not None:
            nv = len(self.validation_inputs)
            if nv < lay.min_validation_steps():
                raise ValueError(
                    f"'{self.name}': the held-out series has {nv} steps, too few for one batch of "
                    f"stream_layout.num_streams={lay.num_streams} × "
                    f"stream_layout.window_length={lay.window_length} = "
                    f"{lay.min_validation_steps()} steps; raise validation_split (or set it to 0 "
                    "for no validation).")

    @property
    def steps_per_epoch(self):
        return self.layout.stream_length(len(self.train_inputs)) // self.layout.update_length

    def pipelines(self, seed=0, update_sizes=None):
        """Pipelines of (S, k*T) training batches and (S, T) evaluation batches; with
        ``update_sizes`` (a batch-size schedule), k of each update from there."""
        lay = self.layout
        length = lay.stream_length(len(self.train_inputs))
        steps = length // lay.update_length
        x = tf.convert_to_tensor(self.train_inputs)
        y = tf.convert_to_tensor(self.train_targets)

        def one_epoch(epoch):
            return stream_batches(x, y, lay.num_streams, length, lay.update_length,
                                  epoch_offset(seed, epoch, lay.offset_range))

        def train_from(first_epoch, first_step, num_epochs):
            if update_sizes is not None:
                return scheduled_stream_batches(x, y, lay, update_sizes, seed, first_epoch,
                                                first_step, num_epochs)
            epochs = tf.data.Dataset.range(first_epoch, first_epoch + num_epochs)
            return epochs.flat_map(one_epoch).skip(first_step).prefetch(tf.data.AUTOTUNE)

        validation, validation_steps = None, None
        if self.validation_inputs is not None:
            v_length = len(self.validation_inputs) // lay.num_streams \
                // lay.window_length * lay.window_length
            validation = stream_batches(
                tf.convert_to_tensor(self.validation_inputs),
                tf.convert_to_tensor(self.validation_targets),
                lay.num_streams, v_length, lay.window_length, 0).prefetch(tf.data.AUTOTUNE)
            validation_steps = v_length // lay.window_length
        if update_sizes is not None:
            return Pipelines(train_from, validation, update_sizes.updates_in(0),
                             validation_steps, updates_in=update_sizes.updates_in)
        return Pipelines(train_from, validation, steps, validation_steps)


def scheduled_stream_batches(x, y, lay, update_sizes, seed, first_epoch, first_step, num_epochs):
    """Stream batches under a batch-size schedule: epoch e's streams (each as long as the
    windows of its updates) cut into (S, k_u*T) batches, k_u from ``update_sizes`` (the S
    streams and T stay; the windows left over at an epoch's end are dropped, as without one)."""
    starts, steps, counts = update_sizes.tables(first_epoch, num_epochs, lay.window_length,
                                                tf.int32)
    lengths = tf.reduce_sum(steps, axis=1)  # L_e: steps per stream in epoch e

    def one_epoch(index):
        index = tf.cast(index, tf.int32)  # the tables are int32, as offsets and shapes are
        offset = epoch_offset(seed, first_epoch + index, lay.offset_range)
        length = lengths[index]

        def streams(series):  # (S, L_e, ...): stream i is series[offset + i*L_e :][:L_e]
            block = series[offset:offset + lay.num_streams * length]
            return tf.reshape(block, tf.concat([[lay.num_streams, length],
                                                tf.shape(series)[1:]], 0))

        xs, ys = streams(x), streams(y)
        count = counts[index]
        pieces = tf.data.Dataset.from_tensor_slices((starts[index, :count],
                                                     steps[index, :count]))
        return pieces.map(lambda start, size: (xs[:, start:start + size],
                                               ys[:, start:start + size]))

    batches = tf.data.Dataset.range(num_epochs).flat_map(one_epoch).skip(first_step)
    return batches.prefetch(tf.data.AUTOTUNE)


def epoch_offset(seed, epoch, offset_range):
    """The offset of every stream in ``epoch``, in [0, offset_range]: a function of (seed, epoch)
    only, so a resumed run lays out the same windows."""
    if not offset_range:
        return tf.constant(0, tf.int32)
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.stateless_uniform([], seed=key, minval=0, maxval=offset_range + 1,
                                       dtype=tf.int32)
