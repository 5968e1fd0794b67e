"""Stateful stream pipelines: one long series laid out as S parallel streams cut into windows.

A stateful RNN carries its state from one batch to the next, row by row. That is only right when
*row i of batch k+1 continues row i of batch k* (Keras' own stateful example broke this rule,
keras#1820, keras#7212). The layout here makes it hold by construction:

    series (N steps) --drop a seeded offset--> S contiguous streams of L steps each
    stream i = series[offset + i*L : offset + (i+1)*L]
    batch b  = rows i = 0..S-1, steps [b*k*T, (b+1)*k*T) of stream i      shape (S, k*T, ...)

T is ``stream_layout.window_length`` (the truncated-BPTT window), k is
``stream_layout.windows_per_update`` (windows of one optimizer update: the train step splits the
batch along time into k windows and carries the state from one to the next, see
``VirtualBatchModel.configure_time_windows``). Such a virtual batch holds S independent streams,
not k × S: its k windows are consecutive stretches of the same S streams.

Rules that keep it honest:
- The batch size is fixed: S = ``stream_layout.num_streams``, the batch the stateful model is
  built with (``DataSpec.batch_size``). ``train.batch_size`` and ``train.eval_batch_size`` must
  equal it (keras#21183: a batch of another size is silently broadcast into the state).
- L is a whole number of k*T windows: the remainder that does not fill a batch is dropped; there
  is never a short batch.
- Rows are never shuffled. Per-epoch variety comes from a seeded offset in [0, max_offset] that
  shifts every stream (and so every window boundary). The offset is drawn inside tf.data for each
  pass over the training set (``Dataset.random(..., rerandomize_each_iteration=True)``): Keras
  creates the next epoch's iterator before ``on_epoch_begin`` runs, so a callback would be late.
- The held-out part is the *end* of the series (contiguous text never trained on), laid out the same
  way with windows of T and no offset.

Sources: ``stream_series`` (an array, an ``.npz`` array or a ``.csv`` column), ``stream_text``
(text files -> character ids), ``stream_tokens`` (integer token documents), ``flip_flop`` (a
synthetic long-memory task). Documents are joined with a separator into the one series. Without
explicit targets the target is the next step (language modelling).
"""

import csv
import dataclasses
import glob
import os
from typing import Optional

import gin
import numpy as np
import tensorflow as tf

from experiments import data as data_lib

# Record separator: marks the end of a text document in the character stream.
DOCUMENT_SEPARATOR = "\x1e"


@dataclasses.dataclass(frozen=True)
class StreamLayout:
    """How a series becomes batches; see the module docstring.

    Attributes:
      num_streams: S, rows of every batch (the stateful model's fixed batch size).
      window_length: T, time steps of one window (the truncated-BPTT length).
      windows_per_update: k, consecutive windows in one optimizer update (batch is (S, k*T)).
      max_offset: largest per-epoch offset of the streams (None: T; 0: no offset).
      stateful: False lays out the same windows for a stateless baseline (no fixed batch size in
        the spec, so a stateless model is accepted and no state is carried).
    """

    num_streams: int
    window_length: int
    windows_per_update: int = 1
    max_offset: Optional[int] = None
    stateful: bool = True

    def __post_init__(self):
        for name in ("num_streams", "window_length", "windows_per_update"):
            data_lib.check_batch_size(getattr(self, name), f"stream_layout.{name}")
        offset = self.max_offset
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int)
                                   or offset < 0):
            raise ValueError(
                f"stream_layout.max_offset must be None or an integer >= 0, got {offset!r}.")

    @property
    def offset_range(self):
        return self.window_length if self.max_offset is None else self.max_offset

    @property
    def update_length(self):
        """k*T: time steps of one training batch."""
        return self.window_length * self.windows_per_update

    def stream_length(self, num_steps):
        """L: steps per stream in one training epoch (a whole number of k*T windows)."""
        return (num_steps - self.offset_range) // self.num_streams \
            // self.update_length * self.update_length

    def min_train_steps(self):
        return self.num_streams * self.update_length + self.offset_range

    def min_validation_steps(self):
        return self.num_streams * self.window_length


@gin.configurable
def stream_layout(num_streams=gin.REQUIRED, window_length=gin.REQUIRED, windows_per_update=1,
                  max_offset=None, stateful=True):
    """The stream layout every stateful source uses (bind ``stream_layout.*`` once in gin)."""
    return StreamLayout(num_streams, window_length, windows_per_update, max_offset, stateful)


def stream_batches(inputs, targets, num_streams, stream_length, batch_length, offset):
    """(inputs, targets) laid out as a dataset of (S, batch_length, ...) batches; tf ops.

    ``offset`` may be a scalar tensor. Stream i is ``series[offset + i*L : offset + (i+1)*L]``.
    """
    num_batches = stream_length // batch_length

    def cut(series):
        block = series[offset:offset + num_streams * stream_length]
        feature_shape = series.shape[1:]
        block = tf.reshape(block, [num_streams, num_batches, batch_length, *feature_shape])
        perm = [1, 0, 2] + list(range(3, 3 + len(feature_shape)))
        return tf.transpose(block, perm)  # (batches, S, batch_length, ...)

    return tf.data.Dataset.from_tensor_slices((cut(inputs), cut(targets)))


class StreamData:
    """A training and a held-out series with their layout; ``make_batched`` builds the pipelines."""

    def __init__(self, name, layout, train_inputs, train_targets, validation_inputs=None,
                 validation_targets=None):
        self.name = name
        self.layout = layout
        self.train_inputs, self.train_targets = train_inputs, train_targets
        self.validation_inputs, self.validation_targets = validation_inputs, validation_targets
        self._check_lengths()

    def _check_lengths(self):
        lay = self.layout
        n = len(self.train_inputs)
        if n < lay.min_train_steps():
            raise ValueError(
                f"'{self.name}': the training series has {n} steps, too few for one batch of "
                f"stream_layout.num_streams={lay.num_streams} streams × "
                f"stream_layout.window_length={lay.window_length} steps × "
                f"stream_layout.windows_per_update={lay.windows_per_update} windows plus "
                f"stream_layout.max_offset={lay.offset_range}: it needs at least "
                f"{lay.min_train_steps()} steps. Use more data or fewer/shorter streams.")
        if self.validation_inputs is not None:
            nv = len(self.validation_inputs)
            if nv < lay.min_validation_steps():
                raise ValueError(
                    f"'{self.name}': the held-out series has {nv} steps, too few for one batch of "
                    f"stream_layout.num_streams={lay.num_streams} × "
                    f"stream_layout.window_length={lay.window_length} = "
                    f"{lay.min_validation_steps()} steps; raise validation_split (or set it to 0 "
                    "for no validation).")

    @property
    def steps_per_epoch(self):
        return self.layout.stream_length(len(self.train_inputs)) // self.layout.update_length

    def make_batched(self, batch_size, eval_batch_size=None, seed=0):
        """Pipelines of (S, k*T) training batches and (S, T) evaluation batches."""
        lay = self.layout
        if batch_size != lay.num_streams:
            raise ValueError(
                f"train.batch_size={batch_size} does not match stream_layout.num_streams="
                f"{lay.num_streams}: a stream pipeline's batch is its {lay.num_streams} streams "
                "(the stateful model's fixed batch size). Bind both to the same value.")
        if eval_batch_size not in (None, lay.num_streams):
            raise ValueError(
                f"train.eval_batch_size={eval_batch_size} does not match stream_layout.num_streams"
                f"={lay.num_streams}: evaluation runs on the same fixed number of streams.")
        length = lay.stream_length(len(self.train_inputs))
        steps = length // lay.update_length
        x = tf.convert_to_tensor(self.train_inputs)
        y = tf.convert_to_tensor(self.train_targets)
        if lay.offset_range:
            offsets = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
            offsets = offsets.map(lambda r: tf.cast(r % (lay.offset_range + 1), tf.int32))
        else:
            offsets = tf.data.Dataset.from_tensors(tf.constant(0, tf.int32))
        train = offsets.flat_map(lambda offset: stream_batches(
            x, y, lay.num_streams, length, lay.update_length, offset))
        train = train.apply(tf.data.experimental.assert_cardinality(steps))
        train = train.prefetch(tf.data.AUTOTUNE)

        validation, validation_steps = None, None
        if self.validation_inputs is not None:
            v_length = len(self.validation_inputs) // lay.num_streams \
                // lay.window_length * lay.window_length
            validation = stream_batches(
                tf.convert_to_tensor(self.validation_inputs),
                tf.convert_to_tensor(self.validation_targets),
                lay.num_streams, v_length, lay.window_length, 0).prefetch(tf.data.AUTOTUNE)
            validation_steps = v_length // lay.window_length
        return data_lib.Pipelines(
            train, validation, steps, validation_steps, lay.num_streams,
            time_window=lay.window_length, windows_per_update=lay.windows_per_update)


# ----------------------------------------------------------------------------------------------
# Building a StreamData from one series.

def _split_series(inputs, targets, validation_split, name):
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"'{name}': validation_split must be in [0, 1), got {validation_split!r}.")
    num_validation = int(round(len(inputs) * validation_split))
    cut = len(inputs) - num_validation
    if num_validation == 0:
        return (inputs, targets), (None, None)
    return (inputs[:cut], targets[:cut]), (inputs[cut:], targets[cut:])


def _make_data(name, inputs, targets, layout, validation_split, task, num_outputs,
               vocabulary_size=None):
    """The ``data.Data`` of a stream source: spec, no in-memory rows, ``make_batched``."""
    layout = layout if layout is not None else stream_layout()
    if len(inputs) != len(targets):
        raise ValueError(f"'{name}': {len(inputs)} input steps but {len(targets)} target steps.")
    (x_tr, y_tr), (x_va, y_va) = _split_series(inputs, targets, validation_split, name)
    stream = StreamData(name, layout, x_tr, y_tr, x_va, y_va)
    input_shape = (None, *inputs.shape[1:])
    spec = data_lib.DataSpec(
        input_shape=input_shape, num_outputs=int(num_outputs), task=task,
        batch_size=layout.num_streams if layout.stateful else None,
        vocabulary_size=vocabulary_size)
    data = data_lib.Data(spec, name=name, make_batched=stream.make_batched)
    data.stream = stream
    return data


def _next_step(series):
    """Inputs and next-step targets of one series (language modelling / forecasting)."""
    return series[:-1], series[1:]


def _load_series(path, key, column):
    path = data_lib._resolve(path)
    if path.endswith(".npz"):
        with np.load(path) as archive:
            if key not in archive.files:
                raise KeyError(f"{path}: no array named {key!r} (has {archive.files}).")
            return archive[key]
    if path.endswith(".csv"):
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or column not in rows[0]:
            raise KeyError(f"{path}: no column {column!r} "
                           f"(columns: {list(rows[0]) if rows else []}).")
        return np.array([float(r[column]) for r in rows])
    return np.load(path)


@gin.configurable
def stream_series(series=None, path=None, key="x", column=None, targets=None, target_key=None,
                  target_column=None, vocabulary_size=None, validation_split=0.1, layout=None,
                  name=None):
    """One long series (an array, an ``.npz`` array, a ``.csv`` column or a ``.npy`` file).

    Without targets the target is the next step: integer series become a language model over
    ``vocabulary_size`` ids (max id + 1 when None), float series a next-value regression. Given
    targets (same length), integer targets are classes and float targets regression values.
    """
    if (series is None) == (path is None):
        raise ValueError("stream_series needs exactly one of stream_series.series or "
                         "stream_series.path.")
    name = name or (os.path.splitext(os.path.basename(path))[0] if path else "series")
    values = np.asarray(series) if series is not None else _load_series(path, key, column)
    if targets is None and (target_key or target_column) and path is not None:
        targets = _load_series(path, target_key, target_column)
    is_ids = np.issubdtype(values.dtype, np.integer)
    values = values.astype(np.int32 if is_ids else np.float32)
    if values.ndim == 1 and not is_ids:
        values = values[:, None]
    if targets is None:
        inputs, targets = _next_step(values)
        if is_ids:
            vocab = int(vocabulary_size or values.max() + 1)
            return _make_data(name, inputs, targets, layout, validation_split,
                              "language_model", vocab, vocab)
        return _make_data(name, inputs, targets, layout, validation_split, "regression",
                          values.shape[-1])
    targets = np.asarray(targets)
    vocab = int(vocabulary_size or values.max() + 1) if is_ids else None
    if np.issubdtype(targets.dtype, np.integer):
        return _make_data(name, values, targets.astype(np.int64), layout, validation_split,
                          "classification", int(targets.max()) + 1, vocab)
    targets = targets.astype(np.float32)
    if targets.ndim == 1:
        targets = targets[:, None]
    return _make_data(name, values, targets, layout, validation_split, "regression",
                      targets.shape[-1], vocab)


def _text_paths(paths):
    """Files from paths, directories (their ``*.txt``, sorted) and glob patterns, in order."""
    if isinstance(paths, str):
        paths = [paths]
    found = []
    for path in paths:
        if any(c in path for c in "*?["):
            matches = sorted(glob.glob(path)) or sorted(glob.glob(
                os.path.join(data_lib.REPO_ROOT, path)))
            if not matches:
                raise FileNotFoundError(f"No file matches {path!r}.")
            found += matches
            continue
        resolved = data_lib._resolve(path)
        if os.path.isdir(resolved):
            files = sorted(glob.glob(os.path.join(resolved, "*.txt")))
            if not files:
                raise FileNotFoundError(f"No *.txt file in directory {path!r}.")
            found += files
        else:
            found.append(resolved)
    return found


@gin.configurable
def stream_text(paths=gin.REQUIRED, separator=DOCUMENT_SEPARATOR, lowercase=False,
                max_characters=None, validation_split=0.1, layout=None, name=None):
    """A character-level language model over text files (documents joined by ``separator``).

    The vocabulary is the sorted set of characters of the whole corpus (stable for a corpus). The
    held-out text is the last ``validation_split`` of the joined corpus.
    """
    files = _text_paths(paths)
    documents = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        documents.append(text.lower() if lowercase else text)
    text = separator.join(documents)
    if max_characters:
        text = text[:int(max_characters)]
    vocabulary = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocabulary)}
    ids = np.fromiter((lookup[c] for c in text), dtype=np.int32, count=len(text))
    inputs, targets = _next_step(ids)
    name = name or os.path.basename(os.path.normpath(files[0] if len(files) == 1
                                                     else os.path.dirname(files[0])))
    data = _make_data(name, inputs, targets, layout, validation_split, "language_model",
                      len(vocabulary), len(vocabulary))
    data.vocabulary = vocabulary
    return data


@gin.configurable
def stream_tokens(documents=None, path=None, separator_id=None, vocabulary_size=None,
                  validation_split=0.1, layout=None, name="tokens"):
    """Integer token documents (a list of arrays, or the arrays of an ``.npz`` in key order).

    Documents are joined with ``separator_id`` (None: a new id, max id + 1). The target is the next
    token.
    """
    if (documents is None) == (path is None):
        raise ValueError("stream_tokens needs exactly one of stream_tokens.documents or "
                         "stream_tokens.path.")
    if path is not None:
        with np.load(data_lib._resolve(path)) as archive:
            documents = [archive[k] for k in archive.files]
    documents = [np.asarray(d).reshape(-1) for d in documents]
    if not documents:
        raise ValueError(f"'{name}': no documents.")
    for d in documents:
        if d.size and not np.issubdtype(d.dtype, np.integer):
            raise ValueError(f"'{name}': token documents must hold integer ids, got {d.dtype}.")
    top = max(int(d.max()) for d in documents if d.size)
    if separator_id is None:
        separator_id = top + 1
    pieces = []
    for i, d in enumerate(documents):
        if i:
            pieces.append(np.array([separator_id]))
        pieces.append(d)
    ids = np.concatenate(pieces).astype(np.int32)
    vocab = int(vocabulary_size or max(top, separator_id) + 1)
    if ids.max() >= vocab:
        raise ValueError(f"'{name}': id {int(ids.max())} is outside "
                         f"stream_tokens.vocabulary_size={vocab}.")
    inputs, targets = _next_step(ids)
    return _make_data(name, inputs, targets, layout, validation_split, "language_model", vocab,
                      vocab)


@gin.configurable
def flip_flop(num_steps=100_000, marker_probability=0.02, num_distractors=6, seed=0,
              validation_split=0.1, layout=None):
    """A long-memory task that truncated BPTT can still learn: remember the last marker.

    Inputs are symbol ids: 0 and 1 are markers ("remember 0", "remember 1"), 2.. are distractors.
    The target at every step is the value of the last marker seen, however far back (on average
    1/marker_probability steps, often in an earlier window). A model that loses its state at window
    boundaries can only guess until the next marker; a stateful one that has learned to hold the
    bit does not. Holding a bit is taught *inside* windows (a marker early in a window is asked
    for at every later step of it), so the gradients of windows of T suffice, unlike a delayed copy
    with a delay > T, which no truncated layout can learn.
    """
    rng = np.random.default_rng(seed)
    symbols = rng.integers(2, 2 + num_distractors, size=num_steps)
    is_marker = rng.random(num_steps) < marker_probability
    is_marker[0] = True
    symbols[is_marker] = rng.integers(0, 2, size=int(is_marker.sum()))
    positions = np.where(is_marker, np.arange(num_steps), 0)
    last_marker = np.maximum.accumulate(positions)
    targets = symbols[last_marker].astype(np.int64)
    data = _make_data("flip_flop", symbols.astype(np.int32), targets, layout, validation_split,
                      "classification", 2, 2 + num_distractors)
    return data
