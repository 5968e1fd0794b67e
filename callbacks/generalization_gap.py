"""Generalization gap per epoch: validation minus train, both measured in inference mode.

The loss ``fit`` reports for training is a running average over the epoch, taken with dropout on
and while the weights move; comparing it with the validation loss mixes those effects into the gap.
This callback evaluates a fixed training subset in inference mode at each epoch end, the same way
the validation set is evaluated, and logs ``generalization_gap/<name>`` = validation − train for the
loss and each metric (plus ``train_inference/<name>``). Works in any ``model.fit``.
"""

import keras
import numpy as np
import tensorflow as tf

from callbacks.summary_writer import writer_for


class GeneralizationGap(keras.callbacks.Callback):
    """Args:
      train_subset: (x, y) arrays: a fixed sample of the training set.
      validation_data: (x, y) arrays, or None to read ``val_*`` from the epoch logs.
      log_dir: TensorBoard directory (scalars go to ``log_dir/train``); None for logs only.
      batch_size: evaluation batch size.
    """

    def __init__(self, train_subset, validation_data=None, log_dir=None, batch_size=256):
        super().__init__()
        self.train_subset = train_subset
        self.validation_data = validation_data
        self.log_dir = log_dir
        self.batch_size = batch_size
        self.history = []

    def _evaluate(self, data):
        x, y = data[0], data[1]
        return self.model.evaluate(x, y, batch_size=self.batch_size, verbose=0, return_dict=True)

    def measure(self):
        """Returns {'train_inference/<m>': ..., 'generalization_gap/<m>': ...} for now."""
        train = self._evaluate(self.train_subset)
        val = self._evaluate(self.validation_data) if self.validation_data is not None else None
        return train, val

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        train, val = self.measure()
        if val is None:
            val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        values = {}
        for name, train_value in train.items():
            values[f"train_inference/{name}"] = float(train_value)
            if name in val:
                values[f"generalization_gap/{name}"] = float(val[name]) - float(train_value)
        self.history.append(values)
        for name, value in values.items():
            logs[name.replace("/", "_")] = value
        writer = writer_for(self.log_dir)
        if writer is not None:
            with writer.as_default():
                for name, value in values.items():
                    tf.summary.scalar(name, value, step=epoch)
            writer.flush()


def fixed_subset(x, y, size, seed=0):
    """A seeded sample of ``size`` rows of (x, y), the same every epoch."""
    n = len(y)
    if size is None or size >= n:
        return x, y
    rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    return x[rows], y[rows]
