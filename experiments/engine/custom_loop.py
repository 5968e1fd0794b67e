"""batchlab's training loop: every run trains here, on one device or several, and can resume at
any update.

Why not ``model.fit``: a run that resumes after a kill must start in the middle of an epoch, with
the epoch's metric sums restored; ``fit`` always starts epochs at their first step and resets the
metrics. And Keras 3 ``model.fit`` and ``model.evaluate`` fail under MultiWorkerMirroredStrategy ("Attempt to
convert a value (PerReplica ...)", keras-team/keras#20585), and under MirroredStrategy on any batch
that splits unevenly over the replicas (its symbolic build adds the replicas' inputs: "Inputs to
operation AddN ... must have the same size and shape"). This loop iterates
``strategy.experimental_distribute_dataset`` and calls ``strategy.run(model.train_step)`` inside a
``tf.function``: the *same* train step ``model.fit`` runs (``VirtualBatchModel.train_step`` =
``virtual_batch_gradients`` + ``optimizer.apply``), so both paths make identical updates.

Callbacks work as under ``fit``: a ``keras.callbacks.CallbackList`` adds the History and the
progress bar (ProgbarLogger) and calls every hook with ``logs`` of the same names (``loss``,
metrics, ``val_*``), so TensorBoard, ModelCheckpoint and batchlab's callbacks need no change.
Metric results are read in cross-replica context, i.e. summed over every replica's rows: the logged
values are exact over the whole (global) virtual batch, also when replicas hold unequal rows.

Fixed costs (small runs are many short epochs; BUILD.md, "Fast small runs" has the breakdown):

- ``steps_per_execution`` updates run in one ``tf.function`` call that reads its batches from the
  iterator in the graph; callbacks see one ``on_train_batch_begin(first step)`` /
  ``on_train_batch_end(last step)`` per call, as under Keras' fit. A call ends on each multiple of
  a callback's ``every_n_updates`` and at the epoch's end; an update that a callback acting in
  ``on_train_batch_begin`` logs runs alone, after its hook (one update per call for such a
  callback without a cadence, the LR range test). Measurements (``measurement.Measurement``, among
  the callbacks or passed apart) are read inside the call and end none. Where calls end and which
  update each measurement reads is decided in ``schedule.UpdateSchedule``; the results are those
  of one update per call (``tests/test_speed_loop.py``, ``tests/test_measurement_shape.py``).
- Validation runs as one graph call over the whole validation set (a small finite one is kept as
  tensors) on one replica without stateful layers; elsewhere batch by batch via ``strategy.run``.
- A batch decided while training (an adaptive batch, ``fit_from``'s ``controller``) ends a call
  on every multiple of its cadence; when B changes there, the rest of the epoch is cut anew and
  read from a new iterator at that position (about 0.09 to 0.16 s per change on this machine's
  CPU, the old iterator destroyed on a thread of its own: BUILD.md, issue 21), the same concrete
  function reading it.
- Each function is traced once; the train chunk is called as a concrete function. The graph
  functions themselves are built in ``graph_calls``; where the calls end is planned in
  ``schedule``.
"""

import queue
import threading

import keras
import numpy as np
import tensorflow as tf

from experiments.common import checks
from experiments.engine import graph_calls, keras_internals, states
from experiments.engine.measurement import Measurement
from experiments.engine.schedule import Cadence, UpdateSchedule, overrides


HELD_BATCHES = 4096  # a finite evaluation set of at most this many batches and ...
HELD_BYTES = 64 << 20  # ... bytes is read once and kept as tensors (``CustomLoop._held``)


class CustomLoop:
    """Trains and evaluates a compiled ``VirtualBatchModel`` with ``strategy.run``.

    Creating a loop makes it the model's evaluation loop (``use_loop_for_evaluation``):
    ``model.evaluate`` (called by callbacks such as GeneralizationGap) then runs through
    ``CustomLoop.evaluate`` too.

    Args:
      model: a compiled ``VirtualBatchModel`` built in ``strategy.scope()``.
      strategy: the strategy the model was built under (default: the model's).
      steps_per_execution: most updates per graph call (see the module docstring).
      jit_compile: compile the train step with XLA (the step itself; the loop around it reads
        the iterator, which XLA cannot).
    """

    def __init__(self, model, strategy=None, steps_per_execution=1, jit_compile=False):
        if not hasattr(model, "virtual_batch_gradients"):
            raise ValueError(
                "CustomLoop trains batchlab's VirtualBatchModel (experiments.engine."
                f"virtual_batch_model.as_virtual_batch_model); got {type(model).__name__}.")
        if getattr(model, "optimizer", None) is None:
            raise ValueError("Compile the model before building a CustomLoop for it.")
        self.model = model
        self.strategy = strategy or model.distribute_strategy
        self.steps_per_execution = checks.positive_int(steps_per_execution,
                                                       "fit.steps_per_execution")
        self.jit_compile = bool(jit_compile)
        self._train_functions = {}
        self._test_functions = {}
        self._prepared = set()
        self._held_sets = {}  # id(dataset) -> (dataset, (graph function, tensors) or None)
        model.use_loop_for_evaluation(self)

    # ------------------------------------------------------------------------------------------
    def _distribute(self, dataset):
        """Shards by data across workers: every worker runs the pipeline, keeps its rows."""
        if keras_internals.in_multi_worker_mode(self.strategy):
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = \
                tf.data.experimental.AutoShardPolicy.DATA
            dataset = dataset.with_options(options)
        return self.strategy.experimental_distribute_dataset(dataset)

    def _function(self, cache, step, spec):
        """One ``tf.function`` per element spec: run ``step`` on every replica, read metrics."""
        key = repr(spec)
        if key not in cache:
            model, strategy = self.model, self.strategy

            @tf.function(input_signature=[spec], autograph=False)
            def run(data):
                strategy.run(step, args=(data,))
                # Cross-replica read of the metrics' sync-on-read sums: exact over all replicas.
                return model.get_metrics_result()

            cache[key] = run
        return cache[key]

    def _train_function(self, iterator, measurements=()):
        """The graph function running a chunk of updates (``graph_calls``), traced once per
        iterator spec and set of measurements read inside it."""
        step_state = getattr(self.model, "measurements", None)
        # On one device, a chunk with measurements of a step that tracks the noise scale traces
        # the step twice: for the updates it measures and for the others
        # (``graph_calls.chunk_function``), so that the others carry none of the noise scale's
        # tests (one per micro-batch). At k = 1 it gains nothing per update, and a second trace
        # would only add to a small run's fixed cost (BUILD.md, "Stop 35"). Under a strategy the
        # step records on every update (``step_measurements.record``): one step.
        split = bool(measurements) and step_state is not None \
            and self.model.tracks_gradient_noise \
            and not tf.distribute.has_strategy() and self.strategy is tf.distribute.get_strategy()
        key = (repr(iterator.element_spec), tuple(id(m) for m in measurements),
               step_state.trace_key() if split else None)
        if key not in self._train_functions:
            if split:
                step, measured_step = self._step(False), self._step(True)
            else:
                step, measured_step = self._step(None), None
            self._train_functions[key] = graph_calls.chunk_function(
                self.model, self.strategy, step, iterator, measurements, measured_step)
        return self._train_functions[key]

    def _step(self, measured):
        """The model's train step, traced for the kind of update ``measured`` says
        (``StepMeasurements.tracing``; None: any), compiled with XLA under ``jit_compile``."""
        model = self.model
        if measured is None:
            step = model.train_step
        else:
            def step(data):
                with model.measurements.tracing(measured):
                    return model.train_step(data)
        return tf.function(step, jit_compile=True) if self.jit_compile else step

    def _prepare(self, dataset):
        """Creates every variable (compiled metrics and loss, optimizer slots) before tracing.

        Variables created inside the first ``tf.function`` call on several replicas break the
        graph ("You must feed a value for placeholder"); ``model.fit`` builds them the same way.
        """
        key = repr(dataset.element_spec)
        if key in self._prepared:
            return
        with self.strategy.scope():
            # Keras' own builder: symbolic tensors shaped like the dataset's elements.
            keras_internals.symbolic_build(self.model, dataset.element_spec)
            if not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
        self._prepared.add(key)

    # ------------------------------------------------------------------------------------------
    def fit_from(self, train_from, steps_per_epoch, epochs, validation_data=None, callbacks=(),
                 verbose=1, initial_epoch=0, initial_step=0, resume=None, measurements=(),
                 controller=None):
        """Trains from update ``initial_step`` of epoch ``initial_epoch`` to the end of ``epochs``.

        ``train_from(epoch, step, num_epochs)`` gives the batches from that position on (an
        ``inputs.dataset.Pipelines.train_from``): one iterator serves the whole run, so a run that
        resumes mid-epoch reads exactly what an uninterrupted run reads from there. ``resume``
        (optional) restores a checkpoint: ``resume.restore_training_state()`` once the callbacks
        have started, ``resume.restore_epoch_state()`` once the interrupted epoch has started
        (which reset its metrics and, for stateful models, the states), so its logged means
        cover the whole epoch and the streams continue. ``steps_per_epoch`` is a number, or a
        function of the epoch (a batch-size schedule: epochs differ in their updates).
        ``measurements`` (``measurement.Measurement``) are read inside the train calls, on the
        updates ``schedule.UpdateSchedule`` plans for them.

        ``controller`` (optional) decides the batch while training (an adaptive batch,
        ``run.adaptive_batch``): a call ends on every multiple of its ``every_n_updates``, where
        ``controller.decide(update)`` runs before the callbacks' hooks (not at the run's last
        update: no update would have the size it decided there); when it returns True the
        sizes of the updates from there on changed (``train_from`` and ``steps_per_epoch`` now
        give the new ones), and the loop reads on from a new iterator at that position.
        """
        # Measurements run inside the train calls, not through their Keras hooks.
        measurements = list(measurements) + [c for c in callbacks if isinstance(c, Measurement)]
        callbacks = [c for c in callbacks if not isinstance(c, Measurement)]
        source = _BatchSource(self, train_from, epochs)
        source.restart(initial_epoch, initial_step)

        def epoch_iterator(epoch):
            return (initial_step if epoch == initial_epoch else 0), source

        return self._train(epoch_iterator, initial_epoch, epochs, validation_data, callbacks,
                           verbose, steps_per_epoch, resume, initial_step, measurements,
                           controller)

    def _start(self, dataset):
        self._prepare(dataset)
        return self._distribute(dataset)

    def _train(self, epoch_iterator, initial_epoch, epochs, validation_data, callbacks, verbose,
               steps_per_epoch, resume=None, initial_step=0, measurements=(), controller=None):
        """The epoch loop of ``fit_from``; returns the History.

        At every epoch the callbacks' params carry ``epoch_first_update``, the updates done
        before the epoch's first step: with the Keras batch index of a hook it gives the update
        (``schedule.epoch_first_update``), also in a resumed epoch whose first index is not 0.
        """
        model = self.model
        steps_in = steps_per_epoch if callable(steps_per_epoch) else lambda _: steps_per_epoch
        callback_list = keras.callbacks.CallbackList(
            list(callbacks), add_history=True, add_progbar=verbose != 0, model=model,
            verbose=verbose, epochs=epochs, steps=steps_in(initial_epoch),
            initial_epoch=initial_epoch, initial_step=initial_step)
        history = next(c for c in callback_list.callbacks
                       if isinstance(c, keras.callbacks.History))
        model.stop_training = False
        callback_list.on_train_begin()
        # Before the checkpoint is restored: a measurement keeps what it needs of the fresh
        # model (the initial weights, the noise scale's reset), and the restore then brings
        # back the measurement state the checkpoint saved.
        measured = self._start_measurements(measurements)
        if resume is not None:
            resume.restore_training_state()
        decisions = [] if controller is None else [Cadence(controller.every_n_updates)]
        schedule = UpdateSchedule(
            [m.cadence for m in measured if m.in_train_call], callback_list.callbacks,
            self.steps_per_execution,
            [m.cadence for m in measured if not m.in_train_call] + decisions)
        logs = {}
        for epoch in range(initial_epoch, epochs):
            self._reset_metrics()
            first = initial_step if epoch == initial_epoch else 0
            params = {**callback_list.params, "epoch_first_update":
                      int(model.optimizer.iterations.numpy()) - first}
            if callable(steps_per_epoch):  # the callbacks' ``steps`` is this epoch's
                params["steps"] = steps_in(epoch)
            callback_list.set_params(params)
            callback_list.on_epoch_begin(epoch)  # may reset stateful layers' states
            if resume is not None and epoch == initial_epoch and initial_step:
                # (a position at step 0 is an epoch not yet begun: nothing of it to restore)
                resume.restore_epoch_state()
            first, source = epoch_iterator(epoch)
            # A run resumed after an epoch's last update (first == steps) runs no update of it:
            # its logs are the restored epoch's metrics, and its end runs as it would have.
            logs = self._run_epoch(source, epoch, first, steps_in, schedule, measured,
                                   callback_list, controller,
                                   last_epoch=epoch == epochs - 1) or self._metrics_now()
            logs = self._end_epoch(epoch, logs, validation_data, callback_list)
            if model.stop_training:
                break
        for measurement in measured:
            measurement.finish(int(model.optimizer.iterations.numpy()))
        if isinstance(model.optimizer, keras.optimizers.Optimizer) and epochs > 0:
            # as Keras' fit ends: an optimizer with ``use_ema`` swaps its averages in
            with self.strategy.scope():
                model.optimizer.finalize_variable_values(model.trainable_weights)
        callback_list.on_train_end(logs)
        return history

    def _metrics_now(self):
        """The model's metric results as they stand (read in cross-replica context)."""
        with self.strategy.scope():
            return self.model.get_metrics_result()

    def _start_measurements(self, measurements):
        """Starts each measurement on the model; returns those measured in this run, and tells
        the step which ``before_update`` hooks to run on measured updates."""
        measured = [m for m in measurements if m.start(self.model)]
        for m in measured:
            if m.uses_step and not m.in_train_call:
                raise ValueError(f"{type(m).__name__} uses the train step's measurements, so it "
                                 "must be read inside the train call (in_train_call = True).")
        step_state = getattr(self.model, "measurements", None)
        if step_state is not None:
            step_state.before_update_hooks = [m.before_update for m in measured
                                              if m.before_update is not None]
        return measured

    def _reset_metrics(self):
        """``model.reset_metrics()``, as one graph call on one replica (eagerly it costs one op
        call per metric variable, every epoch)."""
        if self.strategy is not tf.distribute.get_strategy():
            self.model.reset_metrics()
            return
        if "reset" not in self._test_functions:
            self._test_functions["reset"] = tf.function(self.model.reset_metrics,
                                                        autograph=False)
        self._test_functions["reset"]()

    def _run_epoch(self, source, epoch, first, steps_in, schedule, measured, callback_list,
                   controller=None, last_epoch=False):
        """Runs the epoch's updates from step ``first`` in the calls ``schedule`` plans; returns
        the last logs. Measurements are read inside the calls (``in_train_call``) or by a call
        of their own right after the call that ends on their update; their rows are published
        before the call's ``on_train_batch_end``. A ``controller`` that changes the batch at the
        end of a call makes the rest of the epoch run on the new sizes (``fit_from``); it is not
        asked at the run's last update (the end of the ``last_epoch``), whose decision would
        size no update."""
        inside = [m for m in measured if m.in_train_call]
        after = [m for m in measured if not m.in_train_call]
        train = self._train_function(source.iterator, inside)
        update = int(self.model.optimizer.iterations.numpy())
        steps = steps_in(epoch)
        epoch_end = update + steps - first
        logs = None
        chunks = schedule.chunks(first, steps, update)
        for begin, size in _replaceable(lambda: chunks):
            callback_list.on_train_batch_begin(begin)
            start = update + begin - first
            if inside:
                logs = graph_calls.run_measured(train, source.iterator, inside, schedule.segments(
                    start, size, epoch_end))
            else:
                logs = train(source.iterator, tf.constant(size, tf.int64))
            end = start + size
            for measurement in after:
                if measurement.cadence.logs(end, epoch_end):
                    measurement.measure_now(end)
            if controller is not None and end % controller.every_n_updates == 0 \
                    and not (last_epoch and end == epoch_end) and controller.decide(end):
                # The updates from ``end`` on have new sizes: read on from there.
                done = begin + size
                steps = steps_in(epoch)
                source.restart(epoch, done)
                epoch_end = end + steps - done
                chunks = schedule.chunks(done, steps, end)
                update, first = end, done
                callback_list.set_params({**callback_list.params, "steps": steps})
                # Keras' bar, made with the epoch's first count of updates, counts to the new
                # one (else an epoch of 65 updates ends on "65/90").
                keras_internals.retarget_progress_bars(callback_list, steps)
            callback_list.on_train_batch_end(begin + size - 1, logs)
            if self.model.stop_training:
                break
        return logs

    def _end_epoch(self, epoch, logs, validation_data, callback_list):
        epoch_logs = _to_floats(logs)
        if validation_data is not None:
            validation = self.evaluate(validation_data, return_dict=True, _callbacks=callback_list)
            epoch_logs.update({f"val_{name}": value for name, value in validation.items()})
        callback_list.on_epoch_end(epoch, epoch_logs)
        return epoch_logs

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, steps=None,
                 return_dict=False, _callbacks=None):
        """``model.evaluate`` (inference mode, every row counted once) over ``strategy.run``.

        ``x`` is a batched ``tf.data.Dataset`` or arrays (then ``y``, ``sample_weight`` and
        ``batch_size``, default 32, as in Keras). During ``fit`` the callbacks' test hooks run
        as under Keras' fit (TensorBoard's ``evaluation_*_vs_iterations``); per-batch test hooks
        only when a callback uses them (then the batch-by-batch route).
        """
        callbacks = _callbacks or keras.callbacks.CallbackList([], model=self.model)
        model = self.model
        dataset = _as_dataset(x, y, sample_weight, batch_size)
        if steps is not None:
            dataset = dataset.take(steps)
        self._prepare(dataset)
        callbacks.on_test_begin()
        if self._in_one_call(callbacks):
            logs = self._evaluate_in_one_call(dataset)
        else:
            model.reset_metrics()
            logs = self._evaluate_by_batch(dataset, callbacks)
        logs = _to_floats(logs) if logs else {name: float("nan") for name in model.metrics_names}
        callbacks.on_test_end(logs)
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def _in_one_call(self, callbacks):
        """One graph call over the whole set: one replica, no stateful layers (their state is
        handled between batches), and no callback watching test batches."""
        if self.strategy is not tf.distribute.get_strategy() or states.stateful_layers(self.model):
            return False
        return not any(overrides(c, ("on_test_batch_begin", "on_test_batch_end"))
                       for c in callbacks.callbacks
                       if not isinstance(c, _KERAS_TEST_HOOKS_UNUSED))

    def _evaluate_in_one_call(self, dataset):
        """The same ``test_step`` on the same batches and metrics as ``_evaluate_by_batch``, in
        one ``tf.function``: the per-batch route costs a call, a host copy of the logs and the
        hooks for every batch. A small finite set is read once and kept as tensors
        (``_held``), its batches sliced in the graph; any other is read through an iterator made
        eagerly and passed in (a dataset iterated inside the function is re-optimised by tf.data
        at every call, which costs several times an eager iterator; BUILD.md, "Fast small
        runs")."""
        held = self._held(dataset)
        if held is not None:
            run, tensors = held
            return run(tensors) if tensors is not None else {}
        key = ("one call", repr(dataset.element_spec))
        if key not in self._test_functions:
            model = self.model

            @tf.function
            def run_iterator(iterator):
                model.reset_metrics()  # in the graph: eagerly, one op call per metric variable
                batches = tf.constant(0, tf.int64)
                for batch in iterator:
                    model.test_step(batch)
                    batches += 1
                return model.get_metrics_result(), batches

            self._test_functions[key] = run_iterator
        logs, batches = self._test_functions[key](iter(dataset))
        return logs if int(batches) else {}

    def _held(self, dataset):
        """(graph function, tensors) of a dataset read once and kept, or None when it is not
        kept: unknown or infinite length, more than ``HELD_BYTES``, or batches that are not
        slices of one array (equal leading sizes, a shorter last one). Keyed by the dataset
        object (a run's validation pipeline is the same object every epoch)."""
        entry = self._held_sets.get(id(dataset))
        if entry is not None and entry[0] is dataset:
            return entry[1]
        held = None
        if 0 <= int(dataset.cardinality()) <= HELD_BATCHES:
            held = graph_calls.read_and_keep(self.model, dataset, HELD_BYTES)
        self._held_sets[id(dataset)] = (dataset, held)
        return held

    def _evaluate_by_batch(self, dataset, callbacks):
        distributed = self._distribute(dataset)
        step = self.model.test_step
        if self.strategy.num_replicas_in_sync > 1:  # the loss of each batch, not per replica
            step = self.model.replicated_test_step
        test = self._function(self._test_functions, step, distributed.element_spec)
        logs = {}
        for step, batch in enumerate(distributed):
            callbacks.on_test_batch_begin(step)
            logs = test(batch)
            callbacks.on_test_batch_end(step, logs)
        return logs


def _replaceable(current):
    """Yields from the generator ``current()`` gives, read anew after every item: the loop
    over an epoch's calls switches to new ones when the batch changes."""
    while True:
        try:
            yield next(current())
        except StopIteration:
            return


class _BatchSource:
    """The training iterator of a run, started afresh at a position when the batch sizes
    from there on change (an adaptive batch)."""

    def __init__(self, loop, train_from, epochs):
        self._loop, self._train_from, self._epochs = loop, train_from, epochs
        self.iterator = None

    def restart(self, epoch, step):
        """Reads from update ``step`` of ``epoch`` on, to the end of training. The old iterator
        is destroyed on a thread of its own: destroying one waits for its prefetching to stop
        (0.05 to 0.7 s here), which would otherwise stall training at every change of B."""
        old, self.iterator = self.iterator, None
        if old is not None:
            _retire(old)
        del old
        self.iterator = iter(self._loop._start(
            self._train_from(epoch, step, self._epochs - epoch)))


_RETIRED = queue.Queue()
_REAPER = []


def _retire(iterator):
    """Hands ``iterator`` to a daemon thread that drops the last reference to it."""
    if not _REAPER:
        def reap():
            while True:
                item = _RETIRED.get()
                del item  # the iterator's destructor runs here, off the training thread

        _REAPER.append(threading.Thread(target=reap, name="batchlab-iterator-reaper",
                                        daemon=True))
        _REAPER[0].start()
    _RETIRED.put(iterator)


# Callbacks whose test-batch hooks do nothing that a one-call evaluation would skip.
_KERAS_TEST_HOOKS_UNUSED = (keras.callbacks.ProgbarLogger, keras.callbacks.TensorBoard,
                            keras.callbacks.History)


def _as_dataset(x, y, sample_weight, batch_size):
    """A batched dataset from ``evaluate``'s arguments (a dataset, or arrays as in Keras)."""
    if isinstance(x, tf.data.Dataset):
        if y is not None or sample_weight is not None:
            raise ValueError("Pass y and sample_weight inside the dataset, not separately.")
        return x
    parts = (x,) if y is None else (x, y)
    if sample_weight is not None:
        parts += (sample_weight,)
    return tf.data.Dataset.from_tensor_slices(parts).batch(batch_size or 32)


def _to_floats(logs):
    return {name: float(np.asarray(value)) for name, value in logs.items()}
