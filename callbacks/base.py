"""The shared tail of batchlab's measurements: keep a history, log scalars, flush, report.

- ``Published``: ``publish(step, values)`` appends to ``history`` and writes the scalars to
  TensorBoard (``log_dir/train``; nothing when ``log_dir`` is None); ``result()`` gives the last
  values for the run's ``result.json``.
- ``LoggedMeasurement``: a per-update measurement in the shape of
  ``experiments.engine.measurement.Measurement`` (cadence, graph work before the update, a graph
  read after it, a host publish) that logs what it publishes. batchlab's loop runs it inside its
  train calls; in a plain ``model.fit`` it is a Keras callback like any other.
- ``MeasurementCallback``: a Keras callback that publishes (epoch-level measurements such as the
  generalization gap, sharpness, throughput).
"""

import abc

import keras
import numpy as np

from callbacks import summary_writer
from experiments.engine.measurement import Measurement


class Published:
    """History and TensorBoard logging shared by every measurement.

    Args:
      log_dir: TensorBoard directory; None keeps values only (``self.history``).
    """

    def __init__(self, log_dir=None):
        self.log_dir = log_dir
        self.history = []  # (step, {tag: value})

    def publish_values(self, step, values):
        """Records ``{tag: value}`` at ``step`` and logs it."""
        self.history.append((step, values))
        summary_writer.scalars(self.log_dir, values, step)

    def whole_curve(self, tag, points):
        """``points`` ([step, value] of this process) with the points of ``tag`` a resumed run
        logged before its kill, sorted by step, values at float32 precision (as event files hold
        them: a resumed run's curve then equals an uninterrupted run's)."""
        merged = dict(summary_writer.logged_before(self.log_dir, tag))
        merged.update((int(step), value) for step, value in points)
        return [[step, float(np.float32(value))] for step, value in sorted(merged.items())]

    def last_logged_step(self):
        return self.history[-1][0] if self.history else None

    def flush(self):
        summary_writer.flush(self.log_dir)

    def result(self):
        """The last logged values, for the run's result.json."""
        return dict(self.history[-1][1]) if self.history else {}


class MeasurementCallback(Published, keras.callbacks.Callback):
    """A Keras callback that publishes measurements (``publish(step, values)``)."""

    def __init__(self, log_dir=None):
        keras.callbacks.Callback.__init__(self)
        Published.__init__(self, log_dir)

    def publish(self, step, values):
        self.publish_values(step, values)

    def on_train_end(self, logs=None):
        self.flush()


class LoggedMeasurement(Published, Measurement):
    """A per-update ``Measurement`` whose ``publish(update, row)`` turns the row into
    ``{tag: value}`` (``values(update, row)``) and logs it; ``finish`` flushes. Usable as is in a
    plain ``model.fit`` (a ``Measurement`` is a Keras callback)."""

    def __init__(self, log_dir=None):
        Measurement.__init__(self)
        Published.__init__(self, log_dir)

    def publish(self, update, row):
        values = self.values(update, row)
        if values:
            self.publish_values(int(update), values)

    @abc.abstractmethod
    def values(self, update, row):
        """{tag: value} of a read row (None or {}: nothing to log)."""

    def finish(self, update):
        self.flush()
