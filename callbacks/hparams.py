"""TensorBoard HParams for batch-size runs: one row per run, hyperparameters beside final metrics.

Batch-size studies compare many runs that differ in a few knobs (batch size, learning rate, ...).
The HParams dashboard shows them as a table and parallel-coordinates plot, but only if each run
directory holds (1) a session-start summary with that run's hyperparameter values and (2) scalar
summaries for the metric columns, and the study directory above the runs holds (3) an experiment
config naming the columns. This module writes all three with the plugin's own summary API:

- ``HParamsLogger`` (a callback of a plain ``model.fit``): (1) at train begin, (2) at train end;
- ``write_final_metrics``: (2) after training, e.g. from a result file;
- ``write_session``: (1), (2) and the session's end status after training (a plain sweep);
- ``write_experiment_config``: (3), once per study.

Metric scalars are tagged ``hparams/<name>`` (``hparams/val_loss``, ``hparams/gap_loss``, ...),
written to the run directory itself (not ``train``/``validation``) at the final update count, so
they never mix with the per-epoch curves of ``keras.callbacks.TensorBoard``.
"""

import math
import numbers
import os
import warnings

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp
from tensorboard.plugins.hparams import metadata as hparams_metadata

from callbacks import summary_writer

TAG_PREFIX = "hparams/"


def hparam_value(name, value):
    """``value`` as the dashboard takes it: bool, int, float or str (None becomes "none")."""
    if value is None:
        return "none"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise ValueError(f"hparams[{name!r}]={value!r} is a {type(value).__name__}; the HParams "
                     "dashboard takes int, float, str or bool values (pass str(value)).")


def _hparam_values(hparams):
    if not isinstance(hparams, dict) or not hparams:
        raise ValueError(f"hparams={hparams!r} must be a non-empty dict of name: value.")
    return {str(name): hparam_value(name, value) for name, value in hparams.items()}


GAP_PREFIX = "generalization_gap_"  # the gap callback's keys in an epoch's logs


def metric_tag(name):
    """``"val_loss"`` or ``"hparams/val_loss"`` -> ``"hparams/val_loss"``."""
    return name if name.startswith(TAG_PREFIX) else TAG_PREFIX + name


def final_metrics(logs):
    """The numeric entries of an epoch's logs, plus ``gap_<m>`` for each
    ``generalization_gap_<m>`` that ``callbacks.generalization_gap`` put in them.

    The gap is only ever that callback's: both sides evaluated in inference mode on fixed rows.
    ``val_<m> - <m>`` is not one: ``<m>`` is ``fit``'s running average over the epoch, taken
    while the weights moved and with dropout on, and where the training and validation rows
    differ by construction (the NQM's noisy training rows against noise-free validation rows) the
    difference is a constant of the data, not a gap. A run without the gap callback has no gap
    column.
    """
    values = {}
    for name, value in (logs or {}).items():
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.item()
        if isinstance(value, (numbers.Real, np.generic)) and not isinstance(value, bool):
            values[name] = float(value)
    for name in list(values):
        if name.startswith(GAP_PREFIX):
            values["gap_" + name[len(GAP_PREFIX):]] = values[name]
    return values


def _write_scalars(writer, metrics, step):
    written = {}
    with writer.as_default(), tf.summary.record_if(True):
        for name, value in metrics.items():
            tag = metric_tag(name)
            tf.summary.scalar(tag, float(value), step=int(step))
            written[tag] = float(value)
    writer.flush()
    return written


def write_final_metrics(log_dir, metrics, step):
    """Writes ``{name or tag: value}`` as ``hparams/<name>`` scalars at ``step`` into ``log_dir``
    (the run directory); returns ``{tag: value}``. Usable after training."""
    writer = tf.summary.create_file_writer(log_dir)
    try:
        return _write_scalars(writer, metrics, step)
    finally:
        writer.close()


def run_name(log_dir):
    """The run's name for a TensorBoard directory: ``<run>/tensorboard`` -> ``<run>``."""
    path = os.path.normpath(str(log_dir))
    base = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) if base == "tensorboard" else base


_STATUS = {"success": "STATUS_SUCCESS", "failure": "STATUS_FAILURE", "running": "STATUS_RUNNING",
           "unknown": "STATUS_UNKNOWN"}


def write_session_end(log_dir, status):
    """Writes the session-end summary (``status``: success, failure, running, unknown) so the
    dashboard's Status column says how the run ended instead of "unknown"."""
    from tensorboard.plugins.hparams import api_pb2  # noqa: PLC0415
    from tensorboard.plugins.hparams import summary as hp_summary  # noqa: PLC0415

    pb = hp_summary.session_end_pb(getattr(api_pb2, _STATUS[status]))
    writer = tf.summary.create_file_writer(log_dir)
    try:
        with writer.as_default(), tf.summary.record_if(True):
            tf.summary.experimental.write_raw_pb(pb.SerializeToString(), step=0)
    finally:
        writer.close()


def write_session(log_dir, hparams, trial_id, metrics=None, step=0, status="success"):
    """One finished (or failed) run's whole HParams session after the fact, into ``log_dir``:
    the session start (``hparams``, ``trial_id``), its final ``metrics`` as ``hparams/<name>``
    scalars at ``step``, and the session end ``status``. For runs that trained without
    ``HParamsLogger`` (a plain sweep's variants, written from their result.json). Returns
    ``{tag: value}`` written."""
    values = _hparam_values(hparams)
    writer = tf.summary.create_file_writer(log_dir)
    try:
        with writer.as_default(), tf.summary.record_if(True):
            hp.hparams(values, trial_id=str(trial_id))
        written = _write_scalars(writer, metrics or {}, step)
    finally:
        writer.close()
    write_session_end(log_dir, status)
    return written


SET_ASIDE_NAME = "set-aside-events"  # replaces "tfevents" in a retired session's file name


def retire_sessions(log_dir):
    """Renames each event file directly in ``log_dir`` that holds an HParams session (its start
    or end) so that TensorBoard, which reads only files named ``*tfevents*``, no longer finds
    it; returns the new paths. For a failed attempt a relaunch sets aside
    (``<run>.attempt-K``): its session carries the run's name as its group, so the dashboard
    would put the attempt and the rerun in one row and average their metrics. The file stays,
    under its new name, for anyone who reads it with ``tf.data.TFRecordDataset``."""
    from tensorboard.backend.event_processing import event_file_loader  # noqa: PLC0415

    session_tags = {hparams_metadata.SESSION_START_INFO_TAG,
                    hparams_metadata.SESSION_END_INFO_TAG}
    renamed = []
    for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
        path = os.path.join(log_dir, name)
        if "tfevents" not in name or not os.path.isfile(path):
            continue
        if any(value.tag in session_tags
               for event in event_file_loader.EventFileLoader(path).Load()
               for value in event.summary.value):
            target = os.path.join(log_dir, name.replace("tfevents", SET_ASIDE_NAME))
            os.replace(path, target)
            renamed.append(target)
    return renamed


def _domain(name, values):
    """A ``hp.Discrete`` of the distinct values, or None (no domain: the dashboard reads the
    values from the runs) when they mix strings, bools and numbers, e.g. ``[None, 0.1]``."""
    values = sorted({hparam_value(name, value) for value in values}, key=repr)
    kinds = {bool if isinstance(v, bool) else str if isinstance(v, str) else float
             for v in values}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    return hp.Discrete([float(v) for v in values] if kind is float else values, dtype=kind)


def write_experiment_config(log_dir, hparam_domains, metric_tags, untyped=()):
    """Writes the study's experiment config (``hp.hparams_config``) into ``log_dir``, the parent
    of the run directories: one column per hyperparameter and per metric.

    Args:
      hparam_domains: ``{name: [values tried]}`` (a single value counts as a list of one).
      metric_tags: metric names or ``hparams/`` tags, as a list or ``{tag: display name}``.
      untyped: names among them that are neither a training nor a validation metric (a number
        derived after training, such as its throughput); names starting ``val_`` are validation
        ones, gaps are untyped, the rest training ones.
    """
    if not isinstance(hparam_domains, dict) or not hparam_domains:
        raise ValueError(f"hparam_domains={hparam_domains!r} must be a non-empty dict of "
                         "name: [values].")
    hparams = []
    for name, values in hparam_domains.items():
        values = [values] if isinstance(values, str) or not np.iterable(values) else list(values)
        hparams.append(hp.HParam(str(name), _domain(name, values) if len(values) else None))
    if isinstance(metric_tags, str):
        metric_tags = [metric_tags]
    if isinstance(metric_tags, dict):
        names = {metric_tag(tag): display for tag, display in metric_tags.items()}
    else:
        names = {metric_tag(tag): metric_tag(tag)[len(TAG_PREFIX):] for tag in metric_tags}
    if not names:
        raise ValueError("write_experiment_config needs at least one metric tag.")
    untyped = {metric_tag(tag) for tag in untyped}
    metrics = [hp.Metric(tag, display_name=display,
                         dataset_type=None if tag in untyped else _dataset_type(tag))
               for tag, display in names.items()]
    writer = tf.summary.create_file_writer(log_dir)
    try:
        with writer.as_default(), tf.summary.record_if(True):
            hp.hparams_config(hparams=hparams, metrics=metrics)
    finally:
        writer.close()


def _dataset_type(tag):
    name = tag[len(TAG_PREFIX):]
    if name.startswith("val_"):
        return hp.Metric.VALIDATION
    return None if name.startswith(("gap_", "generalization_gap_")) else hp.Metric.TRAINING


class HParamsLogger(keras.callbacks.Callback):
    """Writes this run's hyperparameters at train begin and its final metrics at train end.

    Args:
      log_dir: the run directory (one HParams session); the study config goes in its parent.
      hparams: ``{name: value}`` (int, float, str, bool; None is written as "none").
      metric_tags: names or ``hparams/`` tags to write at train end; None writes every numeric
        value of the last epoch's logs plus the ``gap_*`` values (see ``final_metrics``).
      trial_id: the session group shown in the dashboard; None: the run's name (the directory
        above ``log_dir`` when that is a run's ``tensorboard`` folder, else ``log_dir``'s own).
    """

    def __init__(self, log_dir, hparams, metric_tags=None, trial_id=None):
        super().__init__()
        self.log_dir = log_dir
        self.hparams = _hparam_values(hparams)
        if isinstance(metric_tags, str):
            metric_tags = [metric_tags]
        self.metric_tags = None if metric_tags is None else [metric_tag(t) for t in metric_tags]
        self.trial_id = trial_id if trial_id is not None else run_name(log_dir)
        self.written = {}  # {tag: value} written at train end
        self._overrides = {}
        self._last_logs = {}
        self._writer = None

    def set_final_metrics(self, metrics):
        """Adds or replaces final metric values (e.g. a test accuracy measured by another
        callback); call before train end. Keys are names or ``hparams/`` tags."""
        for name, value in metrics.items():
            self._overrides[metric_tag(name)[len(TAG_PREFIX):]] = float(value)

    def on_train_begin(self, logs=None):
        self.written = {}
        self._writer = tf.summary.create_file_writer(self.log_dir)
        # A resumed run's directory holds its session start already: one session per run.
        if not any(tag == hparams_metadata.SESSION_START_INFO_TAG for tag, _, _ in
                   summary_writer.summaries_in(self.log_dir)):
            with self._writer.as_default(), tf.summary.record_if(True):
                hp.hparams(self.hparams, trial_id=self.trial_id)
            self._writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        # The dict itself, not a copy: callbacks after this one (the generalization gap) add
        # their values to it, and Keras' train-end logs are a copy without them.
        self._last_logs = logs if logs is not None else {}

    def on_train_end(self, logs=None):
        values = final_metrics({**(logs or {}), **(self._last_logs or {})})
        values.update(self._overrides)
        if self.metric_tags is not None:
            wanted = [tag[len(TAG_PREFIX):] for tag in self.metric_tags]
            missing = [name for name in wanted if name not in values]
            if missing:
                warnings.warn(f"HParamsLogger: no final value for {missing} (have "
                              f"{sorted(values)}); those columns stay empty for this run.")
            values = {name: values[name] for name in wanted if name in values}
        step = int(self.model.optimizer.iterations.numpy()) if self.model.optimizer else 0
        writer = self._writer or tf.summary.create_file_writer(self.log_dir)
        try:
            self.written = _write_scalars(writer, values, step)
        finally:
            writer.close()
            self._writer = None
        write_session_end(self.log_dir, "success")
        bad = [tag for tag, value in self.written.items() if not math.isfinite(value)]
        if bad:
            warnings.warn(f"HParamsLogger: non-finite final metrics {bad} written as they are.")
