"""Validation curves keyed by update: the measurement behind steps to result.

Steps to result (Shallue et al. 2018) asks at which *update* a run first reaches a target, so the
validation set must be evaluated during an epoch, not only at its end. ``PeriodicEvaluation``
evaluates it every ``every_n_updates`` updates and at the end of training, keeps the curve
``{"val_loss": [[update, value], ...], "val_accuracy": [...]}`` and logs each point as
``validation_curve/<metric>`` at its update (``log_dir/train``).

It is a ``Measurement`` (``experiments.engine.measurement``): for (x, y) arrays on one replica
without stateful layers, batchlab's loop evaluates the set inside its train call, right after the
measured update (``experiments.engine.evaluation``: the route the loop's own validation takes), so
a point costs one pass over the validation rows and no graph call of its own. Evaluating
mid-epoch must not disturb training: the model's metric variables (the running averages the loop
reports for the epoch) are saved before and restored after each evaluation, in the same graph.
Elsewhere (a dataset, several replicas, stateful layers) each point is one ``model.evaluate`` on
the host. In Keras' own ``fit`` it is a callback like any other; there the points use
``test_step`` per batch, as Keras' own validation does.

Each point also records the training seconds it was reached at (``curve_seconds`` in the result,
``validation_curve/seconds`` in TensorBoard), so that a run's time to a target can be read as
its updates can: the wall-clock seconds from the start of training (this measurement's
``start``, before the train step is traced: tracing counts) to the evaluation of that point,
less the time this curve's own earlier evaluations took. The clock is read in the graph
(``tf.timestamp``) right before and after each evaluation inside the train call, on the host
around ``model.evaluate`` elsewhere. A resumed run continues from its last point logged before
the kill (the updates between that point and the checkpoint it resumed from are not counted).
With op determinism on (``train.deterministic_ops``, or any earlier ``enable_op_determinism`` in
the process) TensorFlow allows no clock in the graph: the in-call points then have no seconds.
"""

import time

import numpy as np
import tensorflow as tf

from callbacks import summary_writer
from callbacks.base import LoggedMeasurement
from experiments.common import checks
from experiments.engine import evaluation, keras_internals
from experiments.engine.schedule import Cadence
from experiments.engine.states import isolated_state

SECONDS_TAG = "validation_curve/seconds"


class PeriodicEvaluation(LoggedMeasurement):
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
        self.every_n_updates = checks.positive_int(every_n_updates, "every_n_updates")
        self.cadence = Cadence(self.every_n_updates)
        self.validation_data = validation_data
        self.batch_size = checks.positive_int(batch_size, "batch_size")
        self.prefix = prefix
        self.curve = {}  # {metric: [[update, value], ...]}
        self.seconds = []  # [[update, training seconds at that point], ...]
        self._set = None  # evaluation.FixedSet of the model
        self._names = []
        self._last_update = None

    def start(self, model):
        self.set_model(model)
        self._started = time.time()  # the clock of ``seconds`` (tf.timestamp's: wall time)
        self._evaluating = 0.0  # seconds this curve's evaluations took since ``start``
        self._offset = None  # seconds before this process (a resumed run), at the first point
        self.in_train_call = evaluation.can_hold(model, self.validation_data)
        if self.in_train_call and (self._set is None or self._set.model is not model):
            # batchlab's loop (which sets the model's evaluation loop) validates with the lean
            # route; Keras' fit with ``test_step`` per batch: a point equals that loop's val_*.
            lean = getattr(model, "evaluation_loop", None) is not None
            self._set = evaluation.FixedSet(model, self.validation_data, self.batch_size,
                                            lean=lean, keep_metrics=True)
            self._names = self._set.names()
            self._own_call = None
            self.shape = (len(self._names) + 2,)  # the metrics, then the clock before and after
        return True

    def read(self, update):
        if keras_internals.op_determinism_enabled():
            # TensorFlow refuses a clock in a deterministic graph ("Timestamp cannot be called
            # when determinism is enabled"): the curve then has no seconds.
            values = self._set.graph()
            row = [tf.cast(values[name], tf.float64) for name in self._names]
            unknown = tf.constant(float("nan"), tf.float64)
            return tf.stack(row + [unknown, unknown])
        begin = tf.timestamp()
        with tf.control_dependencies([begin]):
            values = self._set.graph()
        row = [tf.cast(values[name], tf.float64) for name in self._names]
        with tf.control_dependencies(row):
            end = tf.timestamp()
        return tf.stack(row + [begin, end])

    def values(self, update, row):
        self._last_update = int(update)
        count = len(self._names)
        values = {self.prefix + name: float(v) for name, v in zip(self._names, row[:count])}
        for name, value in values.items():
            self.curve.setdefault(name, []).append([int(update), value])
        logged = {f"validation_curve/{name}": v for name, v in values.items()}
        if len(row) >= count + 2 and not np.isnan(row[count]):
            seconds = self._training_seconds(int(update), float(row[count]),
                                             float(row[count + 1]))
            self.seconds.append([int(update), seconds])
            logged[SECONDS_TAG] = seconds
        return logged

    def _training_seconds(self, update, begin, end):
        """Seconds of training at a point evaluated from ``begin`` to ``end`` (clock values):
        since ``start``, without this curve's earlier evaluations, plus a resumed run's seconds
        at its last point before this one."""
        if self._offset is None:
            # this instance's own earlier points (a second ``fit`` of the same model), else
            # those a resumed run's earlier process logged
            before = [s for u, s in self.seconds if u < update] or [
                s for u, s in summary_writer.logged_before(self.log_dir, SECONDS_TAG)
                if u < update]
            self._offset = float(before[-1]) if before else 0.0
        seconds = self._offset + (begin - self._started) - self._evaluating
        self._evaluating += max(end - begin, 0.0)
        return seconds

    def measure_now(self, update):
        if self.in_train_call:
            return super().measure_now(update)
        begin = time.time()
        results = self._evaluate_on_host()
        return self.publish_dict(update, results, clock=(begin, time.time()))

    def publish_dict(self, update, results, clock=None):
        """Publishes ``{metric: value}`` at ``update``; ``clock``: (time before, time after)
        the evaluation, for the point's training seconds."""
        self._names = list(results)
        row = [results[name] for name in self._names] + list(clock or ())
        self.publish(update, np.array(row, dtype=np.float64))

    def _evaluate_on_host(self):
        """{metric: value} by ``model.evaluate``, leaving the training metrics as they were."""
        saved = [v.numpy() for v in self.model.metrics_variables]
        try:
            with isolated_state(self.model):
                data = self.validation_data
                if not isinstance(data, tf.data.Dataset):
                    data = tf.data.Dataset.from_tensor_slices(tuple(data)).batch(self.batch_size)
                return self.model.evaluate(data, verbose=0, return_dict=True)
        finally:
            for variable, value in zip(self.model.metrics_variables, saved):
                variable.assign(value)

    def finish(self, update):
        if update != self._last_update:
            self.measure_now(update)
        super().finish(update)

    def result(self):
        """``{"curve": {metric: [[update, value], ...]}, "curve_seconds": [[update, seconds],
        ...]}`` for the run's result.json (``curve_seconds``: the training seconds at each
        point, see the module docstring)."""
        out = {"curve": {name: self.whole_curve(f"validation_curve/{name}", points)
                         for name, points in self.curve.items()}}
        if self.seconds or summary_writer.logged_before(self.log_dir, SECONDS_TAG):
            out["curve_seconds"] = self.whole_curve(SECONDS_TAG, self.seconds)
        return out
