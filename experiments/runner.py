"""The runner: builds one run from gin, trains it, evaluates it and writes its run directory.

Order matters for honesty: the data is loaded and every batch-size rule checked *before* the run
directory exists, so bad input never leaves a directory that looks like a run. Once training starts,
a failure marks the run ``failed`` in ``status.json``; ``result.json`` is written only on success.
"""

import importlib.metadata
import os
import platform
import resource
import time

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from callbacks import summary_writer
from callbacks.generalization_gap import GeneralizationGap, fixed_subset
from callbacks.gradient_norm import GradientNorm
from callbacks.nan_guard import FailOnNonFiniteLoss
from callbacks.operative_config import OperativeConfigSaver
from experiments import data as data_lib
from experiments import distribute
from experiments import run_dir as run_dir_lib
from experiments import seeding
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
          strategy=None, extra_callbacks=(), gap_subset_size=512, track_gradient_noise=False,
          gradient_norm_every=1, checkpoint_every_epoch=True, shuffle=True, verbose=1,
          output_dir="runs", experiment="experiment", run_name=None, config_text=""):
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
      gap_subset_size: rows of the training set evaluated for the generalization gap.
      track_gradient_noise: let the train step collect what the gradient noise scale needs.
    """
    started = time.time()
    seeding.seed_everything(seed, deterministic_ops)
    _set_dtype_policy(dtype_policy)
    data = data_fn()
    fixed_batch = data.spec.batch_size
    batch_size, micro, accumulation = check_virtual_batch(
        batch_size, micro_batch_size, data.num_train if fixed_batch is None else None)
    pipelines = data_lib.make_pipelines(data, batch_size, eval_batch_size, seed=seed,
                                        shuffle=shuffle)
    strategy_obj = distribute.resolve(strategy)

    path = run_dir_lib.create(output_dir, experiment, run_name)
    run_dir_lib.write_text(path, "config.gin", config_text)
    log_dir = os.path.join(path, "tensorboard")
    logging.info("Run directory: %s", path)
    try:
        result = _train_in(path, log_dir, data, pipelines, strategy_obj, model_fn, optimizer,
                           loss, metrics, epochs, micro, accumulation, batch_size,
                           eval_batch_size, seed, extra_callbacks, gap_subset_size,
                           track_gradient_noise, gradient_norm_every, checkpoint_every_epoch,
                           verbose, config_text)
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


def _set_dtype_policy(dtype_policy):
    allowed = ("float32", "mixed_bfloat16", "float64")
    if dtype_policy not in allowed:
        raise ValueError(f"train.dtype_policy must be one of {allowed}, got {dtype_policy!r}.")
    keras.backend.set_floatx("float64" if dtype_policy == "float64" else "float32")
    keras.config.set_dtype_policy(dtype_policy)


def _train_in(path, log_dir, data, pipelines, strategy, model_fn, optimizer, loss, metrics,
              epochs, micro, accumulation, batch_size, eval_batch_size, seed, extra_callbacks,
              gap_subset_size, track_gradient_noise, gradient_norm_every,
              checkpoint_every_epoch, verbose, config_text):
    writer = summary_writer.writer_for(log_dir)
    with writer.as_default():
        tf.summary.text("config/parsed", "\n".join("    " + line for line in
                                                   config_text.splitlines()), step=0)

    with strategy.scope():
        model = train_step.as_virtual_batch_model(
            model_fn(data.spec), micro_batch_size=micro,
            track_gradient_noise=track_gradient_noise)
        model.compile(optimizer=_make_optimizer(optimizer), loss=loss, metrics=list(metrics))

    callbacks = [
        FailOnNonFiniteLoss(),
        OperativeConfigSaver(path, gin.operative_config_str, log_dir),
        keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False),
        GradientNorm(log_dir, every_n_updates=gradient_norm_every),
    ]
    if data.x_train is not None and data.num_validation:
        callbacks.append(GeneralizationGap(
            fixed_subset(data.x_train, data.y_train, gap_subset_size, seed),
            (data.x_validation, data.y_validation), log_dir=log_dir,
            batch_size=eval_batch_size or batch_size))
    if checkpoint_every_epoch:
        callbacks.append(keras.callbacks.ModelCheckpoint(
            os.path.join(path, "checkpoints", "epoch-{epoch:03d}.weights.h5"),
            save_weights_only=True))
    callbacks += list(extra_callbacks)

    train_started = time.time()
    history = distribute.fit(model, pipelines, epochs, callbacks, strategy, verbose)
    train_time = time.time() - train_started
    model.save_weights(os.path.join(path, "checkpoints", "final.weights.h5"))

    final = {}
    if pipelines.validation is not None:
        final = distribute.evaluate(model, pipelines, strategy)
    epoch_logs = {k: float(v[-1]) for k, v in history.items() if v}
    updates = int(model.optimizer.iterations.numpy())
    num_train = data.num_train or pipelines.steps_per_epoch * batch_size
    summary_writer.close_all()
    return {
        "epochs": int(epochs),
        "batch_size": batch_size,
        "micro_batch_size": micro,
        "accumulation_steps": accumulation,
        "updates": updates,
        "train_time_s": train_time,
        "examples_per_sec": num_train * epochs / max(train_time, 1e-9),
        "updates_per_sec": updates / max(train_time, 1e-9),
        "final_epoch": epoch_logs,
        "final_validation": {k: float(v) for k, v in final.items()},
        "num_train_examples": num_train,
        "num_validation_examples": data.num_validation,
    }
