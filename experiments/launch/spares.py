"""``--jobs`` worker processes: their command line, their environment, and the ones started early.

``main.py --jobs=N`` calls ``start`` first thing, before it imports TensorFlow: N - 1 workers
(``python main.py --worker``) then import TensorFlow on the other cores while the launcher imports
its own and checks the study, instead of after. The executor's pool takes them (``take``, through
``worker_processes``) when its runs use the same number of threads, or starts its own; ``release``
ends those nobody took (a single run launched with ``--jobs``, a configuration error). Importing
this module imports no TensorFlow, Keras or gin.
"""

import os
import subprocess
import sys
import tempfile
import threading

from absl import flags, logging  # noqa: F401  (absl.logging defines the LOGGING_FLAGS)

from experiments.common import paths

MAIN = os.path.join(paths.REPO_ROOT, "main.py")

# Workers started before a pool needed them: (process, threads, stderr file).
_SPARES = []
_LOCK = threading.Lock()


def threads_per_job(num_jobs):
    """CPU threads each of ``num_jobs`` simultaneous runs may use (at least 1)."""
    return max(1, (os.cpu_count() or 1) // num_jobs)


# absl's logging flags: a user's ``--verbosity=1`` (or ``-v``, ``--logtostderr``...) holds for
# the runs a worker trains as for those this process trains.
LOGGING_FLAGS = ("verbosity", "logtostderr", "alsologtostderr", "stderrthreshold", "log_dir",
                 "showprefixforinfo")


def logging_flags():
    """The absl logging flags this process was given (``--name=value``), for its workers."""
    forwarded = []
    for name in LOGGING_FLAGS:
        if name not in flags.FLAGS:
            continue
        flag = flags.FLAGS[name]
        if flag.present:  # given (not ``using_default_value``: absl's app.run sets verbosity)
            forwarded.append(flag.serialize())  # "--verbosity=1", "--logtostderr", "--nofoo"
    return forwarded


def worker_command(gin_files, base_bindings, threads):
    """The command line of a worker process (see ``worker``). The files and bindings there are
    its defaults (and say whose worker it is in ``ps``); each job sends the ones it runs with."""
    return ([sys.executable, MAIN, "--worker", f"--intra_op_threads={threads}"]
            + logging_flags()
            + [f"--gin_file={f}" for f in gin_files]
            + [f"--gin_bindings={b}" for b in base_bindings])


def thread_env(threads):
    """The environment variables that hold a process to ``threads`` CPU threads (read when
    TensorFlow and OpenMP start): the workers' and, with --jobs, the launcher's own."""
    return {"OMP_NUM_THREADS": str(threads), "TF_NUM_INTRAOP_THREADS": str(threads),
            "TF_NUM_INTEROP_THREADS": "1"}


def worker_env(threads):
    """The environment of a worker: its share of the CPU threads, quiet TensorFlow start-up."""
    env = dict(os.environ, **thread_env(threads), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONUNBUFFERED="1", BATCHLAB_LAUNCHER_PID=str(os.getpid()))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (paths.REPO_ROOT, env.get("PYTHONPATH")) if p)
    return env


def worker_cwd():
    """A worker's working directory: the launcher's own, so that every relative path a user gave
    (a gin file, an ``include``, a data file, ``--output_dir``) names there what it names here;
    the shipped gin files are found through gin's search path (``gin_config.parse``). The
    repository root only when the launcher's directory is gone."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        return paths.REPO_ROOT


def popen(command, threads, stderr):
    """Starts one worker (stdin and stdout pipes, text) with ``stderr`` as its stderr, in the
    launcher's working directory (``worker_cwd``)."""
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=stderr, text=True, cwd=worker_cwd(),
                            env=worker_env(threads))


def start(num_jobs, gin_files, gin_bindings):
    """Starts the ``num_jobs - 1`` workers a ``--jobs=num_jobs`` launch will use (this process
    is the other slot); their stderr goes to a temporary file until a pool takes them."""
    threads = threads_per_job(num_jobs)
    command = worker_command(gin_files, gin_bindings, threads)
    for _ in range(num_jobs - 1):
        errors = tempfile.TemporaryFile()
        with _LOCK:
            _SPARES.append((popen(command, threads, errors), threads, errors))


def take(threads):
    """A started worker whose runs use ``threads`` threads and that is still alive:
    ``(process, stderr file)``, or None."""
    with _LOCK:
        for index, (process, spare_threads, errors) in enumerate(_SPARES):
            if spare_threads == threads and process.poll() is None:
                del _SPARES[index]
                return process, errors
    return None


def close(process, grace_seconds=5):
    """Closes a worker's stdin (it ends after its current job) and waits for it to end;
    terminates it when it does not end in ``grace_seconds``."""
    try:
        process.stdin.close()
    except OSError:
        pass
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait()


def release():
    """Ends the started workers that no pool took (at once: they hold no run)."""
    with _LOCK:
        left = list(_SPARES)
        del _SPARES[:]
    for process, _, errors in left:
        process.terminate()
        process.wait()
        for pipe in (process.stdin, process.stdout):
            pipe.close()
        errors.close()
