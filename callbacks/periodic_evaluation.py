"""Validation curves keyed by update: the measurement behind steps to result.

Steps to result (Shallue et al. 2018) asks at which *update* a run first reaches a target, so the
validation set must be evaluated during an epoch, not only at its end. ``PeriodicEvaluation``
evaluates it every ``every_n_updates`` updates and at the end of training, keeps the curve
``{"val_loss": [[update, value], ...], "val_accuracy": [...]}`` and logs each point as
``validation_curve/<metric>`` at its update (``log_dir/train``). Works in any ``model.fit``.

Evaluating mid-epoch must not disturb training: the model's metric variables (the running
averages ``fit`` reports for the epoch) are saved before and restored after each evaluation.
Arrays on a plain model are evaluated by one graph call over all batches (the same ``test_step``
``evaluate`` runs, without its ~0.5 ms of Python per batch, as in ``generalization_gap``); other
models use ``model.evaluate``.
"""

import numpy as np
import tensorflow as tf

from callbacks.base import UpdateClock
from experiments.engine import inference
from experiments.engine.states import isolated_state, stateful_layers


class PeriodicEvaluation(UpdateClock):
    """Args:
      validation_data: (x, y) arrays or a finite batched ``tf.data.Dataset``.
      every_n_updates: evaluate after every this many updates (and at the end of training).
      log_dir: TensorBoard directory (scalars go to ``log_dir/train``); None keeps them in memory.
      batch_size: evaluation batch size for arrays.
      prefix: put before each metric name in the curve (``val_`` gives ``val_loss``).
    """

    def __init__(self, validation_data, every_n_updates=20, log_dir=None, batch_size=256,
                 prefix="val_"):
        super().__init__(log_dir)
        if validation_data is None:
            raise ValueError("PeriodicEvaluation needs validation_data=(x, y) or a dataset.")
        if int(every_n_updates) < 1:
            raise ValueError(f"every_n_updates must be >= 1, got {every_n_updates!r}.")
        self.validation_data = validation_data
        self.every_n_updates = int(every_n_updates)
        self.batch_size = int(batch_size)
        self.prefix = prefix
        self.curve = {}  # {metric: [[update, value], ...]}
        self._function = None  # (model, graph function, tensors)
        self._last_update = None

    def on_train_batch_end(self, batch, logs=None):
        if self.is_logged(batch, self.every_n_updates, at_epoch_end=False):
            self._evaluate_at(self.update_after(batch))

    def on_train_end(self, logs=None):
        update = self.current_update()
        if update != self._last_update:
            self._evaluate_at(update)
        super().on_train_end(logs)

    def _evaluate_at(self, update):
        values = {self.prefix + name: float(v) for name, v in self._evaluate().items()}
        self._last_update = update
        for name, value in values.items():
            self.curve.setdefault(name, []).append([int(update), value])
        self.publish(update, {f"validation_curve/{name}": v for name, v in values.items()})

    def _evaluate(self):
        """{metric: value} on the validation set, leaving the training metrics as they were."""
        saved = [v.numpy() for v in self.model.metrics_variables]
        try:
            with isolated_state(self.model):
                if self._in_one_call():
                    return self._evaluate_in_one_call()
                data = self.validation_data
                if not isinstance(data, tf.data.Dataset):
                    data = tf.data.Dataset.from_tensor_slices(tuple(data)).batch(self.batch_size)
                return self.model.evaluate(data, verbose=0, return_dict=True)
        finally:
            for variable, value in zip(self.model.metrics_variables, saved):
                variable.assign(value)

    def _in_one_call(self):
        model = self.model
        return (not isinstance(self.validation_data, tf.data.Dataset)
                and model.distribute_strategy is tf.distribute.get_strategy()
                and getattr(model, "evaluation_loop", None) is None
                and not stateful_layers(model))

    def _evaluate_in_one_call(self):
        """What ``model.evaluate`` returns for the arrays, from one graph call."""
        model = self.model
        if self._function is None or self._function[0] is not model:
            size = self.batch_size

            @tf.function
            def evaluate_all(x, y):  # resets the metrics in the graph, then test_step per batch
                return inference.by_batch(model, (x, y), size)

            x, y = self.validation_data
            tensors = tf.nest.map_structure(tf.convert_to_tensor, (x, y))
            self._function = (model, evaluate_all, tensors)
        _, evaluate_all, (x, y) = self._function
        return {name: float(np.asarray(value)) for name, value in evaluate_all(x, y).items()}

    def result(self):
        """``{"curve": {metric: [[update, value], ...]}}`` for the run's result.json."""
        return {"curve": {name: self.whole_curve(f"validation_curve/{name}", points)
                          for name, points in self.curve.items()}}
