"""Stream sources: one long series (array, file, text corpus, token documents, a synthetic task).

Each returns a ``dataset.Data`` whose ``stream`` (a ``streams.StreamData``) lays out S parallel
streams in windows of T steps (``stream_layout``). Sources: ``stream_series`` (an array, an
``.npz`` array, a ``.csv`` column or a ``.npy`` file), ``stream_text`` (text files -> character
ids), ``stream_tokens`` (integer token documents), ``flip_flop`` (a synthetic long-memory task).
Documents are joined with a separator into the one series. Without explicit targets the target
is the next step (language modelling). The held-out part is the end of the series.
"""

import os

import gin
import numpy as np
from absl import logging

from experiments.common import checks
from experiments.common import paths as paths_lib
from experiments.inputs import files, labels
from experiments.inputs.dataset import Data, DataSpec
from experiments.inputs.streams import StreamData, stream_layout

# Record separator: marks the end of a text document in the character stream.
DOCUMENT_SEPARATOR = "\x1e"



def _split_series(inputs, targets, validation_split, name):
    checks.fraction(validation_split, f"'{name}': validation_split")
    num_validation = int(round(len(inputs) * validation_split))
    cut = len(inputs) - num_validation
    if num_validation == 0:
        return (inputs, targets), (None, None)
    return (inputs[:cut], targets[:cut]), (inputs[cut:], targets[cut:])


def _make_data(name, inputs, targets, layout, validation_split, task, num_outputs,
               vocabulary_size=None, vocabulary=None):
    """The ``Data`` of a stream source: its spec and its ``StreamData``, no in-memory rows."""
    layout = layout if layout is not None else stream_layout()
    if len(inputs) != len(targets):
        raise ValueError(f"'{name}': {len(inputs)} input steps but {len(targets)} target steps.")
    (x_tr, y_tr), (x_va, y_va) = _split_series(inputs, targets, validation_split, name)
    stream = StreamData(name, layout, x_tr, y_tr, x_va, y_va)
    input_shape = (None, *inputs.shape[1:])
    spec = DataSpec(
        input_shape=input_shape, num_outputs=int(num_outputs), task=task,
        batch_size=layout.num_streams if layout.stateful else None,
        vocabulary_size=vocabulary_size)
    return Data(spec, name=name, stream=stream, vocabulary=vocabulary)


def _next_step(series):
    """Inputs and next-step targets of one series (language modelling / forecasting)."""
    return series[:-1], series[1:]


def _load_series(path, key, column):
    if path.endswith(".npz"):
        return files.read_npz_arrays(path, (key,))[key]
    if path.endswith(".csv"):
        return files.read_csv_column(path, column)
    return files.read_npy(path)


@gin.configurable
def stream_series(series=None, path=None, key="x", column=None, targets=None, target_key=None,
                  target_column=None, vocabulary_size=None, validation_split=0.1, layout=None,
                  name=None, target_task=None):
    """One long series (an array, an ``.npz`` array, a ``.csv`` column or a ``.npy`` file).

    Without targets the target is the next step: integer series become a language model over
    ``vocabulary_size`` ids (max id + 1 when None), float series a next-value regression. Given
    targets (same length), ``target_task`` says what they are: 'classification' (whole numbers
    from 0) or 'regression'; None: integer targets are classes and float targets regression
    values (a CSV column is always read as floats: whole-valued ones are warned of).
    """
    checks.one_of(target_task, (None, "classification", "regression"),
                  "stream_series.target_task")
    if (series is None) == (path is None):
        raise ValueError("stream_series needs exactly one of stream_series.series or "
                         "stream_series.path.")
    name = name or (os.path.splitext(os.path.basename(path))[0] if path else "series")
    values = np.asarray(series) if series is not None else _load_series(path, key, column)
    files.check_numeric(values, f"'{name}': the series")
    if len(values) == 0:
        raise ValueError(f"'{name}': the series is empty.")
    if targets is None and (target_key or target_column) and path is not None:
        targets = _load_series(path, target_key, target_column)
    is_ids = np.issubdtype(values.dtype, np.integer)
    vocab = None
    if is_ids:  # checked before the cast to int32, which would wrap ids >= 2^31
        vocab = int(vocabulary_size or values.max() + 1)
        _check_ids(values, vocab, name, "stream_series.vocabulary_size")
    values = values.astype(np.int32 if is_ids else np.float32)
    files.check_finite(values, f"'{name}': the series")  # arrays given in gin or Python too
    if values.ndim == 1 and not is_ids:
        values = values[:, None]
    if targets is None:
        inputs, targets = _next_step(values)
        if is_ids:
            return _make_data(name, inputs, targets, layout, validation_split,
                              "language_model", vocab, vocab)
        return _make_data(name, inputs, targets, layout, validation_split, "regression",
                          values.shape[-1])
    targets = files.check_numeric(targets, f"'{name}': the targets")
    if target_task == "classification":
        targets = labels.check_classes(targets, f"'{name}': the targets",
                                       row_name=lambda row: f"step {row}")
    elif target_task is None and not np.issubdtype(targets.dtype, np.integer) and targets.size \
            and np.all(np.isfinite(targets)) and np.all(targets == np.round(targets)):
        logging.warning("'%s': every target is a whole number, of a float type (a CSV column "
                        "is always read as floats), so they are trained as regression values; "
                        "set stream_series.target_task = 'classification' if they are classes, "
                        "or 'regression' to say they are values.", name)
    if target_task != "regression" and np.issubdtype(targets.dtype, np.integer):
        if targets.size and targets.min() < 0:
            raise ValueError(f"'{name}': class targets must be ids >= 0; found "
                             f"{int(targets.min())} at step {int(np.argmin(targets))}.")
        return _make_data(name, values, targets.astype(np.int64), layout, validation_split,
                          "classification", int(targets.max()) + 1, vocab)
    targets = files.check_finite(targets.astype(np.float32), f"'{name}': the targets")
    if targets.ndim == 1:
        targets = targets[:, None]
    return _make_data(name, values, targets, layout, validation_split, "regression",
                      targets.shape[-1], vocab)


def _check_ids(ids, vocabulary_size, name, binding):
    """Token ids must lie in [0, vocabulary_size): an id outside fails the embedding lookup
    mid-training on CPU (after the run directory exists) and may read another row on a GPU."""
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocabulary_size:
        bad = low if low < 0 else high
        flat = int(np.argmax(ids.reshape(-1) == bad))
        where = f"step {flat}" if ids.ndim == 1 else \
            f"index {tuple(int(i) for i in np.unravel_index(flat, ids.shape))}"
        raise ValueError(f"'{name}': id {bad} at {where} is outside [0, {vocabulary_size}) "
                         f"({binding}={vocabulary_size}); ids must be 0 ... vocabulary size - 1.")


def _text_paths(paths):
    """Files from paths, directories (their ``*.txt``, sorted) and glob patterns, in order."""
    if isinstance(paths, str):
        paths = [paths]
    found = []
    for path in paths:
        if any(c in path for c in "*?["):
            matches = paths_lib.glob_files(path)
            if not matches:
                raise FileNotFoundError(f"No file matches {path!r}.")
            found += matches
            continue
        resolved = paths_lib.resolve(path, what="Text file or directory (stream_text.paths)")
        if os.path.isdir(resolved):
            texts = paths_lib.glob_files(os.path.join(resolved, "*.txt"))
            if not texts:
                raise FileNotFoundError(f"No *.txt file in directory {path!r}.")
            found += texts
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
    text_files = _text_paths(paths)
    documents = []
    for path in text_files:
        text = files.read_text(path)
        documents.append(text.lower() if lowercase else text)
    text = separator.join(documents)
    if max_characters:
        text = text[:int(max_characters)]
    vocabulary = files.CharacterVocabulary.from_text(text)
    inputs, targets = _next_step(vocabulary.encode(text))
    name = name or os.path.basename(os.path.normpath(
        text_files[0] if len(text_files) == 1 else os.path.dirname(text_files[0])))
    return _make_data(name, inputs, targets, layout, validation_split, "language_model",
                      vocabulary.size, vocabulary.size, vocabulary)


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
        documents = list(files.read_npz_arrays(path).values())
    documents = [np.asarray(d).reshape(-1) for d in documents]
    if not any(d.size for d in documents):
        raise ValueError(f"'{name}': no documents, or only empty ones.")
    for d in documents:
        if d.size and not np.issubdtype(d.dtype, np.integer):
            raise ValueError(f"'{name}': token documents must hold integer ids, got {d.dtype}.")
    top = max(int(d.max()) for d in documents if d.size)
    if separator_id is None:
        separator_id = top + 1
    elif int(separator_id) < 0:
        raise ValueError(f"'{name}': stream_tokens.separator_id must be an id >= 0, got "
                         f"{separator_id}.")
    pieces = []
    for i, d in enumerate(documents):
        if i:
            pieces.append(np.array([separator_id]))
        pieces.append(d)
    ids = np.concatenate(pieces)
    vocab = int(vocabulary_size or max(top, separator_id) + 1)
    _check_ids(ids, vocab, name, "stream_tokens.vocabulary_size")  # before the cast to int32
    ids = ids.astype(np.int32)
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
