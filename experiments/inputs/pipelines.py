"""``tf.data`` pipelines from a ``Data`` and its ``BatchLayout``: one training element per update.

Array data is shuffled with the run's seed, a new order every epoch: the order of epoch e is a pure
function of (seed, e) (``epoch_order``), so a run that resumes at update s of epoch e reads exactly
the batches an uninterrupted run reads there. The last batch may be ragged (the train step handles
it exactly). Under a batch-size schedule each epoch's order is cut into the sizes the layout's
``update_sizes`` gives for that epoch. Stream data lays out its own batches
(``streams.StreamData.pipelines``).
"""

import tensorflow as tf

from experiments.inputs import layout as layout_lib
from experiments.inputs.dataset import Pipelines


def make(data, layout, seed=0, shuffle=True):
    """Training pipeline of B-row batches and evaluation pipeline of ``eval_batch_size`` rows."""
    if data.stream is not None:
        return data.stream.pipelines(seed, layout.update_sizes)
    tensors = [tf.convert_to_tensor(t) for t in (data.x_train, data.y_train,
                                                 data.sample_weight_train) if t is not None]

    def train_from(first_epoch, first_step, num_epochs):
        if layout.update_sizes is not None:
            return scheduled_batches(tensors, layout.update_sizes, seed, shuffle, first_epoch,
                                     first_step, num_epochs)
        return epoch_batches(tensors, layout.batch_size, seed, shuffle, first_epoch, first_step,
                             num_epochs)

    validation, validation_steps = None, None
    if data.num_validation:
        validation = tf.data.Dataset.from_tensor_slices((data.x_validation, data.y_validation))
        validation = validation.batch(layout.eval_batch_size).prefetch(tf.data.AUTOTUNE)
        validation_steps = -(-data.num_validation // layout.eval_batch_size)
    scheduled = layout.update_sizes is not None
    return Pipelines(train_from, validation, layout.updates_per_epoch, validation_steps,
                     updates_in=layout.updates_in if scheduled else None)


def epoch_order(num_examples, seed, epoch, shuffle=True):
    """The row order of ``epoch``: a seeded permutation that depends on (seed, epoch) only."""
    rows = tf.range(num_examples, dtype=tf.int64)
    if not shuffle:
        return rows
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_shuffle(rows, seed=key)


def epoch_batches(tensors, batch_size, seed, shuffle, first_epoch, first_step, num_epochs):
    """Batches of ``tensors`` (rows along axis 0) for epochs ``first_epoch`` ..., starting at
    update ``first_step`` of the first: index batches of each epoch's order, then one gather per
    batch (cheaper than a shuffle buffer of single rows, and resumable at any update)."""
    num_examples = int(tensors[0].shape[0])

    def one_epoch(epoch):
        order = epoch_order(num_examples, seed, epoch, shuffle)
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    epochs = tf.data.Dataset.range(first_epoch, first_epoch + num_epochs)
    batches = epochs.flat_map(one_epoch).skip(first_step)
    return _gathered(tensors, batches)


def scheduled_batches(tensors, update_sizes, seed, shuffle, first_epoch, first_step, num_epochs):
    """``epoch_batches`` under a batch-size schedule: epoch e's order cut into the sizes of its
    updates, looked up in ``UpdateSizes.tables`` for the epochs read (a pure function of the
    epoch, so resuming reads the same batches)."""
    num_examples = int(tensors[0].shape[0])
    starts, sizes, counts = update_sizes.tables(first_epoch, num_epochs)

    def one_epoch(index):
        order = epoch_order(num_examples, seed, first_epoch + index, shuffle)
        count = counts[index]
        pieces = tf.data.Dataset.from_tensor_slices((starts[index, :count],
                                                     sizes[index, :count]))
        return pieces.map(lambda start, size: order[start:start + size])

    batches = tf.data.Dataset.range(num_epochs).flat_map(one_epoch).skip(first_step)
    return _gathered(tensors, batches)


def _gathered(tensors, index_batches):
    """The rows of each batch of indices, gathered in parallel, in order."""
    batches = index_batches.map(lambda rows: tuple(tf.gather(t, rows) for t in tensors),
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return batches.prefetch(tf.data.AUTOTUNE)


def batched(data, batch_size, micro_batch_size=None, eval_batch_size=None, seed=0, shuffle=True):
    """(``BatchLayout``, ``Pipelines``) of ``data`` for these bindings, as a run builds them: for
    tests, benchmarks and notebooks that want a run's batches without a run."""
    layout = layout_lib.build(data, batch_size, micro_batch_size, eval_batch_size)
    return layout, make(data, layout, seed=seed, shuffle=shuffle)
