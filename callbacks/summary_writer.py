"""Shared TensorBoard writers, one per (log_dir, subdirectory), and a cheap scalar log.

Measurement callbacks log several scalars per logging step. An eager ``tf.summary.scalar`` costs a
few hundred microseconds of Python and op dispatch per value, a visible share of a small model's
update. ``scalars`` therefore skips TensorFlow: it builds the same protocol buffer that
``tf.summary.scalar`` writes (a float tensor with the ``scalars`` plugin's metadata), one event per
logging step, and hands it to TensorBoard's own event-file writer, which writes on a background
thread (at most ``FLUSH_SECONDS`` late; ``flush``/``close_all`` write at once). TensorBoard reads
every event file of a directory, so these files sit beside the ones ``tf.summary`` writes.

``TensorBoard`` is Keras' callback with its per-epoch scalars (``epoch_*``,
``evaluation_*_vs_iterations``) written the same cheap way: Keras writes each through an eager
``tf.summary.scalar`` (about 1 ms per value), some 7 ms per epoch of a small run.
"""

import glob
import os
import time

import keras
import tensorflow as tf
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter

FLUSH_SECONDS = 10.0  # a logged value reaches the event file at most this late
_WRITERS = {}
_EVENT_WRITERS = {}
_LOGGED = {}  # subdir path -> {tag: last step already in its event files} (resumed runs)
_BEFORE = {}  # subdir path -> {tag: [(step, value)] in its event files when the run resumed}
_SCALAR_METADATA = scalar_metadata.create_summary_metadata(display_name=None, description=None)
_SCALAR_SHAPE = tensor_shape_pb2.TensorShapeProto()
_VALUE_TEMPLATES = {}  # tag -> Summary.Value without its number (``scalar_event``)


def writer_for(log_dir, subdir="train"):
    """Returns a ``tf.summary`` writer for ``log_dir/subdir`` (None when ``log_dir`` is None)."""
    if log_dir is None:
        return None
    path = os.path.join(log_dir, subdir)
    if path not in _WRITERS:
        _WRITERS[path] = tf.summary.create_file_writer(path,
                                                       flush_millis=int(FLUSH_SECONDS * 1000))
    return _WRITERS[path]


def _event_writer(log_dir, subdir):
    path = os.path.join(log_dir, subdir)
    if path not in _EVENT_WRITERS:
        os.makedirs(path, exist_ok=True)
        _EVENT_WRITERS[path] = EventFileWriter(path, flush_secs=FLUSH_SECONDS,
                                               filename_suffix=".measurements")
    return _EVENT_WRITERS[path]


def scalar_event(values, step):
    """One ``Event`` holding ``{tag: float}`` at ``step``, as ``tf.summary.scalar`` encodes it.

    Each tag's value message (tag, plugin metadata, tensor type and shape) is built once and
    copied: building it afresh costs about twice as much, on every logged point."""
    summary = summary_pb2.Summary()
    for tag, value in values.items():
        template = _VALUE_TEMPLATES.get(tag)
        if template is None:
            template = _VALUE_TEMPLATES[tag] = summary_pb2.Summary.Value(
                tag=tag, metadata=_SCALAR_METADATA,
                tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT,
                                              tensor_shape=_SCALAR_SHAPE))
        entry = summary.value.add()
        entry.CopyFrom(template)
        entry.tensor.float_val.append(float(value))
    return event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)


def scalars(log_dir, values, step, subdir="train"):
    """Logs ``{tag: float}`` at ``step`` (a no-op when ``log_dir`` is None or nothing to log).

    In a resumed run, a (tag, step) already in the event files is not written again.
    """
    if log_dir is None or not values:
        return
    logged = _LOGGED.get(os.path.join(log_dir, subdir))
    if logged:
        values = {tag: v for tag, v in values.items() if step > logged.get(tag, -1)}
        if not values:
            return
    _event_writer(log_dir, subdir).add_event(scalar_event(values, step))


def continue_from(log_dir):
    """Reads the steps already logged under ``log_dir`` by ``scalars`` (a run resumed from a
    checkpoint replays the updates between that checkpoint and the kill: their values are the
    same, so TensorBoard keeps one point per step instead of two)."""
    from tensorboard.backend.event_processing import event_file_loader  # noqa: PLC0415

    for stale in [path for path in _BEFORE if path.startswith(os.path.join(log_dir, ""))]:
        del _BEFORE[stale]  # a run resumed again in the same process reads its files afresh

    for path in sorted(glob.glob(os.path.join(log_dir, "*", "*.measurements*"))):
        logged = _LOGGED.setdefault(os.path.dirname(path), {})
        before = _BEFORE.setdefault(os.path.dirname(path), {})
        for event in event_file_loader.EventFileLoader(path).Load():
            for value in event.summary.value:
                logged[value.tag] = max(logged.get(value.tag, -1), event.step)
                if value.tensor.float_val:
                    before.setdefault(value.tag, []).append(
                        (event.step, float(value.tensor.float_val[0])))


def logged_before(log_dir, tag, subdir="train"):
    """[(step, value)] of ``tag`` that a resumed run found in its event files (written before the
    kill), so that callbacks can report whole curves; empty for a run that did not resume."""
    if log_dir is None:
        return []
    return sorted(_BEFORE.get(os.path.join(log_dir, subdir), {}).get(tag, []))


def text(log_dir, tag, message, step=0, subdir="train"):
    """Writes a text summary now (notes such as 'not defined for k = 1')."""
    writer = writer_for(log_dir, subdir)
    if writer is None:
        return
    with writer.as_default():
        tf.summary.text(tag, message, step=step)
    writer.flush()


def flush(log_dir=None):
    """Writes every pending event (of ``log_dir`` only, when given) to its event file."""
    for writers in (_EVENT_WRITERS, _WRITERS):
        for path, writer in writers.items():
            if log_dir is None or path.startswith(os.path.join(log_dir, "")):
                writer.flush()


def close_all():
    """Flushes and forgets every writer (called at the end of a run)."""
    for writer in _EVENT_WRITERS.values():
        writer.close()
    _EVENT_WRITERS.clear()
    _LOGGED.clear()
    for writer in _WRITERS.values():
        writer.flush()
        writer.close()
    _WRITERS.clear()


class TensorBoard(keras.callbacks.TensorBoard):
    """``keras.callbacks.TensorBoard`` whose epoch and evaluation scalars go through ``scalars``:
    the same tags, steps and directories (``train``, ``validation``), written without TensorFlow
    ops, and not written twice in a resumed run. Histograms, images, graphs, profiling and
    per-batch scalars are Keras' own."""

    def on_train_batch_end(self, batch, logs=None):
        """Keras writes ``batch_*`` scalars after every call even with ``update_freq='epoch'``,
        where no writer is set and they are dropped (about 0.5 ms per value): skipped then."""
        if (self.update_freq == "epoch" and not self.write_steps_per_second
                and not getattr(self, "_should_trace", True)
                and not getattr(self, "_should_write_train_graph", True)):
            return
        super().on_train_batch_end(batch, logs)

    def _log_epoch_metrics(self, epoch, logs):
        if not logs:
            return
        train_logs = {k: v for k, v in logs.items() if not k.startswith("val_")}
        val_logs = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        train_logs = self._collect_learning_rate(train_logs)
        if self.write_steps_per_second:
            train_logs["steps_per_second"] = self._compute_steps_per_second()
        scalars(self.log_dir, {f"epoch_{k}": v for k, v in train_logs.items()}, epoch, "train")
        scalars(self.log_dir, {f"epoch_{k}": v for k, v in val_logs.items()}, epoch,
                "validation")

    def on_test_end(self, logs=None):
        optimizer = self.model.optimizer
        if optimizer is not None and hasattr(optimizer, "iterations") and logs:
            scalars(self.log_dir, {f"evaluation_{k}_vs_iterations": v for k, v in logs.items()},
                    int(optimizer.iterations.numpy()), "validation")
        self._pop_writer()
