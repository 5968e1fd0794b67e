"""Publishes the global gradient norm the train step already computed (no second backward pass).

batchlab's ``VirtualBatchModel`` stores the norm of each applied gradient in
``model.measurements.gradient_norm``; this callback copies it to TensorBoard under
``gradients/global_norm`` every ``every_n_updates`` updates, keyed by the update count.
"""

import keras
import tensorflow as tf

from callbacks.summary_writer import writer_for


def step_measurements(model):
    measurements = getattr(model, "measurements", None)
    if measurements is None:
        raise ValueError(
            "This callback reads gradients measured by "
            "batchlab's train step: wrap the model with "
            "experiments.train_step.as_virtual_batch_model first.")
    return measurements


class GradientNorm(keras.callbacks.Callback):
    def __init__(self, log_dir, every_n_updates=1):
        super().__init__()
        self.log_dir = log_dir
        self.every_n_updates = max(int(every_n_updates), 1)
        self.values = []

    def on_train_begin(self, logs=None):
        step_measurements(self.model)

    def on_train_batch_end(self, batch, logs=None):
        update = int(self.model.optimizer.iterations.numpy())
        if update % self.every_n_updates:
            return
        value = float(self.model.measurements.gradient_norm.numpy())
        self.values.append((update, value))
        writer = writer_for(self.log_dir)
        if writer is not None:
            with writer.as_default():
                tf.summary.scalar("gradients/global_norm", value, step=update)
