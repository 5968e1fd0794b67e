"""Distribution strategy as a gin choice, and the fit/evaluate calls that work under it.

``train.strategy`` names a factory here:

- ``@default_strategy``: one device (the default).
- ``@mirrored``: MirroredStrategy over the local GPUs, or over ``num_cpu_devices`` logical CPUs.
- ``@multi_worker_mirrored``: MultiWorkerMirroredStrategy over the workers listed in ``TF_CONFIG``
  (start the same command once per worker, each with its own ``TF_CONFIG`` task index).

Whatever the strategy, each replica accumulates its micro-batches' gradients locally and the
gradients are all-reduced once per update, by ``optimizer.apply`` (see ``accumulation``).

Training goes through batchlab's own loop, ``custom_loop.CustomLoop`` (``strategy.run`` over a
distributed dataset), on one replica or several: it resumes a run at any update, and Keras 3's fit
fails under MultiWorkerMirroredStrategy (keras-team/keras#20585) and, under MirroredStrategy, on any
batch that splits unevenly over the replicas. ``fit.loop = 'keras'`` uses ``model.fit`` instead
(one replica, no mid-epoch resume). Both run the same train step.

Both MultiWorkerMirroredStrategy and logical CPU devices must be set up before TensorFlow
initialises its runtime: the runner resolves the strategy before it touches any data.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile

import gin
import tensorflow as tf
from absl import logging

from experiments.common import checks
from experiments.engine import custom_loop, keras_internals

LOOPS = ("auto", "keras", "custom")
STEPS_PER_EXECUTION = 32  # measured: BUILD.md, "Fast small runs"


@gin.configurable
def default_strategy():
    return tf.distribute.get_strategy()


@gin.configurable
def mirrored(num_cpu_devices=None):
    """MirroredStrategy over the local GPUs, or over ``num_cpu_devices`` logical CPUs."""
    if num_cpu_devices is not None:
        checks.positive_int(num_cpu_devices, "mirrored.num_cpu_devices")
        cpu = tf.config.list_physical_devices("CPU")[0]
        existing = tf.config.get_logical_device_configuration(cpu)
        if not existing:
            try:
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices)
            except RuntimeError as error:
                raise ValueError(
                    "mirrored.num_cpu_devices: TensorFlow was initialised before the logical CPU "
                    "devices could be configured. In a gin file, an object built with "
                    "parentheses (a metric written @keras.metrics.BinaryAccuracy() in "
                    "train.metrics) starts TensorFlow when the configuration is read: write the "
                    "class (@keras.metrics.BinaryAccuracy), which the model builds in the "
                    "strategy's scope. In Python, create the strategy first.") from error
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        if len(devices) < num_cpu_devices:
            raise ValueError(
                f"mirrored.num_cpu_devices={num_cpu_devices}, but TensorFlow already runs with "
                f"{len(devices)} CPU devices in this process.")
        return _mirrored_over(tuple(devices[:num_cpu_devices]))
    return _mirrored_over(None)


# One MirroredStrategy per device set and process. Each new strategy numbers its collective
# operations from the same start, and TensorFlow keeps the earlier strategy's instances: a second
# run in the process (a sweep's next variant) whose all-reduces have other shapes (another B)
# failed with "Shape mismatch in the collective instance".
_MIRRORED = {}


def _mirrored_over(devices):
    if devices not in _MIRRORED:
        _MIRRORED[devices] = tf.distribute.MirroredStrategy(
            None if devices is None else list(devices))
    return _MIRRORED[devices]


@gin.configurable
def multi_worker_mirrored(communication="auto"):
    """MultiWorkerMirroredStrategy over the cluster in ``TF_CONFIG``.

    Args:
      communication: collective implementation, 'auto', 'ring' or 'nccl'.
    """
    implementations = {
        "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
        "ring": tf.distribute.experimental.CommunicationImplementation.RING,
        "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
    }
    if communication not in implementations:
        raise ValueError(
            f"multi_worker_mirrored.communication must be one of {sorted(implementations)}, got "
            f"{communication!r}.")
    config = os.environ.get("TF_CONFIG")
    if not config:
        logging.warning("multi_worker_mirrored: TF_CONFIG is not set; training as one worker.")
    else:
        try:
            cluster = json.loads(config)
            workers = cluster["cluster"]["worker"]
            task = cluster["task"]
            int(task["index"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                "multi_worker_mirrored: TF_CONFIG must be JSON like "
                '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
                f'"index": 0}}; got {config!r} ({type(error).__name__}: {error}).') from error
        logging.info("multi_worker_mirrored: worker %s of %s", task["index"], workers)
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=implementations[communication])
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as error:
        raise RuntimeError(
            "MultiWorkerMirroredStrategy must be created before TensorFlow runs any operation "
            f"in this process ({error}).") from error


def resolve(strategy):
    """A strategy instance from a factory, an instance, or None (the default strategy)."""
    if strategy is None:
        return tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    if not callable(strategy):
        raise ValueError(
            "train.strategy must be a strategy factory such as @mirrored or "
            f"@multi_worker_mirrored, got {strategy!r}.")
    return strategy()


def is_multi_worker(strategy):
    return keras_internals.in_multi_worker_mode(strategy)


def is_chief(strategy):
    """True on the process that writes results: the only one, the 'chief', or worker 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not is_multi_worker(strategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    jobs = resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and "chief" not in jobs


class WorkersDifferError(ValueError):
    """The workers of one multi-worker job were launched with different configurations."""


def check_same_on_every_worker(strategy, text):
    """Raises ``WorkersDifferError`` on every worker when ``text`` (a worker's configuration as
    the runner passes it: the bindings that decide results) is not the same on all of them.
    Nothing else compares the workers' commands: a worker launched with another learning rate
    trained in step with the chief, its updates averaged with the chief's, and the chief's run
    directory recorded a configuration no worker ran. One all-reduce of a 20-bit digest d and
    d² (exact in float64): their spread is 0 on every worker iff all digests are equal, so
    every worker refuses together, before anything is written (a collision goes unnoticed
    about once in a million mistakes)."""
    if not is_multi_worker(strategy):
        return
    digest = float(int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:3], "big")
                   >> 4)
    total = strategy.reduce(
        tf.distribute.ReduceOp.SUM,
        strategy.run(lambda: tf.constant([digest, digest * digest, 1.0], tf.float64)),
        axis=None)
    total_digest, total_square, count = (float(v) for v in total.numpy())
    if total_square * count != total_digest * total_digest:
        raise WorkersDifferError(
            "The workers of this multi-worker job were launched with different configurations "
            "(gin files and bindings that decide results differ between them; only "
            "checkpoints.* and train.verbose may differ): launch every worker with the same "
            "command, TF_CONFIG's task index aside.")


class WorkerLost(ValueError):
    """A worker of a multi-worker job stopped answering (killed, out of memory, its machine
    lost, or ended by an error of its own): the job cannot go on, and relaunching every worker
    resumes it from the chief's newest checkpoint."""


# What TensorFlow raises on a worker whose peer is gone: the coordination service's "tasks are
# unhealthy", a refused or reset connection, a collective that timed out or was cancelled.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.CancelledError, tf.errors.AbortedError)


def lost_worker(error, resume_update=None):
    """A ``WorkerLost`` that says what happened and what to do, for ``error`` raised in a
    multi-worker job when it is TensorFlow reporting a lost peer; None for any other error.
    It replaces a traceback of some 120 lines. ``resume_update``: the chief's newest
    checkpoint (None: none yet, or unknown on a non-chief worker)."""
    if not isinstance(error, _PEER_ERRORS):
        return None
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", str(text))  # the graph function's name: noise here
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    where = ("the chief's newest checkpoint" if resume_update is None
             else f"the chief's newest checkpoint (update {resume_update})")
    return WorkerLost(
        f"a worker of this multi-worker job stopped answering ({type(error).__name__}: "
        f"{first[:240]}); relaunch every worker with the same command to resume from {where} "
        "(a worker that stopped on an error of its own says why in its output).")


def scratch_dir(strategy, name=None):
    """A fresh temporary directory for a non-chief worker (all workers run the same program;
    only the chief's run directory is the run's record). A named run gets the same directory
    each time, emptied first: what a killed worker left there goes when the job is relaunched."""
    resolver = strategy.cluster_resolver
    prefix = f"batchlab-{resolver.task_type}{resolver.task_id}-"
    if name is None:
        return tempfile.mkdtemp(prefix=prefix)
    path = os.path.join(tempfile.gettempdir(), prefix + name.replace(os.sep, "_"))
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def check_keras_loop(adaptive):
    """``fit.loop = 'keras'`` cannot change the batch while training."""
    if adaptive:
        raise ValueError("fit.loop = 'keras' cannot train with train.batch_size_schedule = "
                         "@adaptive_batch_size() (Keras' fit cannot change the batch while "
                         "training); use fit.loop = 'auto'.")


def _use_custom_loop(strategy, loop):
    checks.one_of(loop, LOOPS, "fit.loop")
    if loop == "keras" and (is_multi_worker(strategy) or strategy.num_replicas_in_sync > 1):
        raise ValueError("fit.loop = 'keras' cannot train on several replicas (Keras 3's fit "
                         "fails there, keras-team/keras#20585); use 'auto'.")
    return loop != "keras"


@gin.configurable(denylist=["model", "pipelines", "epochs", "callbacks", "strategy", "verbose",
                            "initial_epoch", "initial_step", "resume", "controller",
                            "check_only"])
def fit(model, pipelines, epochs, callbacks, strategy, verbose=1, loop="auto", initial_epoch=0,
        initial_step=0, resume=None, steps_per_execution=STEPS_PER_EXECUTION, jit_compile=False,
        controller=None, check_only=False):
    """Trains from update ``initial_step`` of epoch ``initial_epoch``; returns the history dict
    (metric -> per-epoch values).

    Args:
      loop: 'auto' or 'custom': batchlab's loop (``custom_loop.CustomLoop``), which can resume
        mid-epoch and runs on any number of replicas; 'keras': ``model.fit`` on one replica, for
        comparison (it cannot resume a run mid-epoch).
      resume: restores a checkpoint when training starts (see ``CustomLoop.fit_from``).
      steps_per_execution: most updates per graph call of batchlab's loop. Calls still end on
        every update a measurement logs or a checkpoint saves (``custom_loop``), so results are
        the same for any value; what changes is the fixed cost per update (a call and a host
        copy of the metrics; see BUILD.md, "Fast small runs" for the default).
      jit_compile: compile the train step with XLA (BUILD.md, "Fast small runs": when it pays).
      controller: decides the batch while training (``run.adaptive_batch``; batchlab's loop
        only).
      check_only: only check the loop's settings against the strategy and ``controller``
        (truthy: the batch is adaptive), before a run directory exists; trains nothing.
    """
    if check_only:
        if not _use_custom_loop(strategy, loop):
            check_keras_loop(bool(controller))
        checks.positive_int(steps_per_execution, "fit.steps_per_execution")
        return None
    if not is_chief(strategy):
        verbose = 0
    if _use_custom_loop(strategy, loop):
        runner = custom_loop.CustomLoop(model, strategy, steps_per_execution, jit_compile)
        steps = pipelines.steps_per_epoch if pipelines.updates_in is None \
            else pipelines.updates_in  # a batch-size schedule: a function of the epoch
        history = runner.fit_from(
            pipelines.train_from, steps, epochs,
            validation_data=pipelines.validation, callbacks=callbacks, verbose=verbose,
            initial_epoch=initial_epoch, initial_step=initial_step, resume=resume,
            controller=controller)
        return history.history
    check_keras_loop(controller is not None)
    if initial_step or resume is not None:
        raise ValueError("fit.loop = 'keras' cannot resume a run; use fit.loop = 'auto'.")
    if pipelines.updates_in is not None:
        raise ValueError("fit.loop = 'keras' cannot train with train.batch_size_schedule (Keras' "
                         "fit runs the same number of updates every epoch); use 'auto'.")
    history = model.fit(
        pipelines.train_from(initial_epoch, 0, epochs - initial_epoch),
        steps_per_epoch=pipelines.steps_per_epoch, initial_epoch=initial_epoch, epochs=epochs,
        validation_data=pipelines.validation, callbacks=callbacks, verbose=verbose,
        shuffle=False)  # the pipeline orders the rows (a function of the seed and the epoch)
    return history.history


def evaluate(model, pipelines, strategy):
    """Evaluates on the validation pipeline through the loop that trained the model."""
    return model.evaluate(pipelines.validation, verbose=0, return_dict=True)
