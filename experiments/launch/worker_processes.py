"""The launcher's side of the ``--jobs`` worker protocol (``worker`` is the other side).

A worker (``python main.py --worker``) says ``worker.READY_PREFIX`` once its imports are done,
then reads one JSON job a line (``job_message``) and answers each with ``worker.DONE_PREFIX``; a
worker that ends without that answer has died in its run, and its exit code says how. Its stderr
goes to the study's ``.workers.log``. ``WorkerProcess`` wraps one such process, taken from the
ones ``main.py`` started early (``spares``) or started here; ``stop`` ends those still running
when the launch itself is stopped.
"""

import json
import signal
import subprocess
import threading

from experiments.launch import outcomes, spares
from experiments.launch.worker import DONE_PREFIX, READY_PREFIX

# Every run a worker trains gets these last: no progress bar, so no terminal control codes.
CHILD_BINDINGS = ("train.verbose = 2",)


def job_message(job, gin_files, base_bindings):
    """The JSON object a worker (or this process's slot) trains ``job`` from. Its relative paths
    name the same files in a worker as here: workers run in the launcher's working directory
    (``spares.worker_cwd``)."""
    return {"gin_files": list(gin_files),
            "bindings": list(base_bindings) + list(job.spec.bindings) + list(CHILD_BINDINGS),
            "run_dir": job.run_dir, "log": outcomes.pending_log(job.run_dir)}


class WorkerProcess:
    """One worker process, its stdout read line by line, its stderr in a file."""

    def __init__(self, process, errors_path, spare_errors=None):
        self.process, self.errors_path, self.spare_errors = process, errors_path, spare_errors

    @classmethod
    def start(cls, command, threads, errors_path):
        """A worker ``main.py`` started early with ``threads`` threads (``spares``), or a new
        one running ``command``."""
        spare = spares.take(threads)
        if spare is not None:
            return cls(spare[0], errors_path, spare[1])
        with open(errors_path, "a") as errors:
            return cls(spares.popen(command, threads, errors), errors_path)

    def wait_ready(self):
        """True once the worker says it is ready (imports done); False when it died first."""
        for line in self.process.stdout:
            if line.startswith(READY_PREFIX):
                return True
        return False

    def send(self, message):
        """Sends one job and waits for it: 0 when it reported done, else its exit code (negative:
        the signal that killed it; ``outcomes.UNANSWERED`` when it exited 0 without a word)."""
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return self.process.wait() or outcomes.UNANSWERED
        for line in self.process.stdout:
            if line.startswith(DONE_PREFIX):
                return 0
        return self.process.wait() or outcomes.UNANSWERED

    def close(self):
        spares.close(self.process)
        self.keep_errors()

    def keep_errors(self):
        """A spare's stderr (a temporary file until now) is appended to the study's log."""
        if self.spare_errors is None:
            return
        self.spare_errors.seek(0)
        text = self.spare_errors.read()
        self.spare_errors.close()
        self.spare_errors = None
        if text:
            with open(self.errors_path, "ab") as log:
                log.write(text)


def stop(processes, lock, grace_seconds=30):
    """Asks the workers we started that still run to stop (SIGTERM: their run saves a checkpoint
    and says 'interrupted'), waits for them, kills any that do not end in time."""
    with lock:
        alive = [p for p in processes if p.poll() is None]
    for process in alive:
        process.terminate()
    for process in alive:
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class LaunchStopped(KeyboardInterrupt):
    """The launch was stopped by signal ``signum``; its workers were stopped with it."""

    def __init__(self, signum):
        super().__init__(f"signal {signum}")
        self.signum = int(signum)


def stop_on_sigterm():
    """SIGTERM raises ``LaunchStopped`` (a KeyboardInterrupt) here (main thread only), so that
    the workers are stopped with us instead of finishing their run unattended; returns the
    previous handler or None."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise LaunchStopped(signum)

    return signal.signal(signal.SIGTERM, interrupt)
