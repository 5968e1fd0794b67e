"""Generalization gap per epoch and at the end: validation minus train, both in inference mode.

The loss ``fit`` reports for training is a running average over the epoch, taken with dropout on
and while the weights move; comparing it with the validation loss mixes those effects into the gap.
This callback evaluates a fixed training subset in inference mode, the same way the validation set
is evaluated, and logs for the loss and each metric, keyed by the epoch (0-based):

- ``train_inference/<name>``: the fixed training subset, inference mode;
- ``generalization_gap/<name>``: validation minus that;
- ``by_update/...``: both again, keyed by the update count at the epoch's end (per-update axis).

The validation side is read from the epoch's ``val_*`` logs when ``fit`` has validation data
(same weights, no second pass over the validation set), else evaluated from ``validation_data``.
The training subset may also be a finite, batched ``tf.data.Dataset`` (e.g. the first batches of a
stream pipeline): it is cached on first use, so every epoch sees the same batches. Evaluations run
on their own zero state for stateful RNNs and leave the training state untouched
(``experiments.engine.states.isolated_state``).
Each value is logged once. With a ``log_dir`` the callback writes the tags above itself; it also
puts them in the epoch's logs (``generalization_gap_loss``, ... : for ``EarlyStopping``,
``CSVLogger``, the progress line) only on a batchlab model (whose TensorBoard leaves these keys to
it) or when ``add_to_logs=True``: with Keras' own ``TensorBoard`` in the same fit that would log them
a second time as ``epoch_generalization_gap_*``. Without a ``log_dir`` they go to the logs only, and
Keras' ``TensorBoard`` (if any) writes them as ``epoch_generalization_gap_*``.
At ``on_train_end`` the final values are kept in ``self.final`` (and re-measured, and logged at
the next epoch index, only if the weights changed since the last epoch end, e.g. an optimizer
with ``use_ema=True`` swapping its averaged weights in). Works in any ``model.fit``.
"""

import numpy as np
import tensorflow as tf
from absl import logging

from callbacks import summary_writer
from callbacks.base import MeasurementCallback
from experiments.engine import evaluation
from experiments.engine.states import isolated_state


class GeneralizationGap(MeasurementCallback):
    """Args:
      train_subset: (x, y) arrays: a fixed sample of the training set (see ``fixed_subset``), or
        a finite batched ``tf.data.Dataset`` of (x, y) training batches.
      validation_data: (x, y) arrays, or None to rely on ``val_*`` from the epoch logs.
      log_dir: TensorBoard directory (scalars go to ``log_dir/train``); None for logs only.
      batch_size: evaluation batch size.
      add_to_logs: put the values in the epoch's logs too (default: without a ``log_dir``, or
        on a batchlab model; see the module docstring).
    """

    # The keys this callback adds to the logs, which batchlab's TensorBoard does not write as
    # ``epoch_*`` (they are logged here under their own tags).
    LOG_PREFIXES = ("generalization_gap_", "train_inference_")

    def __init__(self, train_subset, validation_data=None, log_dir=None, batch_size=256,
                 add_to_logs=None):
        super().__init__(log_dir)
        self.add_to_logs = add_to_logs
        if train_subset is None or (not isinstance(train_subset, tf.data.Dataset)
                                    and len(train_subset) < 2):
            raise ValueError("GeneralizationGap needs train_subset=(x, y) or a dataset.")
        self.train_subset = train_subset
        self.validation_data = validation_data
        self.batch_size = int(batch_size)
        self.final = {}
        self._datasets = {}
        self._functions = {}  # 'model', and per data set: (graph function, its tensors)
        self._measured_at = None  # weights fingerprint at the last measurement
        self._warned_no_validation = False
        self._fingerprint_now = None  # the one computed with the last evaluation, if any
        self._last_epoch = -1

    def _dataset(self, key, data):
        """A batched tf.data pipeline built once per data set (cheaper than arrays per call)."""
        if key not in self._datasets:
            if isinstance(data, tf.data.Dataset):
                self._datasets[key] = data.cache()
            else:
                self._datasets[key] = tf.data.Dataset.from_tensor_slices(
                    (data[0], data[1])).batch(self.batch_size).cache()
        return self._datasets[key]

    def _evaluate(self, key, data):
        with isolated_state(self.model):  # stateful RNNs: own zero state, training state kept
            if self._in_one_call(data):
                return self._evaluate_in_one_call(key, data)
            return self.model.evaluate(self._dataset(key, data), verbose=0, return_dict=True)

    def _in_one_call(self, data):
        """Arrays, on a model without stateful layers or distribution strategy: evaluated by one
        graph call (``_evaluate_in_one_call``); else by ``evaluate`` (through the model's
        evaluation loop when it has one, which is what several replicas need)."""
        return evaluation.can_hold(self.model, data)

    def _evaluate_in_one_call(self, key, data):
        """What ``model.evaluate`` of these arrays returns (``return_dict=True``), in one call.

        One graph function: ``evaluate`` costs Python per batch (callbacks, a host copy of the
        logs), a large share of a small model's epoch when the run's
        evaluation batch is small. Inside it, the forward pass runs per batch and the loss and
        metrics once over all rows (``experiments.engine.evaluation.in_graph``, the route the
        loop's validation takes: the same values up to float rounding, the memory of batched
        evaluation). The arrays become
        tensors once and are passed as arguments (not graph constants).
        """
        model = self.model
        if self._functions.get("model") is not model:
            self._functions = {"model": model}
        if key not in self._functions:
            size = self.batch_size

            @tf.function(autograph=False)  # graph code without Python control flow on tensors
            def evaluate_all(x, y):
                # Resets the metrics in the graph (eagerly: one op call per variable).
                results = evaluation.in_graph(model, (x, y), size)
                # The weights' fingerprint in the same call (``measure`` needs it every epoch).
                return results, weights_fingerprint(model)

            tensors = tf.nest.map_structure(tf.convert_to_tensor, (data[0], data[1]))
            # Called as a concrete function: a ``tf.function`` call first matches its arguments
            # against its traces, which costs about as much as a small model's evaluation.
            self._functions[key] = (evaluate_all.get_concrete_function(*tensors), tensors)
        evaluate_all, (x, y) = self._functions[key]
        results, self._fingerprint_now = evaluate_all(x, y)
        return {name: float(value) for name, value in results.items()}

    def measure(self, logs=None):
        """Returns {'train_inference/<m>': ..., 'generalization_gap/<m>': ...} for now."""
        self._fingerprint_now = None
        train = self._evaluate("train", self.train_subset)
        logs = logs or {}
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        if not all(name in val for name in train) and self.validation_data is not None:
            val = self._evaluate("validation", self.validation_data)
        values = {}
        for name, train_value in train.items():
            values[f"train_inference/{name}"] = float(train_value)
            if name in val:
                values[f"generalization_gap/{name}"] = float(val[name]) - float(train_value)
        if not val and not self._warned_no_validation:  # said once, not every epoch
            self._warned_no_validation = True
            logging.warning("GeneralizationGap: this epoch's logs hold no validation metrics "
                            "(fit was given no validation_data, or its validation_freq skipped "
                            "this epoch) and the callback was given none: generalization_gap/* "
                            "is logged only at epochs with validation metrics, train_inference/* "
                            "at every epoch.")
        self._measured_at = self._fingerprint() if self._fingerprint_now is None \
            else self._fingerprint_now.numpy()
        return values

    def _fingerprint(self):
        """A few numbers that change when any weight changes (updates, EMA swap, reloading).
        Eager: it runs once per run at the end (each epoch's comes with the evaluation's graph
        call), where tracing a function would cost more than the ops."""
        return weights_fingerprint(self.model).numpy()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        values = self.measure(logs)
        self._record(epoch, values)
        if self._adds_to_logs():
            for name, value in values.items():
                logs[name.replace("/", "_")] = value

    def _adds_to_logs(self):
        if self.add_to_logs is not None:
            return bool(self.add_to_logs)
        return self.log_dir is None or getattr(self.model, "measurements", None) is not None

    def _record(self, epoch, values, on_update_axis=True):
        self._last_epoch = epoch
        self.final = dict(values)
        self.publish(epoch, values)
        updates = summary_writer.by_update(self.model, values) if on_update_axis else None
        if updates:  # the same, on the update axis
            summary_writer.scalars(self.log_dir, updates[1], updates[0])

    def on_train_end(self, logs=None):
        if self._measured_at is None or not np.array_equal(self._measured_at,
                                                           self._fingerprint()):
            # The final weights (e.g. the optimizer's EMA swapped in) came from no new update:
            # a point after the last epoch, not a second value at the last update's count.
            self._record(self._last_epoch + 1, self.measure(), on_update_axis=False)
        super().on_train_end(logs)

    def result(self):
        return dict(self.final)


def weights_fingerprint(model):
    """Graph code: sums and sums of squares of every weight, in each weight's own float type (no
    float64 copy of the weights: this runs every epoch)."""
    parts = [tf.zeros((), tf.float64)]
    for v in model.weights:
        value = tf.convert_to_tensor(v)
        if not value.dtype.is_floating:
            value = tf.cast(value, tf.float64)
        parts += [tf.cast(tf.reduce_sum(value), tf.float64),
                  tf.cast(2.0 * tf.nn.l2_loss(value), tf.float64)]
    return tf.stack(parts)


def fixed_subset(x, y, size, seed=0):
    """A seeded sample of ``size`` rows of (x, y), the same every epoch."""
    n = len(y)
    if size is None or size >= n:
        return x, y
    rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    return x[rows], y[rows]
