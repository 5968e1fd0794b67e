"""SIGTERM and SIGINT during training: remembered, acted on at the next update boundary.

A cluster's time limit or a preemption sends SIGTERM; Ctrl-C sends SIGINT. Inside
``catch_stop_signals()`` either only sets a flag; the checkpoint callback sees it after the current
update, saves, and stops training (``callbacks.checkpointing.TrainingInterrupted``). The process
then exits with 128 + the signal (143 for SIGTERM, 130 for SIGINT). A second signal while the
first is being handled is ignored: the checkpoint is already on its way.
"""

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """The first stop signal received (or None)."""

    def __init__(self):
        self.signal = None

    def __call__(self):
        return self.signal

    def _handler(self, signum, frame):  # noqa: ARG002 (signal handler signature)
        if self.signal is None:
            self.signal = signum


@contextlib.contextmanager
def catch_stop_signals(enabled=True):
    """Yields a ``StopRequest``; restores the previous handlers on exit. Not ``enabled``, or
    outside the main thread (where Python cannot install handlers), the request never fires and
    the signals keep their default effect."""
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request._handler) for sig in STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
