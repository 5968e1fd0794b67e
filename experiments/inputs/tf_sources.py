"""Sources from TensorFlow's own formats: a user function returning ``tf.data`` datasets of
examples (``tf_data``), and TFRecord files of ``tf.train.Example`` with a feature spec
(``tfrecord_files``).

Both hand batchlab examples, never batches: batchlab cuts them into updates of B rows and
micro-batches of b (``pipelines``), in an order that is a function of the seed and the epoch, so
that a killed run resumes on exactly the batches it would have read. For that the examples are read
once into memory when the run starts (a finite dataset that fits in memory; a larger one needs a
stream source). A dataset whose every component has an unknown leading dimension is taken as
already batched and unbatched first; one batched with ``drop_remainder=True`` has a known one,
which nothing tells from an example's own first axis: ``tf_data.batched = True`` says so. The
data contract: docs/data.md.
"""

import gin
import numpy as np
import tensorflow as tf

from experiments.common import paths
from experiments.inputs import arrays as arrays_lib

_READ_BATCH = 4096  # examples copied to the host at a time


def _is_batched(spec):
    parts = tf.nest.flatten(spec)
    return all(len(p.shape) >= 1 and p.shape[0] is None for p in parts)


def to_arrays(dataset, what, batched=None):
    """The examples of a finite ``dataset`` of (x, y) as NumPy arrays (x, y); ValueError naming
    ``what`` for an infinite, empty or differently shaped dataset, or one with sample weights.
    ``batched``: whether its elements are batches (None: when every component's leading
    dimension is unknown)."""
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(f"{what}: expected a tf.data.Dataset, got {type(dataset).__name__}.")
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(f"{what}: the dataset is infinite (a .repeat()?); batchlab repeats "
                         "epochs itself: hand over one pass over the examples.")
    if batched or (batched is None and _is_batched(dataset.element_spec)):
        dataset = dataset.unbatch()
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(f"{what}: elements must be (x, y) examples, got {spec}.")
    if len(spec) == 3:
        raise ValueError(f"{what}: per-example sample weights are not supported from tf.data; "
                         "hand over (x, y).")
    if not isinstance(spec[0], tf.TensorSpec) or not isinstance(spec[1], tf.TensorSpec):
        raise ValueError(f"{what}: x and y must each be one tensor (a dict or tuple of inputs is "
                         f"not supported from tf.data), got {spec}.")
    xs, ys = [], []
    for x, y in dataset.batch(_READ_BATCH).as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ValueError(f"{what}: the dataset has no examples.")
    return np.concatenate(xs), np.concatenate(ys)


@gin.configurable
def tf_data(dataset_fn=gin.REQUIRED, task="classification", num_classes=None,
            validation_split=None, split_seed=0, name=None, scale=1.0, flatten=False,
            batched=None, check_overlap=True):
    """Examples from ``dataset_fn()``, a user function returning ``(train, validation)``
    datasets of (x, y) examples, or one training dataset (then ``validation_split`` of it, 0.2
    by default, is held out with ``split_seed``). Classification labels are checked as for
    arrays (whole numbers in [0, num_classes)). ``batched``: True for datasets of batches
    (needed for ``.batch(..., drop_remainder=True)``, whose batch axis is known), False for
    datasets of examples, None to decide from an unknown leading dimension. ``check_overlap``:
    refuse (or warn of) a validation dataset holding training examples (as ``arrays``)."""
    arrays_lib.check_task(task, "tf_data")
    made = dataset_fn()
    if isinstance(made, tf.data.Dataset):
        train, validation = made, None
    elif isinstance(made, (tuple, list)) and len(made) == 2:
        train, validation = made
    else:
        raise ValueError(f"tf_data.dataset_fn must return a tf.data.Dataset or a pair (train, "
                         f"validation) of them, got {type(made).__name__}.")
    name = name or getattr(dataset_fn, "__name__", "tf_data")
    x, y = to_arrays(train, f"'{name}' training dataset", batched)
    kwargs = {}
    if validation is not None:
        kwargs["x_validation"], kwargs["y_validation"] = to_arrays(
            validation, f"'{name}' validation dataset", batched)
    return arrays_lib.arrays(x=x, y=y, validation_split=validation_split, task=task,
                             split_seed=split_seed, name=name, num_classes=num_classes,
                             scale=scale, flatten=flatten, check_overlap=check_overlap, **kwargs)


_DTYPES = {"float32": tf.float32, "float": tf.float32, "int64": tf.int64, "int": tf.int64,
           "string": tf.string, "bytes": tf.string}


def _feature_spec(features, where):
    """{name: tf.io.FixedLenFeature} of a gin-friendly spec {name: (shape, dtype)}."""
    if not isinstance(features, dict) or not features:
        raise ValueError(f"{where}: features must be a dict {{name: (shape, dtype)}}, e.g. "
                         "{'image': ([64], 'float32'), 'label': ([], 'int64')}.")
    spec = {}
    for key, value in features.items():
        try:
            shape, dtype = value
            spec[key] = tf.io.FixedLenFeature(list(shape), _DTYPES[str(dtype)])
        except (TypeError, ValueError, KeyError):
            raise ValueError(f"{where}: feature {key!r} must be (shape, dtype) with dtype one of "
                             f"{sorted(_DTYPES)}, got {value!r}.") from None
    return spec


def _read_tfrecords(pattern, spec, input_key, label_key, what):
    files = paths.glob_files(pattern)
    if not files:
        looked = ", ".join(paths.search_dirs())
        raise FileNotFoundError(f"{what}: no TFRecord file matches {pattern!r} (also looked in "
                                f"{looked}).")
    xs, ys = [], []
    for path in files:
        done = 0  # records of this file read and parsed: the failing one is the next
        try:
            for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
                example = tf.io.parse_single_example(record, spec)
                xs.append(example[input_key].numpy())
                ys.append(example[label_key].numpy())
                done += 1
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as error:
            message = getattr(error, "message", str(error)).splitlines()[0]
            raise ValueError(f"{path}, record {done + 1}: does not match the feature spec "
                             f"({message}).") from None
    if not xs:
        raise ValueError(f"{what}: the files matching {pattern!r} hold no records.")
    return files, np.stack(xs), np.stack(ys)


@gin.configurable
def tfrecord_files(pattern=gin.REQUIRED, features=gin.REQUIRED, input_key="x", label_key="y",
                   validation_pattern=None, task="classification", num_classes=None,
                   validation_split=None, split_seed=0, name=None, scale=1.0, flatten=False):
    """``tf.train.Example`` records of the files matching ``pattern`` (a glob, looked up as
    data paths are), parsed with ``features`` ({name: (shape, dtype)}: fixed-length features);
    ``input_key`` is the model input, ``label_key`` the target. ``validation_pattern``: files
    of the validation set (else a ``validation_split`` of the examples, 0.2 by default)."""
    arrays_lib.check_task(task, "tfrecord_files")
    spec = _feature_spec(features, "tfrecord_files")
    if input_key == label_key:
        raise ValueError(f"tfrecord_files: input_key and label_key are both {input_key!r}; the "
                         "model would be given its own target.")
    for key in (input_key, label_key):
        if key not in spec:
            raise ValueError(f"tfrecord_files: {key!r} is not in features "
                             f"({', '.join(map(repr, spec))}).")
    name = name or "tfrecords"
    files, x, y = _read_tfrecords(pattern, spec, input_key, label_key, "tfrecord_files")
    kwargs = {}
    classes = 2 if task == "binary" else num_classes
    if task in arrays_lib.LABELLED_TASKS:
        y = _checked_labels(files, y, label_key, classes)
    if validation_pattern is not None:
        val_files, x_va, y_va = _read_tfrecords(validation_pattern, spec, input_key, label_key,
                                                "tfrecord_files validation")
        if task in arrays_lib.LABELLED_TASKS:
            y_va = _checked_labels(val_files, y_va, label_key, classes)
        kwargs["x_validation"], kwargs["y_validation"] = x_va, y_va
    return arrays_lib.arrays(x=x, y=y, validation_split=validation_split, task=task,
                             split_seed=split_seed, name=name, num_classes=num_classes,
                             scale=scale, flatten=flatten, **kwargs)


def _checked_labels(files, y, label_key, num_classes):
    from experiments.inputs import labels  # noqa: PLC0415
    where = files[0] if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"
    return labels.check_classes(y, f"{where}, feature {label_key!r}", num_classes,
                                lambda row: f"record {row + 1}")
