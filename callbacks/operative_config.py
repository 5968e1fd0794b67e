"""Saves the operative config (the values actually used) after the first graph call of updates.

gin records a binding in its operative config only once the configurable has been called, so the
file is written after training's first step, when every builder has run. It goes to
``<run_dir>/operative_config.gin`` and into TensorBoard as the text summary ``config/operative``.
"""

import os

import keras
import tensorflow as tf

from callbacks.summary_writer import writer_for


class OperativeConfigSaver(keras.callbacks.Callback):
    """Args:
      run_dir: where operative_config.gin goes.
      config_fn: returns the operative config string (``gin.operative_config_str``).
      log_dir: TensorBoard directory, or None.
    """

    def __init__(self, run_dir, config_fn, log_dir=None):
        super().__init__()
        self.run_dir = run_dir
        self.config_fn = config_fn
        self.log_dir = log_dir
        self._saved = False

    def on_train_batch_end(self, batch, logs=None):
        if self._saved:
            return
        self._saved = True
        text = self.config_fn()
        with open(os.path.join(self.run_dir, "operative_config.gin"), "w") as handle:
            handle.write(text)
        writer = writer_for(self.log_dir)
        if writer is not None:
            with writer.as_default(), tf.summary.record_if(True):
                tf.summary.text("config/operative", _markdown(text), step=0)
            writer.flush()


def _markdown(text):
    """TensorBoard renders text summaries as markdown: indent to keep the layout."""
    return "\n".join("    " + line for line in text.splitlines())
