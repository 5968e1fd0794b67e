"""A heartbeat: ``beat()`` every ``every_seconds`` while training runs, so that a reader can tell a
live run from one whose process died without a word (SIGKILL, an out-of-memory kill, a lost
machine). In batchlab runs ``beat`` rewrites ``status.json`` with the time; works in any
``model.fit``.
"""

import time

import keras

from experiments.common import checks


class Heartbeat(keras.callbacks.Callback):
    """Args:
      beat: called with no argument when a beat is due (at an update or epoch end).
      every_seconds: seconds between beats.
    """

    def __init__(self, beat, every_seconds=30.0):
        super().__init__()
        self.beat = beat
        self.every_seconds = checks.positive_number(every_seconds, "every_seconds")
        self._last = None

    def _maybe_beat(self):
        now = time.monotonic()
        if self._last is None or now - self._last >= self.every_seconds:
            self._last = now
            self.beat()

    def on_train_begin(self, logs=None):
        self._maybe_beat()

    def on_train_batch_end(self, batch, logs=None):
        self._maybe_beat()

    def on_epoch_end(self, epoch, logs=None):
        self._maybe_beat()
