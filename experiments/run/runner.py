"""The runner: one run from its settings, trained, evaluated and written to its run directory.

``train`` is the gin root of a run (``train.batch_size = 64``...). It groups its bindings into a
``RunSettings`` and looks up the run's mode once (``modes``: train, LR range test, micro-batch
finder); a run resolves them into a frozen ``plan.Plan`` (everything checked before the run
directory exists), then builds the model and callbacks, trains, evaluates and writes
``result.json``. What a mode does differently it does through the plan's ``mode``, at fixed
points; this module has one path for all of them. Once training starts, a failure marks the run
``failed`` in ``status.json``; ``result.json`` is written only on success.
"""

import importlib.metadata
import os
import platform
import shutil
import time

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from callbacks import summary_writer
from callbacks.adascale_log import AdaScaleLog
from callbacks.batch_size_log import BatchSizeLog
from callbacks.checkpointing import StoppedAfterFinish, TrainingInterrupted, reason_name
from callbacks.operative_config import OperativeConfigSaver
from experiments.common.memory import peak_memory_mb
from experiments.engine import distribute, keras_internals
from experiments.inputs import dataset as dataset_lib
from experiments.run import callback_states, config_audit, interrupts, modes, preflight
from experiments.run.adaptive_batch import AdaptiveBatchController
from experiments.run import measurements as measurements_lib
from experiments.run import plan as plan_lib
from experiments.run import run_dir as run_dir_lib
from experiments.run import stateful
from experiments.run.settings import (DataSettings, ModelSettings, RunOutput, RunSettings,
                                      check_eval_batch_size, check_learning_rate_scaling,
                                      check_metrics, check_training, checkpoint_settings,
                                      progress_verbosity)
from experiments.run.training_state import RunState

PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "gin-config", "absl-py", "numpy",
            "tensorboard")


@gin.configurable(denylist=["output_dir", "experiment", "run_name", "config_text", "resumable",
                             "in_group"])
def train(model_fn=gin.REQUIRED, data_fn=gin.REQUIRED, optimizer=gin.REQUIRED, loss=gin.REQUIRED,
          batch_size=gin.REQUIRED, epochs=1, micro_batch_size=None, eval_batch_size=None,
          metrics=("accuracy",), seed=0, deterministic_ops=False, dtype_policy="float32",
          strategy=None, shuffle=True, extra_callbacks=(), verbose=None, output_dir="runs",
          experiment="experiment", run_name=None, config_text="", resumable=False,
          in_group=False, mode="train", batch_size_schedule=None, learning_rate_scaling=None):
    """Runs one experiment and returns its result dict (also written to ``result.json``).

    Args:
      model_fn: builder called with the data's ``DataSpec`` (e.g. ``@mlp``).
      data_fn: source returning a ``Data`` (e.g. ``@digits``).
      optimizer: a Keras optimizer class or factory, called inside the distribution scope
        (e.g. ``@keras.optimizers.SGD``).
      loss: a Keras loss (e.g. ``@keras.losses.SparseCategoricalCrossentropy()``).
      batch_size: the batch of one update (the virtual batch B when micro-batching).
      micro_batch_size: rows per micro-batch b (B must be a multiple); None trains on B at once.
      batch_size_schedule: ``@batch_size_schedule()``: the virtual batch grows during training
        (k multiplied at given epochs or updates, b unchanged; ``inputs.batch_schedule``); or
        ``@adaptive_batch_size()``: B follows the measured noise scale (``inputs.adaptive_batch``,
        ``run.adaptive_batch``).
      learning_rate_scaling: ``@adascale()``: the learning rate times AdaScale's gain, its
        schedule read at the progress tau (``models.learning_rate_scaling``).
      eval_batch_size: batch size for validation and evaluation (defaults to ``batch_size``).
      dtype_policy: 'float32', 'mixed_bfloat16' or 'float64'.
      strategy: a distribution strategy factory from ``engine.distribute`` or None.
      shuffle: reshuffle the training rows every epoch (seeded).
      extra_callbacks: more Keras callbacks (instances) to add.
      verbose: Keras' progress output: 1 (a progress bar), 2 (one line per epoch), 0 (none);
        None picks 1 when stdout is a terminal and 2 otherwise (a file or a pipe gets no
        terminal control codes).
      mode: a key of ``modes.RUN_MODES``: 'train'; 'find_micro_batch': measure the largest
        micro-batch that fits for this model and batch size instead of training
        (``micro_batch_finder``, ``find_micro_batch.*``; writes nothing); 'lr_range_test': a run
        whose learning rate grows every update until the loss diverges, with a suggested
        learning rate in result.json (``range_test``, ``lr_range_test.*``).
    Measurements are set with ``measurements.*`` and checkpoints with ``checkpoints.*``.
    """
    check_training(epochs, seed, dtype_policy, verbose)
    check_eval_batch_size(eval_batch_size)
    check_metrics(metrics)
    verbose = progress_verbosity(verbose)
    run_mode = modes.chosen(mode)
    settings = RunSettings(
        model=ModelSettings(model_fn, optimizer, loss, tuple(metrics), dtype_policy,
                            check_learning_rate_scaling(learning_rate_scaling)),
        data=DataSettings(data_fn, batch_size, micro_batch_size, eval_batch_size, bool(shuffle),
                          batch_size_schedule),
        epochs=epochs, seed=seed, deterministic_ops=bool(deterministic_ops), strategy=strategy,
        measurements=measurements_lib.measurement_settings(),
        checkpoints=checkpoint_settings(), extra_callbacks=tuple(extra_callbacks),
        verbose=verbose)
    run_mode.check(settings)
    # A process may train many runs (a study's worker): each run's traced graphs go with it.
    with keras_internals.released_custom_gradients():
        return run_mode.start(settings, RunOutput(output_dir, experiment, run_name, config_text,
                                                  resumable, bool(in_group)), run)


def run(settings, output, run_mode):
    """Plans (the settings as ``run_mode`` adjusts them), opens the run directory (new, or an
    unfinished run to resume), trains in it; returns the result dict. A stop signal saves a
    checkpoint and raises ``TrainingInterrupted`` with the run marked 'interrupted'; any other
    failure marks it 'failed'."""
    started = time.time()
    run_dir_lib.check_output_dir(output.output_dir)  # before the data is loaded
    plan = plan_lib.build(settings, run_mode)
    settings = plan.settings
    distribute.check_same_on_every_worker(
        plan.strategy, "\n".join(run_dir_lib.result_bindings(output.config_text)))
    if not distribute.is_chief(plan.strategy):
        return _run_as_worker(plan, output)
    # The model before the run directory: a model that does not fit the data or the layout (a
    # stateless model on stateful streams) is bad input, refused before anything is written.
    built = plan_lib.build_model(plan)
    preflight.check_loss_on_data(built[0], plan)
    preflight.check_scaled_learning_rate(plan)
    preflight.check_learning_rate_sign(built[0])
    path, resuming = _open_run_dir(output)
    multi_worker = distribute.is_multi_worker(plan.strategy)
    state = RunState(path, settings.checkpoints, resuming, synchronized=multi_worker,
                     from_checkpoint=run_mode.resumable, started=started)
    try:
        state.use_data(dataset_lib.fingerprint(plan.data))  # refuses changed data on a resume
    except ValueError:
        if resuming:
            run_dir_lib.put_back_status(path)
        raise
    try:
        with interrupts.catch_stop_signals(enabled=not multi_worker) as stop_requested:
            result = _train_in(path, plan, output.config_text, state, stop_requested, built)
    except TrainingInterrupted as stopped:
        _record_end(path, run_dir_lib.mark_interrupted, reason_name(stopped.reason),
                    stopped.update)
        raise
    except BaseException as error:
        lost = distribute.lost_worker(error, run_dir_lib.newest_checkpoint_update(path)) \
            if multi_worker else None
        if lost is not None:  # resumable: relaunching every worker continues the run
            _record_end(path, run_dir_lib.mark_interrupted, "a worker stopped answering",
                        run_dir_lib.newest_checkpoint_update(path))
            raise lost from None
        _keep_operative_config(path)
        _record_end(path, run_dir_lib.mark_failed, error)
        try:
            error.batchlab_run_dir = path  # main.py names it in its one-line message
        except AttributeError:
            pass
        raise
    unused = config_audit.unused_bindings(gin.config_str(), gin.operative_config_str())
    if unused:
        logging.warning("Bindings this run never used (check their names and scopes): %s",
                        ", ".join(unused))
    experiment, group = output.names()
    result.update(experiment=experiment, group=group, run_dir=path, seed=settings.seed,
                  dtype_policy=settings.model.dtype_policy, wall_time_s=state.wall_seconds(),
                  peak_memory_mb=peak_memory_mb(), versions=_package_versions(),
                  unused_bindings=unused)
    run_dir_lib.write_json(path, "result.json", result)
    run_dir_lib.write_json(path, "status.json", {"status": "finished"})
    if stop_requested() is not None:  # the signal came after the last update: acted on now
        raise StoppedAfterFinish(stop_requested(), result.get("updates"))
    return result


def _keep_operative_config(path):
    """A run that fails before its first graph call ends (a NaN in the first chunk of updates)
    has no operative_config.gin yet (``OperativeConfigSaver`` writes it there): write the values
    used so far, which is what a user debugging the failure reads. Best effort: the run's own
    error is what matters."""
    target = os.path.join(path, "operative_config.gin")
    if os.path.exists(target):
        return
    try:
        text = run_dir_lib.with_group_note(gin.operative_config_str())
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(text)
    except Exception as error:  # pylint: disable=broad-except  (never hides the run's own)
        logging.warning("Could not write %s (%s: %s).", target, type(error).__name__, error)


def _record_end(path, mark, *details):
    """Marks how the run ended (``mark``: failed or interrupted) and closes its writers, as far
    as the disk allows: when that fails too (a full disk), the run's own error is what the user
    sees, with a warning that the status could not be written."""
    for step in (lambda: mark(path, *details), summary_writer.close_all):
        try:
            step()
        except Exception as error:  # pylint: disable=broad-except
            logging.warning("Could not record the end of the run in %s (%s: %s).", path,
                            type(error).__name__, error)


def _open_run_dir(output):
    """(path, resuming) of the chief's run directory."""
    if output.resumable and output.run_name:
        path, resuming = run_dir_lib.open_named(output.output_dir, output.experiment,
                                                output.run_name, output.config_text)
    else:
        path, resuming = run_dir_lib.create(output.output_dir, output.experiment,
                                            output.run_name), False
    if not resuming:
        run_dir_lib.write_text(path, "config.gin",
                               run_dir_lib.with_group_note(output.config_text))
    logging.info("Run directory: %s%s", path, " (resuming)" if resuming else "")
    return path, resuming


def _run_as_worker(plan, output):
    """A non-chief worker of a multi-worker job: it trains in step with the chief (and resumes
    from the chief's checkpoint, read from the shared run directory) but keeps nothing: its
    scratch directory is removed when it ends."""
    named = output.resumable and output.run_name
    scratch = distribute.scratch_dir(plan.strategy,
                                     f"{output.experiment}-{output.run_name}" if named else None)
    chief_checkpoints = None
    if named:
        chief_checkpoints = os.path.join(output.output_dir, output.experiment, output.run_name,
                                         "checkpoints")
    try:
        path = run_dir_lib.create(scratch, output.experiment, output.run_name)
        state = RunState(path, plan.settings.checkpoints, resuming=chief_checkpoints is not None,
                         writes=False, checkpoint_dir=chief_checkpoints, synchronized=True)
        with interrupts.catch_stop_signals(enabled=False) as stop_requested:
            return _train_in(path, plan, output.config_text, state, stop_requested,
                             chief=False)
    except Exception as error:  # noqa: BLE001  (a lost peer as one line; anything else as is)
        lost = distribute.lost_worker(error)
        if lost is None:
            raise
        raise lost from None
    finally:
        summary_writer.close_all()
        shutil.rmtree(scratch, ignore_errors=True)


def make_callbacks(plan, path, log_dir, state_callbacks, checkpoint_callbacks=(),
                   mode_callbacks=(), restored_callbacks=(None, None), reused=False):
    """(every callback of the run in order, the measurement callbacks among them, the
    ``CallbackStates`` of its Keras callbacks). ``mode_callbacks``: those of the run's mode
    (``plan.mode.callbacks``), after the stateful model's; ``restored_callbacks``: the callback
    states of the checkpoint a run resumes from (``TrainingState.restored_callbacks``);
    ``reused``: a relaunch in the run's directory (the operative config's text summary is in its
    event files already)."""
    settings = plan.settings
    callbacks = plan.mode.guards()  # first: a broken update stops the run before others log it
    callbacks += [
        OperativeConfigSaver(path, lambda: run_dir_lib.with_group_note(gin.operative_config_str()),
                             None if reused else log_dir),
        summary_writer.TensorBoard(log_dir=log_dir),  # cheap epoch scalars (no graph unless asked)
    ]
    measured = measurements_lib.build(settings.measurements.enabled, plan.measurement_context,
                                      log_dir=log_dir, run_dir=path)
    callbacks += measured
    if plan.layout.batch_size_schedule is not None and not plan.layout.adaptive:
        # B in TensorBoard, stage by stage (an adaptive batch logs its own decisions)
        callbacks.append(BatchSizeLog(plan.layout.stages(settings.epochs), log_dir))
    if settings.model.learning_rate_scaling is not None:
        callbacks.append(AdaScaleLog(log_dir, settings.measurements.every_n_updates))
    if settings.checkpoints.every_epoch:
        callbacks.append(keras.callbacks.ModelCheckpoint(
            os.path.join(path, "checkpoints", "epoch-{epoch:03d}.weights.h5"),
            save_weights_only=True))
    callbacks += state_callbacks  # stateful models: reset per epoch, isolated evaluation
    callbacks += list(mode_callbacks)
    callbacks += list(settings.extra_callbacks)
    # After the Keras callbacks whose state it restores on a resume (their on_train_begin
    # resets it), before the checkpoint that saves it.
    kept = callback_states.CallbackStates(callbacks, *restored_callbacks)
    if kept:
        callbacks.append(kept)
    # Last: a checkpoint holds everything the other callbacks did at this update.
    callbacks += list(checkpoint_callbacks)
    return callbacks, measured, kept


def _train_in(path, plan, config_text, state, stop_requested, built=None, chief=True):
    """Builds the callbacks (and the model, unless ``built``: ``plan.build_model``'s) inside the
    run directory ``path``, trains (from the checkpoint of a resumed run), evaluates. ``chief``:
    False on a multi-worker job's other workers, which keep nothing and warn of nothing the
    chief warns of."""
    log_dir = os.path.join(path, "tensorboard")
    if state.reused:  # (also a restart from update 0 when no checkpoint could be read)
        summary_writer.continue_from(log_dir)  # the replayed updates are not logged twice
    else:
        with summary_writer.writer_for(log_dir).as_default(), tf.summary.record_if(True):
            tf.summary.text("config/parsed", "\n".join("    " + line for line in
                                                       config_text.splitlines()), step=0)
    model, state_callbacks = built if built is not None else plan_lib.build_model(plan)
    batch_norm = plan.mode.batch_norm_statistics(model, plan, warn=chief)
    own = plan.mode.callbacks(plan, log_dir)
    callbacks, measured, kept = make_callbacks(plan, path, log_dir, state_callbacks,
                                               state.callbacks(model, stop_requested), own,
                                               state.restored_callbacks(), state.reused)
    state.callback_states = kept
    if state.reused and state.writes:  # its CSV files keep the epochs before the checkpoint
        callback_states.continue_csv(callbacks, state.position.epoch)
    state.measurement_results = lambda: measurements_lib.per_measurement(measured)
    controller = None
    if plan.layout.adaptive:  # its decisions travel with the checkpoints
        controller = AdaptiveBatchController(model, plan.layout.update_sizes,
                                             plan.strategy.num_replicas_in_sync, log_dir)
        if state.resumed:  # before the pipeline reads a batch: the sizes of the first run
            controller.restore(state.bookkeeping.get("adaptive_batch_size"))
        state.more_bookkeeping = lambda: {"adaptive_batch_size": controller.state()}
        controller.log_start()
    settings, pipelines, start = plan.settings, plan.pipelines, state.position
    state.training_started()
    try:
        history = distribute.fit(model, pipelines, settings.epochs, callbacks, plan.strategy,
                                 settings.verbose, initial_epoch=start.epoch,
                                 initial_step=start.step, resume=state.resume(model),
                                 controller=controller)
    except BaseException:
        for callback in reversed(callbacks):  # Keras' TensorBoard's pushes, popped at train end
            keras_internals.release_summary_contexts(callback)
        raise
    state.training_ended()
    os.makedirs(os.path.join(path, "checkpoints"), exist_ok=True)
    if state.writes:
        model.save_weights(os.path.join(path, "checkpoints", "final.weights.h5"))
    final = {}
    if pipelines.validation is not None:
        with stateful.isolated_state(model):  # no-op without stateful layers
            final = distribute.evaluate(model, pipelines, plan.strategy)
    summary_writer.close_all()
    result = _result(plan, model, history, final, state.training_seconds(), measured,
                     state.restored_measurement_results())
    if batch_norm is not None:  # counted again over the updates made (early stopping)
        result["batch_norm_statistics"] = plan.mode.batch_norm_statistics(
            model, plan, warn=False, updates=int(model.optimizer.iterations.numpy()))
    if controller is not None:
        result.update(controller.result(settings.epochs))
    result.update(_adascale_result(callbacks))
    result.update(state.summary())
    result.update(plan.mode.summarize(own, path))
    return result


def _result(plan, model, history, final, train_time, measured, restored=None):
    """The result dict of a trained run (before run-level fields are added)."""
    layout, epochs = plan.layout, plan.settings.epochs
    updates = int(model.optimizer.iterations.numpy())
    num_train = layout.rows_per_epoch
    scheduled = {}
    if layout.batch_size_schedule is not None and not layout.adaptive:
        # where B grew, and the B it ended with
        stages = layout.stages(epochs)
        scheduled = {"batch_size_stages": stages, "final_batch_size": stages[-1]["batch_size"],
                     "final_num_micro_batches": stages[-1]["num_micro_batches"]}
    return {
        **layout.as_dict(),
        **scheduled,
        "epochs": epochs,
        "updates": updates,
        "train_time_s": train_time,
        # the rows of the updates made (not every planned epoch's: a run stopped early)
        "examples_per_sec": layout.rows_trained(updates) / max(train_time, 1e-9),
        "updates_per_sec": updates / max(train_time, 1e-9),
        "final_epoch": {k: float(v[-1]) for k, v in history.items() if v},
        "final_validation": {k: float(v) for k, v in final.items()},
        "num_train_examples": num_train,
        "num_validation_examples": _num_validation(plan),
        "peak_learning_rate": _peak_learning_rate(model, updates),
        "measurements": measurements_lib.results(measured, restored),
    }


# Most updates at which a learning-rate schedule is read for its peak (evenly spaced): in one
# call over a tensor of steps, or, for a schedule that takes one step at a time (a ``cond`` on
# the step, as Keras' CosineDecay with warm-up), in one call per step at fewer of them (each
# eager call costs about half a millisecond).
_PEAK_SAMPLES, _PEAK_SAMPLES_ONE_BY_ONE = 1_000_000, 200


def _evenly_spaced(updates, count):
    """``count`` or fewer of the steps 0 .. updates - 1, evenly spaced, the first and last
    included."""
    count = min(updates, count)
    return np.unique(np.round(np.linspace(0, max(updates - 1, 0), max(count, 1)))).astype(
        np.int64)


def _peak_learning_rate(model, updates):
    """The highest learning rate of the run's updates: the constant rate, or a schedule's
    highest over its updates (read as ``_PEAK_SAMPLES`` says); the base rate under AdaScale
    (its gains multiply it). A sweep's HParams column shows it where the rate is a schedule."""
    scaling = getattr(model, "learning_rate_scaling", None)
    rate = scaling.base_learning_rate if scaling is not None \
        else keras_internals.learning_rate_object(model.optimizer)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        steps = _evenly_spaced(updates, _PEAK_SAMPLES)
        try:
            values = keras.ops.convert_to_numpy(rate(tf.constant(steps)))
            if np.shape(values) == steps.shape:
                return float(np.max(values))
        except Exception:  # pylint: disable=broad-except  (read one step at a time below)
            pass
        return max(float(keras.ops.convert_to_numpy(rate(int(step))))
                   for step in _evenly_spaced(updates, _PEAK_SAMPLES_ONE_BY_ONE))
    try:
        return float(keras.ops.convert_to_numpy(rate() if callable(rate) else rate))
    except (TypeError, ValueError):
        return None


def _num_validation(plan):
    """Validation rows: the held-out arrays', or for stream data its held-out windows of T steps
    (S per window step), the unit ``num_train_examples`` counts stream data in."""
    if plan.data.stream is not None:
        steps = plan.pipelines.validation_steps
        return 0 if not steps else steps * plan.layout.batch_size
    return plan.data.num_validation


def _adascale_result(callbacks):
    """AdaScale's progress and gains for ``result.json`` (nothing without AdaScale)."""
    for callback in callbacks:
        if isinstance(callback, AdaScaleLog):
            return callback.result()
    return {}


def _package_versions():
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions
