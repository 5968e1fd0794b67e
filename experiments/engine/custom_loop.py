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
"""

import keras
import numpy as np
import tensorflow as tf


class CustomLoop:
    """Trains and evaluates a compiled ``VirtualBatchModel`` with ``strategy.run``.

    Creating a loop makes it the model's evaluation loop (``use_loop_for_evaluation``):
    ``model.evaluate`` (called by callbacks such as GeneralizationGap) then runs through
    ``CustomLoop.evaluate`` too.

    Args:
      model: a compiled ``VirtualBatchModel`` built in ``strategy.scope()``.
      strategy: the strategy the model was built under (default: the model's).
    """

    def __init__(self, model, strategy=None):
        if not hasattr(model, "virtual_batch_gradients"):
            raise ValueError(
                "CustomLoop trains batchlab's VirtualBatchModel (experiments.engine."
                f"virtual_batch_model.as_virtual_batch_model); got {type(model).__name__}.")
        if getattr(model, "optimizer", None) is None:
            raise ValueError("Compile the model before building a CustomLoop for it.")
        self.model = model
        self.strategy = strategy or model.distribute_strategy
        self._train_functions = {}
        self._test_functions = {}
        model.use_loop_for_evaluation(self)

    # ------------------------------------------------------------------------------------------
    def _distribute(self, dataset):
        """Shards by data across workers: every worker runs the pipeline, keeps its rows."""
        if self.strategy.extended._in_multi_worker_mode():  # pylint: disable=protected-access
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

            @tf.function(input_signature=[spec])
            def run(data):
                strategy.run(step, args=(data,))
                # Cross-replica read of the metrics' sync-on-read sums: exact over all replicas.
                return model.get_metrics_result()

            cache[key] = run
        return cache[key]

    def _prepare(self, dataset):
        """Creates every variable (compiled metrics and loss, optimizer slots) before tracing.

        Variables created inside the first ``tf.function`` call on several replicas break the
        graph ("You must feed a value for placeholder"); ``model.fit`` builds them the same way.
        """
        with self.strategy.scope():
            # Keras' own builder (private): symbolic tensors shaped like the dataset's elements.
            self.model._symbolic_build(data_batch=dataset.element_spec)  # pylint: disable=W0212
            if not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)

    # ------------------------------------------------------------------------------------------
    def fit(self, dataset, epochs=1, validation_data=None, callbacks=(), verbose=1,
            steps_per_epoch=None):
        """Trains like ``model.fit`` on a batched ``tf.data.Dataset``; returns the History.

        Each element of ``dataset`` is one virtual batch, i.e. one update; every epoch iterates
        ``dataset`` anew. ``steps_per_epoch`` is only shown by the progress bar.
        """
        distributed = self._start(dataset)

        def epoch_batches(epoch):
            if epoch:
                # Keras' fit opens one more iterator per epoch than it reads (at the end of each
                # epoch, then again at the start of the next), so with a reshuffling pipeline its
                # epoch e reads the dataset's (2e-1)-th order. Open and drop one too: for a seed,
                # both loops then train on the same batches.
                iter(distributed)
            return enumerate(distributed)

        return self._train(distributed, epoch_batches, 0, epochs, validation_data, callbacks,
                           verbose, steps_per_epoch)

    def fit_from(self, train_from, steps_per_epoch, epochs, validation_data=None, callbacks=(),
                 verbose=1, initial_epoch=0, initial_step=0, resume=None):
        """Trains from update ``initial_step`` of epoch ``initial_epoch`` to the end of ``epochs``.

        ``train_from(epoch, step, num_epochs)`` gives the batches from that position on (an
        ``inputs.dataset.Pipelines.train_from``): one iterator serves the whole run, so a run that
        resumes mid-epoch reads exactly what an uninterrupted run reads from there. ``resume``
        (optional) restores a checkpoint: ``resume.restore_training_state()`` once the callbacks
        have started, ``resume.restore_epoch_state()`` once the interrupted epoch has started
        (which reset its metrics and, for stateful models, the states), so its logged means
        cover the whole epoch and the streams continue.
        """
        dataset = train_from(initial_epoch, initial_step, epochs - initial_epoch)
        distributed = self._start(dataset)
        iterator = iter(distributed)

        def epoch_batches(epoch):
            first = initial_step if epoch == initial_epoch else 0
            for step in range(first, steps_per_epoch):
                yield step, next(iterator)

        return self._train(distributed, epoch_batches, initial_epoch, epochs, validation_data,
                           callbacks, verbose, steps_per_epoch, resume)

    def _start(self, dataset):
        self._prepare(dataset)
        return self._distribute(dataset)

    def _train(self, distributed, epoch_batches, initial_epoch, epochs, validation_data,
               callbacks, verbose, steps_per_epoch, resume=None):
        """The epoch loop shared by ``fit`` and ``fit_from``; returns the History."""
        model = self.model
        train = self._function(self._train_functions, model.train_step, distributed.element_spec)
        callback_list = keras.callbacks.CallbackList(
            list(callbacks), add_history=True, add_progbar=verbose != 0, model=model,
            verbose=verbose, epochs=epochs, steps=steps_per_epoch)
        history = next(c for c in callback_list.callbacks
                       if isinstance(c, keras.callbacks.History))
        model.stop_training = False
        callback_list.on_train_begin()
        if resume is not None:
            resume.restore_training_state()
        logs = {}
        for epoch in range(initial_epoch, epochs):
            model.reset_metrics()
            callback_list.on_epoch_begin(epoch)  # may reset stateful layers' states
            if resume is not None and epoch == initial_epoch:
                resume.restore_epoch_state()
            for step, batch in epoch_batches(epoch):
                callback_list.on_train_batch_begin(step)
                logs = train(batch)
                callback_list.on_train_batch_end(step, logs)
                if model.stop_training:
                    break
            logs = self._end_epoch(epoch, logs, validation_data, callback_list)
            if model.stop_training:
                break
        callback_list.on_train_end(logs)
        return history

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
        as under Keras' fit (TensorBoard's ``evaluation_*_vs_iterations``).
        """
        callbacks = _callbacks or keras.callbacks.CallbackList([], model=self.model)
        model = self.model
        if isinstance(x, tf.data.Dataset):
            if y is not None or sample_weight is not None:
                raise ValueError("Pass y and sample_weight inside the dataset, not separately.")
            dataset = x
        else:
            parts = (x,) if y is None else (x, y)
            if sample_weight is not None:
                parts += (sample_weight,)
            dataset = tf.data.Dataset.from_tensor_slices(parts).batch(batch_size or 32)
        if steps is not None:
            dataset = dataset.take(steps)
        self._prepare(dataset)
        distributed = self._distribute(dataset)
        test = self._function(self._test_functions, model.test_step, distributed.element_spec)
        model.reset_metrics()
        callbacks.on_test_begin()
        logs = {}
        for step, batch in enumerate(distributed):
            callbacks.on_test_batch_begin(step)
            logs = test(batch)
            callbacks.on_test_batch_end(step, logs)
        logs = _to_floats(logs) if logs else {name: float("nan") for name in model.metrics_names}
        callbacks.on_test_end(logs)
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values


def _to_floats(logs):
    return {name: float(np.asarray(value)) for name, value in logs.items()}
