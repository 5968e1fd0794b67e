"""The runner: builds one run from gin, trains it, evaluates it and writes its run directory.

Order matters for honesty: the data is loaded and every batch-size rule checked *before* the run
directory exists, so bad input never leaves a directory that looks like a run. Once training starts,
a failure marks the run ``failed`` in ``status.json``; ``result.json`` is written only on success.
"""

import dataclasses
import importlib.metadata
import os
import platform
import resource
import time
from typing import Any, Callable, Optional

import gin
import keras
import tensorflow as tf
from absl import logging

from callbacks import summary_writer
from callbacks.nan_guard import FailOnNonFiniteLoss
from callbacks.operative_config import OperativeConfigSaver
from experiments import data as data_lib
from experiments import distribute
from experiments import measurements as measurements_lib
from experiments import run_dir as run_dir_lib
from experiments import seeding
from experiments import stateful_training
from experiments import train_step

PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "gin-config", "absl-py", "numpy",
            "tensorboard")


def check_virtual_batch(batch_size, micro_batch_size, num_examples):
    """Validates B (``train.batch_size``) against b (``train.micro_batch_size``) and the data."""
    batch_size = data_lib.check_batch_size(batch_size, "train.batch_size")
    if micro_batch_size is None:
        return batch_size, None, 1
    micro = data_lib.check_batch_size(micro_batch_size, "train.micro_batch_size")
    if micro > batch_size:
        raise ValueError(
            f"train.micro_batch_size={micro} is larger than the virtual batch "
            f"train.batch_size={batch_size}; the micro-batch must divide the virtual batch.")
    if batch_size % micro:
        raise ValueError(
            f"train.batch_size={batch_size} is not a multiple of train.micro_batch_size={micro}: "
            f"a virtual batch is k whole micro-batches (e.g. {micro * max(batch_size // micro, 1)}"
            f" or {micro * (batch_size // micro + 1)}).")
    if num_examples is not None and batch_size > num_examples:
        raise ValueError(
            f"train.batch_size={batch_size} is larger than the {num_examples} training examples.")
    return batch_size, micro, batch_size // micro


def _make_optimizer(optimizer):
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer
    if callable(optimizer):
        return optimizer()
    raise ValueError(f"train.optimizer must be an optimizer or its class, got {optimizer!r}.")


def _package_versions():
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def peak_memory_mb():
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@gin.configurable(denylist=["output_dir", "experiment", "run_name", "config_text"])
def train(model_fn=gin.REQUIRED, data_fn=gin.REQUIRED, optimizer=gin.REQUIRED, loss=gin.REQUIRED,
          batch_size=gin.REQUIRED, epochs=1, micro_batch_size=None, eval_batch_size=None,
          metrics=("accuracy",), seed=0, deterministic_ops=False, dtype_policy="float32",
          strategy=None, extra_callbacks=(), gap_subset_size=512, track_gradient_noise=None,
          gradient_norm_every=10, measurements=None, checkpoint_every_epoch=True, shuffle=True,
          verbose=1, output_dir="runs", experiment="experiment", run_name=None, config_text=""):
    """Runs one experiment and returns its result dict (also written to ``result.json``).

    Args:
      model_fn: builder called with the data's ``DataSpec`` (e.g. ``@models.mlp``).
      data_fn: source returning a ``Data`` (e.g. ``@data.digits``).
      optimizer: a Keras optimizer class or factory, called inside the distribution scope
        (e.g. ``@keras.optimizers.SGD``).
      loss: a Keras loss (e.g. ``@keras.losses.SparseCategoricalCrossentropy()``).
      batch_size: the batch of one update (the virtual batch B when micro-batching).
      micro_batch_size: rows per micro-batch b (B must be a multiple); None trains on B at once.
      eval_batch_size: batch size for validation and evaluation (defaults to ``batch_size``).
      dtype_policy: 'float32', 'mixed_bfloat16' or 'float64'.
      strategy: a distribution strategy factory from ``experiments.distribute`` or None.
      extra_callbacks: more Keras callbacks (instances) to add.
      gap_subset_size: rows of the fixed training subset used by the generalization gap and
        sharpness measurements.
      track_gradient_noise: let the train step collect what the gradient noise scale needs; None:
        on when k > 1 and ``measurements`` includes the gradient noise scale.
      gradient_norm_every: logging frequency (updates) of the per-update measurements.
      measurements: measurement factories (``experiments/measurements.py``), e.g.
        ``[@measurements.gradient_norms, @measurements.sharpness]``; None: ``measurements.DEFAULT``.
    """
    started = time.time()
    # First: multi-worker and logical-device strategies must exist before TensorFlow starts.
    strategy_obj = distribute.resolve(strategy)
    seeding.seed_everything(seed, deterministic_ops)
    _set_dtype_policy(dtype_policy)
    data = data_fn()
    stateful_training.check_settings(data, micro_batch_size)
    fixed_batch = data.spec.batch_size
    batch_size, micro, accumulation = check_virtual_batch(
        batch_size, micro_batch_size, data.num_train if fixed_batch is None else None)
    pipelines = data_lib.make_pipelines(data, batch_size, eval_batch_size, seed=seed,
                                        shuffle=shuffle)
    if pipelines.time_window:  # stream data: an update is k consecutive windows
        accumulation = pipelines.windows_per_update
    factories = measurements_lib.resolve(measurements)
    track_gradient_noise = measurements_lib.track_gradient_noise(
        track_gradient_noise, factories, accumulation, bool(pipelines.time_window))
    measurement_context = measurements_lib.make_context(
        data, None, None, batch_size, micro, accumulation, eval_batch_size, gap_subset_size,
        gradient_norm_every, track_gradient_noise, seed, bool(pipelines.time_window),
        pipelines=pipelines)
    measurements_lib.check(factories, measurement_context)  # bad settings fail before the run

    plan = _Plan(data=data, pipelines=pipelines, strategy=strategy_obj, model_fn=model_fn,
                 optimizer=optimizer, loss=loss, metrics=list(metrics), epochs=int(epochs),
                 batch_size=batch_size, micro=micro, accumulation=accumulation,
                 track_gradient_noise=track_gradient_noise,
                 gradient_norm_every=gradient_norm_every, measurement_factories=factories,
                 measurement_context=measurement_context,
                 checkpoint_every_epoch=checkpoint_every_epoch,
                 extra_callbacks=list(extra_callbacks), verbose=verbose)

    # Under multi-worker training only the chief writes the run; the others write to a temp dir.
    path = run_dir_lib.create(distribute.output_dir_for(strategy_obj, output_dir), experiment,
                              run_name)
    run_dir_lib.write_text(path, "config.gin", config_text)
    logging.info("Run directory: %s", path)
    try:
        result = _train_in(path, plan, config_text)
    except BaseException as error:
        run_dir_lib.mark_failed(path, error)
        summary_writer.close_all()
        raise
    result.update(experiment=experiment, run_dir=path, seed=seed, dtype_policy=dtype_policy,
                  wall_time_s=time.time() - started, peak_memory_mb=peak_memory_mb(),
                  versions=_package_versions())
    run_dir_lib.write_json(path, "result.json", result)
    run_dir_lib.write_json(path, "status.json", {"status": "finished"})
    return result


@dataclasses.dataclass
class _Plan:
    """Everything ``train`` resolved and checked before the run directory existed."""

    data: data_lib.Data
    pipelines: data_lib.Pipelines
    strategy: tf.distribute.Strategy
    model_fn: Callable
    optimizer: Any
    loss: Any
    metrics: list
    epochs: int
    batch_size: int
    micro: Optional[int]
    accumulation: int
    track_gradient_noise: bool
    gradient_norm_every: int
    measurement_factories: Any
    measurement_context: Any
    checkpoint_every_epoch: bool
    extra_callbacks: list
    verbose: int


def _set_dtype_policy(dtype_policy):
    allowed = ("float32", "mixed_bfloat16", "float64")
    if dtype_policy not in allowed:
        raise ValueError(f"train.dtype_policy must be one of {allowed}, got {dtype_policy!r}.")
    keras.backend.set_floatx("float64" if dtype_policy == "float64" else "float32")
    keras.config.set_dtype_policy(dtype_policy)


def _train_in(path, plan, config_text):
    """Builds the model and callbacks inside the run directory ``path``, trains, evaluates."""
    log_dir = os.path.join(path, "tensorboard")
    writer = summary_writer.writer_for(log_dir)
    with writer.as_default():
        tf.summary.text("config/parsed", "\n".join("    " + line for line in
                                                   config_text.splitlines()), step=0)

    data, pipelines, strategy = plan.data, plan.pipelines, plan.strategy
    with strategy.scope():
        model = train_step.as_virtual_batch_model(
            plan.model_fn(data.spec), micro_batch_size=plan.micro,
            track_gradient_noise=plan.track_gradient_noise, virtual_batch_size=plan.batch_size,
            # Nothing measured: the step skips the gradient norms too.
            measure_every_n_updates=plan.gradient_norm_every if plan.measurement_factories
            else 0)
        model.compile(optimizer=_make_optimizer(plan.optimizer), loss=plan.loss,
                      metrics=plan.metrics)
        state_callbacks = stateful_training.prepare(model, data, pipelines)

    callbacks = [
        FailOnNonFiniteLoss(),
        OperativeConfigSaver(path, gin.operative_config_str, log_dir),
        keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False),
    ]
    measured = measurements_lib.build(plan.measurement_factories, plan.measurement_context,
                                      log_dir=log_dir, run_dir=path)
    callbacks += measured
    if plan.checkpoint_every_epoch:
        callbacks.append(keras.callbacks.ModelCheckpoint(
            os.path.join(path, "checkpoints", "epoch-{epoch:03d}.weights.h5"),
            save_weights_only=True))
    callbacks += state_callbacks  # stateful models: reset per epoch, isolated evaluation
    callbacks += plan.extra_callbacks

    train_started = time.time()
    history = distribute.fit(model, pipelines, plan.epochs, callbacks, strategy, plan.verbose)
    train_time = time.time() - train_started
    os.makedirs(os.path.join(path, "checkpoints"), exist_ok=True)
    model.save_weights(os.path.join(path, "checkpoints", "final.weights.h5"))

    final = {}
    if pipelines.validation is not None:
        with stateful_training.isolated_state(model):  # no-op without stateful layers
            final = distribute.evaluate(model, pipelines, strategy)
    epoch_logs = {k: float(v[-1]) for k, v in history.items() if v}
    updates = int(model.optimizer.iterations.numpy())
    num_train = data.num_train or pipelines.steps_per_epoch * plan.batch_size
    summary_writer.close_all()
    return {
        "epochs": plan.epochs,
        "batch_size": plan.batch_size,
        "micro_batch_size": plan.micro,
        "accumulation_steps": plan.accumulation,
        "updates": updates,
        "train_time_s": train_time,
        "examples_per_sec": num_train * plan.epochs / max(train_time, 1e-9),
        "updates_per_sec": updates / max(train_time, 1e-9),
        "final_epoch": epoch_logs,
        "final_validation": {k: float(v) for k, v in final.items()},
        "num_train_examples": num_train,
        "num_validation_examples": data.num_validation,
        "measurements": measurements_lib.results(measured),
    }
