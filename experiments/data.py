"""Data sources and the tf.data pipelines built from them.

Every source is a gin configurable returning a ``Data``: the training and validation examples plus
a ``DataSpec`` that tells the model builder the input shape and output size. The runner turns a
``Data`` into batched ``tf.data`` pipelines (``make_pipelines``): seeded shuffling, a training batch
size (the virtual batch) and a separate evaluation batch size. Sources that must lay out their own
batches (stateful streams) hand over finished pipelines instead (``Data.pipelines``).
"""

import csv
import dataclasses
import os
from typing import Any, Callable, Optional

import gin
import keras
import numpy as np
import tensorflow as tf

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class DataSpec:
    """What a model builder needs to know about the data.

    Attributes:
      input_shape: shape of one example, without the batch axis.
      num_outputs: number of classes (classification) or target dimensions (regression).
      task: 'classification', 'binary', 'regression' or 'language_model'.
      batch_size: the fixed batch size a stateful model must be built with (None otherwise).
      vocabulary_size: for token inputs, the number of distinct ids.
    """

    input_shape: tuple
    num_outputs: int
    task: str = "classification"
    batch_size: Optional[int] = None
    vocabulary_size: Optional[int] = None


@dataclasses.dataclass
class Pipelines:
    """Finished, batched pipelines (the runner uses them as they are)."""

    train: tf.data.Dataset
    validation: Optional[tf.data.Dataset]
    steps_per_epoch: int
    validation_steps: Optional[int]
    batch_size: int
    on_epoch_begin: Optional[Callable[[int], None]] = None
    # Stateful streams (experiments/stateful_data.py): a training batch is ``windows_per_update``
    # consecutive windows of ``time_window`` steps along axis 1; the train step splits it in time.
    time_window: Optional[int] = None
    windows_per_update: int = 1


@dataclasses.dataclass
class Data:
    """Examples in memory (``x_train``...) or finished pipelines (``make`` for stateful layouts).

    ``make_batched``, when set, is called with the training and evaluation batch sizes and returns
    ``Pipelines``; sources that lay out their own batches (stateful streams) use it.
    """

    spec: DataSpec
    x_train: Any = None
    y_train: Any = None
    x_validation: Any = None
    y_validation: Any = None
    sample_weight_train: Any = None
    name: str = "data"
    make_batched: Optional[Callable[..., Pipelines]] = None

    @property
    def num_train(self):
        return len(self.y_train) if self.y_train is not None else None

    @property
    def num_validation(self):
        return 0 if self.y_validation is None else len(self.y_validation)


def check_batch_size(value, binding):
    """Raises a ValueError naming ``binding`` unless ``value`` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{binding} must be a positive integer, got {value!r}.")
    return int(value)


def make_pipelines(data, batch_size, eval_batch_size=None, seed=0, shuffle=True,
                   drop_remainder=False):
    """Batches ``data`` for training (batch ``batch_size``) and evaluation (``eval_batch_size``).

    Shuffling is seeded and reshuffled each epoch (the same order sequence for the same seed).
    """
    batch_size = check_batch_size(batch_size, "train.batch_size")
    eval_batch_size = check_batch_size(eval_batch_size or batch_size, "train.eval_batch_size")
    if data.make_batched is not None:
        return data.make_batched(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)
    if data.num_train < batch_size:
        raise ValueError(
            f"The training set of '{data.name}' has {data.num_train} examples, fewer than one "
            f"batch of train.batch_size={batch_size}.")
    train_parts = (data.x_train, data.y_train)
    if data.sample_weight_train is not None:
        train_parts += (data.sample_weight_train,)
    train = tf.data.Dataset.from_tensor_slices(train_parts)
    if shuffle:
        train = train.shuffle(data.num_train, seed=seed, reshuffle_each_iteration=True)
    train = train.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    steps = data.num_train // batch_size if drop_remainder else -(-data.num_train // batch_size)
    validation, validation_steps = None, None
    if data.num_validation:
        validation = tf.data.Dataset.from_tensor_slices((data.x_validation, data.y_validation))
        validation = validation.batch(eval_batch_size).prefetch(tf.data.AUTOTUNE)
        validation_steps = -(-data.num_validation // eval_batch_size)
    return Pipelines(train, validation, steps, validation_steps, batch_size)


# ----------------------------------------------------------------------------------------------
# Sources.

def _split(x, y, validation_split, seed):
    """Seeded shuffle-then-split of arrays into train and validation parts."""
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}.")
    order = np.random.default_rng(seed).permutation(len(y))
    num_validation = int(round(len(y) * validation_split))
    val, train = order[:num_validation], order[num_validation:]
    return x[train], y[train], x[val], y[val]


def _resolve(path):
    """Resolves a data path relative to the working directory, then to the repository root."""
    if os.path.exists(path):
        return path
    candidate = os.path.join(REPO_ROOT, path)
    if os.path.exists(candidate):
        return candidate
    raise FileNotFoundError(f"Data file not found: {path!r} (also looked in {REPO_ROOT}).")


def _spec_for(x, y, task, num_outputs=None):
    if num_outputs is None:
        if task == "classification":
            num_outputs = int(np.max(y)) + 1
        elif task == "binary":
            num_outputs = 1
        else:
            num_outputs = 1 if y.ndim == 1 else int(y.shape[-1])
    return DataSpec(input_shape=tuple(x.shape[1:]), num_outputs=num_outputs, task=task)


@gin.configurable
def arrays(x=gin.REQUIRED, y=gin.REQUIRED, validation_split=0.2, task="classification",
           scale=1.0, flatten=False, split_seed=0, name="arrays", dtype="float32"):
    """In-memory arrays; ``scale`` divides the inputs, ``flatten`` makes one vector per example."""
    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"'{name}': x has {len(x)} rows but y has {len(y)}.")
    if np.issubdtype(x.dtype, np.number) and scale != 1.0:
        x = x.astype(dtype) / scale
    elif np.issubdtype(x.dtype, np.floating) or scale != 1.0:
        x = x.astype(dtype)
    if flatten:
        x = x.reshape(len(x), -1)
    if task == "regression":
        y = y.astype(dtype)
    elif task == "binary":
        y = y.astype(dtype).reshape(len(y), -1)
    x_tr, y_tr, x_va, y_va = _split(x, y, validation_split, split_seed)
    spec = _spec_for(x, y, task)
    return Data(spec, x_tr, y_tr, x_va, y_va, name=name)


@gin.configurable
def npz_file(path=gin.REQUIRED, x_key="x", y_key="y", **kwargs):
    """A ``.npz`` file holding inputs under ``x_key`` and targets under ``y_key``."""
    with np.load(_resolve(path)) as archive:
        missing = [k for k in (x_key, y_key) if k not in archive.files]
        if missing:
            raise KeyError(f"{path}: no array named {missing} (has {archive.files}).")
        x, y = archive[x_key], archive[y_key]
    kwargs.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return arrays(x=x, y=y, **kwargs)


@gin.configurable
def csv_file(path=gin.REQUIRED, label_column=gin.REQUIRED, feature_columns=None, **kwargs):
    """A ``.csv`` file with a header row; numeric feature columns and one label column."""
    with open(_resolve(path), newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path}: no data rows.")
    header = list(rows[0].keys())
    if label_column not in header:
        raise KeyError(f"{path}: no column {label_column!r} (columns: {header}).")
    feature_columns = feature_columns or [c for c in header if c != label_column]
    x = np.array([[float(r[c]) for c in feature_columns] for r in rows], dtype="float32")
    y = np.array([float(r[label_column]) for r in rows])
    if kwargs.get("task", "classification") == "classification":
        y = y.astype(np.int64)
    kwargs.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return arrays(x=x, y=y, **kwargs)


@gin.configurable
def digits(path="data/digits.npz", flatten=True, validation_split=0.2, split_seed=0):
    """The UCI handwritten digits shipped in ``data/`` (1797 images, 8×8, 10 classes)."""
    return npz_file(path=path, scale=16.0, flatten=flatten, validation_split=validation_split,
                    split_seed=split_seed, name="digits")


def keras_cache_dir():
    """Where ``keras.datasets`` caches files: ``$KERAS_HOME`` or ``~/.keras``."""
    return os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


@gin.configurable
def keras_dataset(name=gin.REQUIRED, flatten=False, num_words=10000, sequence_length=200,
                  max_train_examples=None):
    """mnist, fashion_mnist, cifar10 or imdb through ``keras.datasets`` (cached or downloaded).

    Keras keeps the files under ``~/.keras/datasets`` (or ``$KERAS_HOME/datasets``); the official
    test split is the validation set. imdb reviews are padded/truncated to ``sequence_length``.
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
    try:
        loaded = module.load_data(num_words=num_words) if name == "imdb" else module.load_data()
    except Exception as error:  # no cache and no network: say where Keras looked
        raise FileNotFoundError(
            f"keras.datasets could not load {name!r}: it is neither cached under "
            f"{os.path.join(keras_cache_dir(), 'datasets')} nor downloadable here "
            f"({type(error).__name__}: {error}).") from error
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
def synthetic_classification(num_examples=1024, input_shape=(20,), num_classes=4, noise=0.5,
                             seed=0, validation_split=0.2):
    """Gaussian inputs labelled by a fixed random linear teacher plus noise (learnable, seeded)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_examples, *input_shape)).astype("float32")
    teacher = rng.normal(size=(int(np.prod(input_shape)), num_classes))
    logits = x.reshape(num_examples, -1) @ teacher + noise * rng.normal(size=(num_examples, num_classes))
    y = np.argmax(logits, axis=1).astype(np.int64)
    data = arrays(x=x, y=y, validation_split=validation_split, split_seed=seed,
                  name="synthetic_classification")
    data.spec.num_outputs = num_classes
    return data


@gin.configurable
def synthetic_binary(num_examples=1024, input_shape=(20,), noise=0.5, seed=0,
                     validation_split=0.2):
    """Two classes from a random linear teacher; targets shaped (n, 1) for a sigmoid output."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_examples, *input_shape)).astype("float32")
    w = rng.normal(size=(int(np.prod(input_shape)),))
    y = ((x.reshape(num_examples, -1) @ w + noise * rng.normal(size=num_examples)) > 0)
    return arrays(x=x, y=y.astype("float32"), task="binary", validation_split=validation_split,
                  split_seed=seed, name="synthetic_binary")


@gin.configurable
def synthetic_regression(num_examples=1024, input_dim=10, output_dim=1, noise=0.1, seed=0,
                         validation_split=0.2):
    """y = x W + noise with Gaussian x: the per-example gradient statistics have closed forms."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_examples, input_dim)).astype("float32")
    w = rng.normal(size=(input_dim, output_dim))
    y = (x @ w + noise * rng.normal(size=(num_examples, output_dim))).astype("float32")
    return arrays(x=x, y=y, task="regression", validation_split=validation_split,
                  split_seed=seed, name="synthetic_regression")


@gin.configurable
def synthetic_sequences(num_examples=512, sequence_length=20, num_features=8, num_classes=4,
                        seed=0, validation_split=0.2):
    """Sequences whose class is the sign pattern of a running sum: needs memory over time."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_examples, sequence_length, num_features)).astype("float32")
    summary = x[:, : sequence_length // 2, :2].sum(axis=1)
    y = ((summary[:, 0] > 0).astype(np.int64) * 2 + (summary[:, 1] > 0)) % num_classes
    data = arrays(x=x, y=y, validation_split=validation_split, split_seed=seed,
                  name="synthetic_sequences")
    data.spec.num_outputs = num_classes
    return data


def read_text(path):
    with open(_resolve(path), encoding="utf-8", errors="replace") as handle:
        return handle.read()


@gin.configurable
def text_file(path=gin.REQUIRED, sequence_length=64, stride=None, max_characters=None,
              validation_split=0.1, seed=0):
    """Character-level windows of a text file; the target is the next character.

    The vocabulary is the sorted set of characters in the file, so ids are stable for a file.
    """
    text = read_text(path)
    if max_characters:
        text = text[:max_characters]
    vocabulary = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocabulary)}
    ids = np.fromiter((lookup[c] for c in text), dtype=np.int32, count=len(text))
    stride = stride or sequence_length
    starts = np.arange(0, len(ids) - sequence_length - 1, stride)
    if len(starts) == 0:
        raise ValueError(
            f"{path}: {len(ids)} characters are too few for one window of {sequence_length}.")
    x = np.stack([ids[s:s + sequence_length] for s in starts])
    y = ids[starts + sequence_length].astype(np.int64)
    x_tr, y_tr, x_va, y_va = _split(x, y, validation_split, seed)
    spec = DataSpec((sequence_length,), len(vocabulary), task="classification",
                    vocabulary_size=len(vocabulary))
    return Data(spec, x_tr, y_tr, x_va, y_va, name=os.path.basename(path))
