"""Throughput and memory per epoch: what a batch size costs in time and memory.

Logged at each epoch end, keyed by the epoch (0-based, like Keras' ``epoch_*`` scalars):

- ``throughput/examples_per_sec`` and ``throughput/updates_per_sec``: over the epoch's training
  steps only (from the epoch's start to its last update, without validation);
- ``throughput/train_seconds``: that training time;
- ``throughput/epoch_seconds``: the whole epoch as seen at this callback's epoch end, including
  validation and the end-of-epoch work of the callbacks listed before it (put it last to include
  every measurement's cost);
- ``throughput/peak_memory_mb``: the process' peak resident memory so far (``ru_maxrss``);
- ``throughput/peak_gpu_memory_mb``: TensorFlow's peak allocation on the first GPU, when present.

The first epoch includes tracing and compiling the train step, so it is slower. Examples are
counted by ``rows_trained`` when given (the runner passes its batch layout's: exact for a ragged
last batch, a batch-size schedule, an epoch resumed mid-way, and for stream data, whose examples
are windows of T steps, S·k per update); else as ``examples_per_epoch`` (in proportion to the
updates the epoch ran, when it ran fewer than its steps), else as updates x ``batch_size``;
without any of them, only the update rate is logged.
"""

import time

import tensorflow as tf

from callbacks.base import MeasurementCallback
from experiments.common.memory import peak_gpu_memory_mb, peak_memory_mb


class Throughput(MeasurementCallback):
    """Args:
      log_dir: TensorBoard directory; None keeps values only (``self.history``).
      examples_per_epoch: training examples in one epoch, if known.
      batch_size: examples per update, used when ``examples_per_epoch`` is unknown.
      rows_trained: a function of the run's update count giving the examples its updates
        trained on so far (``BatchLayout.rows_trained``); an epoch counts the difference.
    """

    def __init__(self, log_dir=None, examples_per_epoch=None, batch_size=None,
                 rows_trained=None):
        super().__init__(log_dir)
        self.examples_per_epoch = examples_per_epoch
        self.batch_size = batch_size
        self.rows_trained = rows_trained
        self._epoch_started = None
        self._last_update_time = None
        self._updates = 0
        self._steps = None
        self._first_iteration = None
        self._gpu = None

    def on_train_begin(self, logs=None):
        self._gpu = bool(tf.config.list_logical_devices("GPU"))

    def on_epoch_begin(self, epoch, logs=None):
        self._updates = 0
        self._steps = (self.params or {}).get("steps")
        self._first_iteration = self._iterations()
        self._epoch_started = time.perf_counter()
        self._last_update_time = None

    def _iterations(self):
        """The optimizer's update count, or None without one."""
        optimizer = getattr(self.model, "optimizer", None)
        return None if optimizer is None else int(optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        # ``batch`` is the index of the last step run; with steps_per_execution > 1 Keras passes
        # the chunk's planned last index, past the epoch's end for its last, shorter chunk: it is
        # clamped to the epoch's length (the epoch-end count is the optimizer's). The clock is
        # read after an epoch's last update only (after every update when the epoch's length is
        # unknown): batch hooks run after every update.
        self._updates = batch + 1 if self._steps is None else min(batch + 1, self._steps)
        if self._steps is None or self._updates == self._steps:
            self._last_update_time = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        if self._last_update_time is None:  # the epoch ended before its announced last step
            self._last_update_time = now
        train_seconds = max(self._last_update_time - self._epoch_started, 1e-9)
        if self._first_iteration is not None:  # exact, whatever ``batch`` said
            self._updates = self._iterations() - self._first_iteration
        values = {"throughput/train_seconds": train_seconds,
                  "throughput/epoch_seconds": now - self._epoch_started,
                  "throughput/updates_per_sec": self._updates / train_seconds,
                  "throughput/peak_memory_mb": peak_memory_mb()}
        examples = self._examples()
        if examples is not None:
            values["throughput/examples_per_sec"] = examples / train_seconds
        gpu = peak_gpu_memory_mb() if self._gpu is not False else None
        if gpu is not None:
            values["throughput/peak_gpu_memory_mb"] = gpu
        self.publish(epoch, values)

    def _examples(self):
        """The examples this epoch's updates trained on, or None where nothing says."""
        if self.rows_trained is not None and self._first_iteration is not None:
            last = self._first_iteration + self._updates
            return self.rows_trained(last) - self.rows_trained(self._first_iteration)
        if self.examples_per_epoch is not None:
            if self._steps and self._updates < self._steps:  # resumed mid-way or cut short
                return self.examples_per_epoch * self._updates / self._steps
            return self.examples_per_epoch
        if self.batch_size is not None:
            return self._updates * self.batch_size
        return None
