"""Shared TensorBoard writers, one per (log_dir, subdirectory), and a cheap scalar log.

Measurement callbacks log several scalars per logging step. An eager ``tf.summary.scalar`` pays
Python and op dispatch for every value, a visible share of a small model's update. ``scalars``
therefore skips TensorFlow's ops: it builds the same protocol buffer that ``tf.summary.scalar``
writes (a float tensor with the ``scalars`` plugin's metadata), one event per logging step, and
appends it to an event file (``EventFile``) through TensorFlow's record writer, in the calling
thread (at most ``FLUSH_SECONDS`` late on disk; ``flush``/``close_all`` write at once). TensorBoard
reads every event file of a directory, so these files sit beside the ones ``tf.summary`` writes.

The writers and what a resumed run found in its files belong to a ``SummaryWriters`` object;
the module-level functions (``writer_for``, ``scalars``, ``continue_from``, ``logged_before``,
``text``, ``flush``, ``close_all``) are those of the process's one instance, ``WRITERS``.

``TensorBoard`` is Keras' callback with its per-epoch scalars (``epoch_*``,
``evaluation_*_vs_iterations``) written the same cheap way: Keras writes each through an eager
``tf.summary.scalar``, a visible share of a small run's epoch. The Keras private members this
takes are in ``experiments.engine.keras_internals.EpochScalarsTensorBoard``.

batchlab's own ``tf.summary`` writes (notes, the configs, HParams) run under
``tf.summary.record_if(True)``: Keras' ``TensorBoard`` with ``update_freq = N`` pushes a
``record_if`` of its batch count for the whole of training, and a note written at a batch that is
not a multiple of N was dropped.
"""

import glob
import itertools
import os
import socket
import threading
import time
import weakref

import tensorflow as tf
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata

from experiments.engine import keras_internals

FLUSH_SECONDS = 10.0  # a logged value reaches the event file at most this late
_SCALAR_METADATA = scalar_metadata.create_summary_metadata(display_name=None, description=None)
_SCALAR_SHAPE = tensor_shape_pb2.TensorShapeProto()


class ScalarEncoder:
    """Builds ``Event``s of scalars as ``tf.summary.scalar`` encodes them.

    Each tag's value message (tag, plugin metadata, tensor type and shape) is built once and
    copied: building it afresh costs about twice as much, on every logged point."""

    def __init__(self):
        self._templates = {}  # tag -> Summary.Value without its number

    def event(self, values, step):
        """One ``Event`` holding ``{tag: float}`` at ``step``."""
        summary = summary_pb2.Summary()
        for tag, value in values.items():
            entry = summary.value.add()
            entry.CopyFrom(self._template(tag))
            entry.tensor.float_val.append(float(value))
        return event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)

    def _template(self, tag):
        template = self._templates.get(tag)
        if template is None:
            template = self._templates[tag] = summary_pb2.Summary.Value(
                tag=tag, metadata=_SCALAR_METADATA,
                tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT,
                                              tensor_shape=_SCALAR_SHAPE))
        return template


class EventFile:
    """One event file (TFRecord framing, as TensorBoard reads it), written in the calling thread
    by ``tf.io.TFRecordWriter`` (framing and checksums in C++: about a microsecond per event) and
    flushed by a daemon thread at most ``FLUSH_SECONDS`` after a write (``flush``/``close`` at
    once).

    TensorBoard's own ``EventFileWriter`` hands each event to a writer thread through a queue:
    about 150 microseconds per event here (the thread hand-off and the GIL), more than building
    the event, on every logged point of every measurement (BUILD.md, issue 19). Its file name
    and first event are the same as here."""

    _numbers = itertools.count()
    _open = weakref.WeakSet()
    _flusher = None
    _flusher_lock = threading.Lock()

    def __init__(self, directory, suffix=""):
        tf.io.gfile.makedirs(directory)
        self.path = os.path.join(directory, "events.out.tfevents.%010d.%s.%s.%s%s" % (
            time.time(), socket.gethostname(), os.getpid(), next(self._numbers), suffix))
        self._writer = tf.io.TFRecordWriter(self.path)
        self._lock = threading.Lock()
        self._dirty = False
        self.add_event(event_pb2.Event(
            wall_time=time.time(), file_version="brain.Event:2",
            source_metadata=event_pb2.SourceMetadata(writer="batchlab.summary_writer")))
        self.flush()
        EventFile._open.add(self)
        EventFile._start_flusher()

    def add_event(self, event):
        with self._lock:
            if self._writer is None:
                raise ValueError(f"The event file {self.path} is closed.")
            self._writer.write(event.SerializeToString())
            self._dirty = True

    def flush(self):
        with self._lock:
            if self._writer is not None and self._dirty:
                self._writer.flush()
                self._dirty = False

    def close(self):
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        EventFile._open.discard(self)

    @classmethod
    def _start_flusher(cls):
        with cls._flusher_lock:
            if cls._flusher is None or not cls._flusher.is_alive():
                cls._flusher = threading.Thread(target=cls._flush_every, daemon=True,
                                                name="batchlab-event-files")
                cls._flusher.start()

    @classmethod
    def flush_open(cls):
        """Flushes every open event file that has unflushed events (the daemon thread's job)."""
        for event_file in list(cls._open):
            event_file.flush()

    @classmethod
    def _flush_every(cls):
        while True:
            time.sleep(FLUSH_SECONDS)
            cls.flush_open()


class SummaryWriters:
    """The writers of a process, one per ``log_dir/subdir``, and what resumed runs found there.

    ``tf.summary`` writers serve text and Keras' own summaries; event-file writers serve
    ``scalars``. A resumed run's logged steps (``continue_from``) keep ``scalars`` from writing a
    (tag, step) twice and let callbacks report whole curves (``logged_before``).
    """

    def __init__(self, encoder):
        self._encoder = encoder
        self._writers = {}  # subdir path -> tf.summary writer
        self._event_writers = {}  # subdir path -> EventFile
        self._logged = {}  # subdir path -> {tag: last step already in its event files}
        self._before = {}  # subdir path -> {tag: [(step, value)] in its files at the resume}
        self._texts = {}  # subdir path -> {(tag, step)} of the text summaries written there

    def writer_for(self, log_dir, subdir="train"):
        """Returns a ``tf.summary`` writer for ``log_dir/subdir`` (None when ``log_dir`` is
        None)."""
        if log_dir is None:
            return None
        path = os.path.join(log_dir, subdir)
        if path not in self._writers:
            self._writers[path] = tf.summary.create_file_writer(
                path, flush_millis=int(FLUSH_SECONDS * 1000))
        return self._writers[path]

    def _event_writer(self, log_dir, subdir):
        path = os.path.join(log_dir, subdir)
        if path not in self._event_writers:
            self._event_writers[path] = EventFile(path, suffix=".measurements")
        return self._event_writers[path]

    def scalars(self, log_dir, values, step, subdir="train"):
        """Logs ``{tag: float}`` at ``step`` (a no-op when ``log_dir`` is None or nothing to log).

        In a resumed run, a (tag, step) already in the event files is not written again.
        """
        if log_dir is None or not values:
            return
        logged = self._logged.get(os.path.join(log_dir, subdir))
        if logged:
            values = {tag: v for tag, v in values.items() if step > logged.get(tag, -1)}
            if not values:
                return
        self._event_writer(log_dir, subdir).add_event(self._encoder.event(values, step))

    def continue_from(self, log_dir):
        """Reads the steps already logged under ``log_dir`` by ``scalars`` (a run resumed from a
        checkpoint replays the updates between that checkpoint and the kill: their values are
        the same, so TensorBoard keeps one point per step instead of two)."""
        from tensorboard.backend.event_processing import event_file_loader  # noqa: PLC0415

        prefix = os.path.join(log_dir, "")
        for stale in [path for path in self._before if path.startswith(prefix)]:
            del self._before[stale]  # a run resumed again in the same process reads afresh

        for subdir in glob.glob(os.path.join(log_dir, "*", "")):
            self._texts[os.path.normpath(subdir)] = {
                (tag, step) for tag, step, plugin in summaries_in(subdir) if plugin == "text"}
        for path in sorted(glob.glob(os.path.join(log_dir, "*", "*.measurements*"))):
            logged = self._logged.setdefault(os.path.dirname(path), {})
            before = self._before.setdefault(os.path.dirname(path), {})
            for event in event_file_loader.EventFileLoader(path).Load():
                for value in event.summary.value:
                    logged[value.tag] = max(logged.get(value.tag, -1), event.step)
                    if value.tensor.float_val:
                        before.setdefault(value.tag, []).append(
                            (event.step, float(value.tensor.float_val[0])))

    def logged_before(self, log_dir, tag, subdir="train"):
        """[(step, value)] of ``tag`` that a resumed run found in its event files (written before
        the kill), so that callbacks can report whole curves; empty for a run that did not
        resume."""
        if log_dir is None:
            return []
        return sorted(self._before.get(os.path.join(log_dir, subdir), {}).get(tag, []))

    def text(self, log_dir, tag, message, step=0, subdir="train"):
        """Writes a text summary now (notes such as 'not defined for k = 1'); a resumed run
        does not write a (tag, step) its event files already hold."""
        writer = self.writer_for(log_dir, subdir)
        if writer is None:
            return
        written = self._texts.setdefault(os.path.normpath(os.path.join(log_dir, subdir)), set())
        if (tag, step) in written:
            return
        with writer.as_default(), tf.summary.record_if(True):
            tf.summary.text(tag, message, step=step)
        writer.flush()
        written.add((tag, step))

    def flush(self, log_dir=None):
        """Writes every pending event (of ``log_dir`` only, when given) to its event file."""
        for writers in (self._event_writers, self._writers):
            for path, writer in writers.items():
                if log_dir is None or path.startswith(os.path.join(log_dir, "")):
                    writer.flush()

    def close_all(self):
        """Flushes and forgets every writer (called at the end of a run)."""
        for writer in self._event_writers.values():
            writer.close()
        self._event_writers.clear()
        self._logged.clear()
        self._texts.clear()
        for writer in self._writers.values():
            writer.flush()
            writer.close()
        self._writers.clear()


def summaries_in(directory):
    """[(tag, step, plugin name)] of the ``tf.summary`` values in the event files directly in
    ``directory`` (not its ``.measurements`` files): what a resumed run must not write again."""
    from tensorboard.backend.event_processing import event_file_loader  # noqa: PLC0415

    found = []
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        if ".measurements" in os.path.basename(path):
            continue
        for event in event_file_loader.EventFileLoader(path).Load():
            for value in event.summary.value:
                found.append((value.tag, event.step, value.metadata.plugin_data.plugin_name))
    return found


# The process's writers: every callback and the runner share them through these functions.
ENCODER = ScalarEncoder()
WRITERS = SummaryWriters(ENCODER)
scalar_event = ENCODER.event
writer_for = WRITERS.writer_for
scalars = WRITERS.scalars
continue_from = WRITERS.continue_from
logged_before = WRITERS.logged_before
text = WRITERS.text
flush = WRITERS.flush
close_all = WRITERS.close_all


class TensorBoard(keras_internals.EpochScalarsTensorBoard):
    """``keras.callbacks.TensorBoard`` whose epoch and evaluation scalars go through ``scalars``:
    the same tags, steps and directories (``train``, ``validation``), written without TensorFlow
    ops, and not written twice in a resumed run. Histograms, images, graphs, profiling and
    per-batch scalars are Keras' own. Log keys that a measurement logs under its own tags
    (``generalization_gap_*`` -> ``generalization_gap/*``) are not written again as
    ``epoch_*``.

    Per-epoch scalars are keyed by the epoch (0-based), as Keras writes them; each is also
    written under ``by_update/<tag>`` keyed by the update count at the epoch's end, beside the
    per-update measurements (``gradients/*``, ``evaluation_*_vs_iterations``, ...) on one axis
    (docs/measurement.md, "Which axis")."""

    OWN_TAG_KEYS = ("epoch_generalization_gap_", "epoch_train_inference_")

    def __init__(self, log_dir="logs", write_graph=False, **kwargs):
        """Keras' arguments; ``write_graph`` defaults to False (the graph costs a trace and is
        rarely read): ``batchlab.TensorBoard.write_graph = True`` writes it."""
        super().__init__(log_dir=log_dir, write_graph=write_graph, **kwargs)

    def write_scalars(self, values, step, subdir):
        values = {tag: v for tag, v in values.items() if not tag.startswith(self.OWN_TAG_KEYS)}
        scalars(self.log_dir, values, step, subdir)
        updates = by_update(self.model, values, prefix="epoch_")
        if updates:
            scalars(self.log_dir, updates[1], updates[0], subdir)


def by_update(model, values, prefix=""):
    """(update count, ``{by_update/<tag>: value}``) of per-epoch ``values`` whose tag starts with
    ``prefix``: the same values keyed by the model's optimizer updates; None without any."""
    optimizer = getattr(model, "optimizer", None)
    iterations = getattr(optimizer, "iterations", None)
    chosen = {f"by_update/{tag}": v for tag, v in values.items() if tag.startswith(prefix)}
    if iterations is None or not chosen:
        return None
    return int(iterations.numpy()), chosen
