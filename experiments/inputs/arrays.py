"""Sources of examples held in memory: arrays, npz and csv files, text windows, Keras datasets.

Every source is a gin configurable returning a ``dataset.Data``: the training and validation
examples plus a ``DataSpec`` that tells the model builder the input shape and output size. Files
are read strictly (``files``): a ragged or non-numeric CSV row, NaN or infinity is refused with the
file, line and column. Paths are found as given, next to the gin files, or in the repository
(``experiments.common.paths``). Synthetic sources live in ``synthetic``, streams in ``streams``.
"""

import difflib
import inspect
import os

import gin
import keras
import numpy as np
from absl import logging

from experiments.common import checks, paths
from experiments.inputs import files, keras_cache, labels
from experiments.inputs.dataset import Data, DataSpec


def _split(x, y, validation_split, seed, name="validation_split"):
    """Seeded shuffle-then-split of arrays into train and validation parts; ``name``: the
    binding the fraction came from, for its error."""
    checks.fraction(validation_split, name)
    order = np.random.default_rng(seed).permutation(len(y))
    num_validation = int(round(len(y) * validation_split))
    if validation_split and num_validation == 0:
        raise ValueError(f"{name}={validation_split} of {len(y)} examples rounds to no validation "
                         "example; raise it, or set it to 0 to train without validation.")
    val, train = order[:num_validation], order[num_validation:]
    return x[train], y[train], x[val], y[val]


def _spec_for(x, y, task, num_outputs=None):
    if num_outputs is None:
        if task == "classification":
            num_outputs = int(np.max(y)) + 1
        elif task == "binary":
            num_outputs = 1
        else:
            num_outputs = 1 if y.ndim == 1 else int(y.shape[-1])
    return DataSpec(input_shape=tuple(x.shape[1:]), num_outputs=num_outputs, task=task)


def _validation_split(validation_split, has_validation_set, name):
    """The fraction of the examples held out: 0.2 by default, 0 beside a validation set (a fixed
    validation file or arrays); a fraction as well as a validation set is refused."""
    if validation_split is None:
        return 0.0 if has_validation_set else 0.2
    if has_validation_set and validation_split:
        raise ValueError(f"'{name}': a validation set is given (validation_path or x_validation), "
                         f"so validation_split={validation_split} would hold out a second one; "
                         "leave validation_split unset.")
    return validation_split


# What an in-memory source's targets are (stream sources add 'language_model').
TASKS = ("classification", "binary", "regression")


def _one_hot(y):
    """Whether labels are one-hot rows: shape (n, C > 1), every value 0 or 1, each row one 1 (a
    row of per-step class ids, or multi-label 0/1 targets, is not)."""
    if y.ndim != 2 or y.shape[1] < 2 or not np.issubdtype(y.dtype, np.number):
        return False
    return bool(np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1))


def check_task(task, where):
    """``task`` if it is one of ``TASKS``; a misspelt one ('Binary') would build a softmax over
    one output, whose constant 1.0 trains to nothing while its loss looks normal."""
    if task not in TASKS:
        raise ValueError(f"{where}: task={task!r} is not one of {', '.join(map(repr, TASKS))} "
                         "(the source's task binding, e.g. npz_file.task).")
    return task


def _prepare(x, y, task, scale, flatten, dtype, where, num_classes, row_name=None):
    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) == 0:  # before the split, whose advice (raise it) could not help
        raise ValueError(f"{where}: no examples (x has 0 rows).")
    files.check_numeric(x, f"{where}, x")
    files.check_numeric(y, f"{where}, y")
    if task in ("classification", "binary") and _one_hot(y):
        raise ValueError(
            f"{where}: labels of shape {y.shape} look one-hot (or multi-label); a {task} "
            "source takes class ids, one per example: give y.argmax(axis=1), or task="
            "'regression' for targets that are vectors.")
    if len(x) != len(y):
        raise ValueError(f"{where}: x has {len(x)} rows but y has {len(y)}.")
    if np.issubdtype(x.dtype, np.number) and scale != 1.0:
        x = x.astype(dtype) / scale
    elif np.issubdtype(x.dtype, np.floating) or scale != 1.0:
        x = x.astype(dtype)
    if flatten:
        x = x.reshape(len(x), -1)
    # Every source ends here: a NaN or inf input would give finite, wrong metrics (a NaN row of
    # the validation set does not make its mean loss NaN).
    files.check_finite(x, f"{where}, x")
    if task == "classification":
        y = labels.check_classes(y, where, num_classes, row_name)
    elif task == "regression":
        y = files.check_finite(y.astype(dtype), f"{where}, y")
    elif task == "binary":
        y = labels.check_classes(y, where, 2, row_name).astype(dtype).reshape(len(y), -1)
    return x, y


@gin.configurable
def arrays(x=gin.REQUIRED, y=gin.REQUIRED, validation_split=None, task="classification",
           scale=1.0, flatten=False, split_seed=0, name="arrays", dtype="float32",
           x_validation=None, y_validation=None, num_classes=None, check_overlap=True):
    """In-memory arrays; ``scale`` divides the inputs, ``flatten`` makes one vector per example.

    Validation: ``x_validation``/``y_validation`` when given (a fixed set), else a seeded
    ``validation_split`` of the examples (default 0.2). Classification labels must be class ids
    in [0, ``num_classes``) (default: up to the largest label); each bad one is named by row.
    ``check_overlap``: refuse (or warn of) a validation set holding training examples
    (``_check_no_leak``).
    """
    check_task(task, f"'{name}'")
    if task == "classification" and num_classes is not None and num_classes < 2:
        raise ValueError(f"'{name}': num_classes={num_classes}; a classifier needs two classes "
                         "or more (task='binary' for 0/1 labels).")
    has_validation = x_validation is not None or y_validation is not None
    if has_validation and (x_validation is None or y_validation is None):
        raise ValueError(f"'{name}': give both x_validation and y_validation, or neither.")
    split = _validation_split(validation_split, has_validation, name)
    x, y = _prepare(x, y, task, scale, flatten, dtype, f"'{name}'", num_classes)
    if has_validation:
        x_va, y_va = _prepare(x_validation, y_validation, task, scale, flatten, dtype,
                              f"'{name}' validation", num_classes)
        if x_va.shape[1:] != x.shape[1:]:
            raise ValueError(f"'{name}': validation examples have shape {x_va.shape[1:]}, "
                             f"training examples {x.shape[1:]}.")
        if _target_shape(y_va) != _target_shape(y):
            raise ValueError(f"'{name}': validation targets have shape {y_va.shape[1:]}, "
                             f"training targets {y.shape[1:]} (the loss would broadcast them).")
        if check_overlap:
            _check_no_leak(x, y, x_va, y_va, name)
        x_tr, y_tr, _, _ = _split(x, y, split, split_seed, f"'{name}' validation_split")
    else:
        x_tr, y_tr, x_va, y_va = _split(x, y, split, split_seed, f"'{name}' validation_split")
    num_outputs = num_classes
    if task == "classification" and num_outputs is None and y.ndim == 1:
        num_outputs = int(max(np.max(y), np.max(y_va) if len(y_va) else 0)) + 1
        if num_outputs < 2:
            raise ValueError(f"'{name}': every label is class 0, so a classifier would have one "
                             "output and nothing to learn; set num_classes, or use "
                             "task='binary' for 0/1 labels.")
    spec = _spec_for(x, y, task, num_outputs)
    return Data(spec, x_tr, y_tr, x_va, y_va, name=name)


def _target_shape(y):
    """One example's target shape, a scalar and a one-element vector alike."""
    shape = tuple(y.shape[1:])
    return () if shape == (1,) else shape


# A separate validation set is refused as the training examples given again when more than this
# share of its examples (inputs and target) are training examples, and the training inputs are
# mostly distinct (at least ``DISTINCT_INPUTS`` of them): data whose inputs repeat by design
# (categorical features, a fixed grid of doses) shares inputs between any two samples of it,
# so there any overlap is only warned of.
LEAK_REFUSED = 0.5
DISTINCT_INPUTS = 0.9
_HASH_ROWS = 4096  # rows made contiguous at a time


def _row_keys(x, y):
    """The bytes of each example's input and target, ``_HASH_ROWS`` rows at a time (an array
    that is not C-contiguous is not copied whole)."""
    for start in range(0, len(x), _HASH_ROWS):
        xs = np.ascontiguousarray(x[start:start + _HASH_ROWS])
        xs = xs.reshape(len(xs), -1)
        ys = np.ascontiguousarray(y[start:start + _HASH_ROWS]).reshape(len(xs), -1)
        for row_x, row_y in zip(xs, ys):
            yield row_x.tobytes(), row_y.tobytes()


def _check_no_leak(x, y, x_validation, y_validation, name):
    """Counts the validation examples that are also training examples (input and target, byte
    for byte): a validation file that is a training file, or a tf.data pipeline whose shuffle
    reshuffles between the two passes that take and skip from it, would grade the model on what
    it trained on. Refused above ``LEAK_REFUSED`` of the validation set where the training inputs
    are mostly distinct, warned of otherwise."""
    if not len(x_validation) or not len(x):
        return
    validation = {}
    for key in _row_keys(x_validation, y_validation):
        validation[key] = validation.get(key, 0) + 1
    found = {key for key in _row_keys(x, y) if key in validation}
    if not found:
        return
    shared = sum(validation[key] for key in found)
    share = shared / len(x_validation)
    message = (f"'{name}': {shared} of {len(x_validation)} validation examples ({share:.0%}) "
               "are also training examples (the same input and target). The same examples "
               "given twice: a validation file that is a training file, or a tf.data pipeline "
               "shuffled before take/skip, which reshuffles on each pass (shuffle(..., "
               "reshuffle_each_iteration=False), or split before shuffling). If the repeats are "
               "real, set the source's check_overlap = False.")
    if share > LEAK_REFUSED and \
            len({hash(key[0]) for key in _row_keys(x, y)}) >= DISTINCT_INPUTS * len(x):
        raise ValueError(message)
    logging.warning(message)


def _check_source_bindings(source, kwargs):
    """Bindings a file source passes on to ``arrays``, checked in the source's own name (a
    misspelt one was reported as an argument of ``arrays``, with no suggestion)."""
    known = set(inspect.signature(arrays).parameters) - {"x", "y", "x_validation",
                                                          "y_validation"}
    for key in kwargs:
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {source}.{near[0]}?" if near else \
                f"; it takes {', '.join(sorted(known))}."
            raise ValueError(f"{source}.{key} is not a setting of {source}{hint}")


def _one_validation_set(source, validation_path, kwargs):
    """A validation file and a validation fraction of the same source are refused, in the
    source's own binding names."""
    split = kwargs.get("validation_split")
    if validation_path is not None and split:
        raise ValueError(f"{source}.validation_path is set, so {source}.validation_split={split} "
                         f"would hold out a second validation set; leave "
                         f"{source}.validation_split unset.")


# Tasks whose targets are class ids, checked where a file is read so that a bad one is named by
# file and line (``_prepare`` checks them again, by row, for in-memory arrays).
LABELLED_TASKS = ("classification", "binary")


def _classes(task, num_classes):
    """The number of classes a task's labels must stay below: 2 for binary (0/1) labels."""
    return 2 if task == "binary" else num_classes


def _npz_part(path, x_key, y_key, task, num_classes):
    loaded = files.read_npz_arrays(path, (x_key, y_key))
    x, y = loaded[x_key], loaded[y_key]
    if task in LABELLED_TASKS:  # named as the file's other errors name it: the path found
        where = paths.resolve(path, what="NumPy archive")
        y = labels.check_classes(y, f"{where}, array {y_key!r}", _classes(task, num_classes))
    return x, y


@gin.configurable
def npz_file(path=gin.REQUIRED, x_key="x", y_key="y", validation_path=None, **kwargs):
    """A ``.npz`` file holding inputs under ``x_key`` and targets under ``y_key``; with
    ``validation_path``, a second such file is the validation set (no split)."""
    _check_source_bindings("npz_file", kwargs)
    task, num_classes = kwargs.get("task", "classification"), kwargs.get("num_classes")
    check_task(task, "npz_file")
    _one_validation_set("npz_file", validation_path, kwargs)
    x, y = _npz_part(path, x_key, y_key, task, num_classes)
    if validation_path is not None:
        kwargs["x_validation"], kwargs["y_validation"] = _npz_part(
            validation_path, x_key, y_key, task, num_classes)
    kwargs.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return arrays(x=x, y=y, **kwargs)


def _csv_part(path, label_column, feature_columns, task, num_classes):
    x, y, lines, resolved = files.read_csv_columns(path, label_column, feature_columns,
                                                   with_lines=True)
    if task in LABELLED_TASKS:
        y = labels.check_classes(y, f"{resolved}", _classes(task, num_classes),
                                 lambda row: f"line {lines[row]}, column {label_column!r}")
    return x, y


@gin.configurable
def csv_file(path=gin.REQUIRED, label_column=gin.REQUIRED, feature_columns=None,
             validation_path=None, **kwargs):
    """A ``.csv`` file with a header row; numeric feature columns and one label column. With
    ``validation_path``, a second such file (same columns) is the validation set (no split).
    Classification labels must be whole numbers 0 .. num_classes - 1; the first that is not is
    named by file, line and column."""
    _check_source_bindings("csv_file", kwargs)
    task, num_classes = kwargs.get("task", "classification"), kwargs.get("num_classes")
    check_task(task, "csv_file")
    _one_validation_set("csv_file", validation_path, kwargs)
    if feature_columns is None and validation_path is not None:
        # The training file's order names the features: the validation file is read by those
        # names (its own order may differ; a missing one is refused).
        feature_columns = files.default_feature_columns(path, label_column)
    x, y = _csv_part(path, label_column, feature_columns, task, num_classes)
    if validation_path is not None:
        kwargs["x_validation"], kwargs["y_validation"] = _csv_part(
            validation_path, label_column, feature_columns, task, num_classes)
    kwargs.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return arrays(x=x, y=y, **kwargs)


@gin.configurable
def digits(path="data/digits.npz", flatten=True, validation_split=0.2, split_seed=0):
    """The UCI handwritten digits shipped in ``data/`` (1797 images, 8×8, 10 classes)."""
    return npz_file(path=path, scale=16.0, flatten=flatten, validation_split=validation_split,
                    split_seed=split_seed, name="digits")


@gin.configurable
def keras_dataset(name=gin.REQUIRED, flatten=False, num_words=10000, sequence_length=200,
                  max_train_examples=None):
    """mnist, fashion_mnist, cifar10 or imdb through ``keras.datasets`` (cached or downloaded).

    Keras keeps the files under ``~/.keras/datasets`` (or ``$KERAS_HOME/datasets``); the official
    test split is the validation set. imdb reviews are padded/truncated to ``sequence_length``.
    A cached file is hashed first (``keras_cache``): Keras would delete one that does not match
    when it cannot download it again. Without internet: docs/data.md, Keras datasets offline.
    """
    loaders = {
        "mnist": (keras.datasets.mnist, 255.0),
        "fashion_mnist": (keras.datasets.fashion_mnist, 255.0),
        "cifar10": (keras.datasets.cifar10, 255.0),
        "imdb": (keras.datasets.imdb, None),
    }
    if name not in loaders:
        raise ValueError(f"Unknown keras dataset {name!r}; choose one of {sorted(loaders)}.")
    module, scale = loaders[name]
    keras_cache.check_cached(name)  # before Keras, which deletes a mismatched file it cannot fetch
    present_before = keras_cache.present(name)
    try:
        loaded = module.load_data(num_words=num_words) if name == "imdb" else module.load_data()
    except Exception as error:  # a file to place (named, with its URL) or one that Keras read
        raise keras_cache.load_error(name, error, present_before) from error
    if name == "imdb":
        (x_tr, y_tr), (x_va, y_va) = loaded
        pad = keras.utils.pad_sequences
        x_tr = pad(x_tr, maxlen=sequence_length)
        x_va = pad(x_va, maxlen=sequence_length)
        y_tr, y_va = y_tr.astype("float32")[:, None], y_va.astype("float32")[:, None]
        spec = DataSpec((sequence_length,), 1, task="binary", vocabulary_size=num_words)
    else:
        (x_tr, y_tr), (x_va, y_va) = loaded
        y_tr, y_va = y_tr.reshape(-1).astype(np.int64), y_va.reshape(-1).astype(np.int64)
        x_tr, x_va = x_tr.astype("float32") / scale, x_va.astype("float32") / scale
        if x_tr.ndim == 3:  # grey images get a channel axis
            x_tr, x_va = x_tr[..., None], x_va[..., None]
        if flatten:
            x_tr, x_va = x_tr.reshape(len(x_tr), -1), x_va.reshape(len(x_va), -1)
        spec = DataSpec(tuple(x_tr.shape[1:]), 10)
    if max_train_examples:
        x_tr, y_tr = x_tr[:max_train_examples], y_tr[:max_train_examples]
    return Data(spec, x_tr, y_tr, x_va, y_va, name=name)


@gin.configurable
def text_file(path=gin.REQUIRED, sequence_length=64, stride=None, max_characters=None,
              validation_split=0.1, seed=0):
    """Character-level windows of a text file; the target is the next character.

    The vocabulary is the sorted set of characters in the file, so ids are stable for a file.
    Every window that fits is taken (starts 0, stride, ... up to len - sequence_length - 1).
    ``validation_split`` (0.1 here) holds out a seeded random share of the windows, ``seed``
    seeds it: with ``stride`` below ``sequence_length`` windows overlap, and validation windows
    then share text with training ones (keep the default stride, or take ``stream_text``,
    which holds out the end of the text).
    """
    text = files.read_text(path)
    if max_characters:
        text = text[:max_characters]
    vocabulary = files.CharacterVocabulary.from_text(text)
    ids = vocabulary.encode(text)
    stride = stride or sequence_length
    starts = np.arange(0, len(ids) - sequence_length, stride)  # the target at s + length
    if len(starts) == 0:
        raise ValueError(
            f"{path}: {len(ids)} characters are too few for one window of {sequence_length}.")
    x = np.stack([ids[s:s + sequence_length] for s in starts])
    y = ids[starts + sequence_length].astype(np.int64)
    x_tr, y_tr, x_va, y_va = _split(x, y, validation_split, seed, "text_file.validation_split")
    spec = DataSpec((sequence_length,), vocabulary.size, task="classification",
                    vocabulary_size=vocabulary.size)
    return Data(spec, x_tr, y_tr, x_va, y_va, name=os.path.basename(path),
                vocabulary=vocabulary)
