"""``tf.data`` pipelines from a ``Data`` and its ``BatchLayout``: one training element per update.

Array data is shuffled with the run's seed and reshuffled each epoch (the same order sequence for
the same seed); the last batch may be ragged (the train step handles it exactly). Stream data lays
out its own batches (``streams.StreamData.pipelines``).
"""

import tensorflow as tf

from experiments.inputs import layout as layout_lib
from experiments.inputs.dataset import Pipelines


def make(data, layout, seed=0, shuffle=True):
    """Training pipeline of B-row batches and evaluation pipeline of ``eval_batch_size`` rows."""
    if data.stream is not None:
        return data.stream.pipelines(seed)
    train_parts = (data.x_train, data.y_train)
    if data.sample_weight_train is not None:
        train_parts += (data.sample_weight_train,)
    train = tf.data.Dataset.from_tensor_slices(train_parts)
    if shuffle:
        train = train.shuffle(data.num_train, seed=seed, reshuffle_each_iteration=True)
    train = train.batch(layout.batch_size).prefetch(tf.data.AUTOTUNE)
    validation, validation_steps = None, None
    if data.num_validation:
        validation = tf.data.Dataset.from_tensor_slices((data.x_validation, data.y_validation))
        validation = validation.batch(layout.eval_batch_size).prefetch(tf.data.AUTOTUNE)
        validation_steps = -(-data.num_validation // layout.eval_batch_size)
    return Pipelines(train, validation, layout.updates_per_epoch, validation_steps)


def batched(data, batch_size, micro_batch_size=None, eval_batch_size=None, seed=0, shuffle=True):
    """(``BatchLayout``, ``Pipelines``) of ``data`` for these bindings, as a run builds them: for
    tests, benchmarks and notebooks that want a run's batches without a run."""
    layout = layout_lib.build(data, batch_size, micro_batch_size, eval_batch_size)
    return layout, make(data, layout, seed=seed, shuffle=shuffle)
