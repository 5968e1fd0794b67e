"""Your own data, the usual ways (docs/data.md): a function returning tf.data datasets, TFRecord
files with a feature spec, npz/csv with a fixed validation file; labels checked up front. Each
source trains end to end through the launch main.py calls (gin file -> run directory)."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from experiments import launch
from experiments.inputs import arrays, tf_sources
from tests.helpers import run_dirs

QUIET = ["train.verbose = 0", "train.epochs = 1", "measurements.enabled = []",
         "train.model_fn = @mlp", "mlp.hidden_units = (8,)"]


def _gin(tmp_path, text, name="mine.gin"):
    path = tmp_path / name
    path.write_text("include 'gin/base.gin'\ninclude 'gin/models/mlp.gin'\n" + text)
    return str(path)


def _launch(tmp_path, gin_file, bindings=()):
    return launch.launch([gin_file], QUIET + list(bindings), output_dir=str(tmp_path / "runs"),
                         print_fn=lambda *_: None)


def _result(tmp_path):
    (path,) = glob.glob(str(tmp_path / "runs" / "**" / "result.json"), recursive=True)
    with open(path) as handle:
        return json.load(handle)


def _examples(n, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype("float32"), rng.integers(0, classes, n)


def _user_module(tmp_path, monkeypatch, name, source):
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_tf_data_function_batched_into_b_and_micro_batches(tmp_path, monkeypatch):
    _user_module(tmp_path, monkeypatch, "own_data_tf_fns", (
        "import gin, numpy as np, tensorflow as tf\n"
        "@gin.configurable\n"
        "def my_datasets():\n"
        "    rng = np.random.default_rng(0)\n"
        "    x = rng.normal(size=(100, 4)).astype('float32'); y = rng.integers(0, 3, 100)\n"
        "    train = tf.data.Dataset.from_tensor_slices((x[:80], y[:80])).batch(7)  # batched\n"
        "    return train, tf.data.Dataset.from_tensor_slices((x[80:], y[80:]))\n"))
    gin_file = _gin(tmp_path, "import own_data_tf_fns\ntrain.data_fn = @tf_data\n"
                              "tf_data.dataset_fn = @my_datasets\n"
                              "train.batch_size = 20\ntrain.micro_batch_size = 10\n")
    _launch(tmp_path, gin_file)
    result = _result(tmp_path)
    assert result["batch_size"] == 20 and result["num_micro_batches"] == 2
    assert result["updates"] == 4  # 80 training examples (unbatched), B = 20
    assert result["num_train_examples"] == 80 and result["num_validation_examples"] == 20


def test_a_data_fn_returning_a_dataset_is_pointed_at_tf_data(tmp_path, monkeypatch):
    _user_module(tmp_path, monkeypatch, "own_data_raw_fns", (
        "import gin, numpy as np, tensorflow as tf\n"
        "@gin.configurable\n"
        "def raw():\n"
        "    return tf.data.Dataset.from_tensor_slices((np.zeros((8, 2)), np.zeros(8))).batch(4)\n"))
    gin_file = _gin(tmp_path, "import own_data_raw_fns\ntrain.data_fn = @raw\n"
                              "train.batch_size = 4\n")
    with pytest.raises(ValueError, match=r"train.data_fn = @tf_data.*tf_data.dataset_fn"):
        _launch(tmp_path, gin_file)
    assert run_dirs(str(tmp_path / "runs")) == []


def test_infinite_or_empty_dataset_is_refused():
    x, y = _examples(10)
    repeated = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    with pytest.raises(ValueError, match="infinite"):
        tf_sources.to_arrays(repeated, "mine")
    with pytest.raises(ValueError, match="no examples"):
        tf_sources.to_arrays(tf.data.Dataset.from_tensor_slices((x, y)).take(0), "mine")


def _write_tfrecords(path, x, y):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for features, label in zip(x, y):
            example = tf.train.Example(features=tf.train.Features(feature={
                "pixels": tf.train.Feature(float_list=tf.train.FloatList(value=features)),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
            }))
            writer.write(example.SerializeToString())


def test_tfrecord_files_with_a_feature_spec_and_validation_files(tmp_path):
    x, y = _examples(90)
    for part, rows in (("a", slice(0, 40)), ("b", slice(40, 60)), ("val", slice(60, 90))):
        _write_tfrecords(tmp_path / f"{part}.tfrecord", x[rows], y[rows])
    gin_file = _gin(tmp_path, (
        "train.data_fn = @tfrecord_files\n"
        "tfrecord_files.pattern = 'train-*.tfrecord'\n"
        "tfrecord_files.validation_pattern = 'val.tfrecord'\n"
        "tfrecord_files.features = {'pixels': ([4], 'float32'), 'label': ([], 'int64')}\n"
        "tfrecord_files.input_key = 'pixels'\ntfrecord_files.label_key = 'label'\n"
        "tfrecord_files.num_classes = 3\ntrain.batch_size = 15\n"))
    os.rename(tmp_path / "a.tfrecord", tmp_path / "train-a.tfrecord")
    os.rename(tmp_path / "b.tfrecord", tmp_path / "train-b.tfrecord")
    _launch(tmp_path, gin_file)  # the pattern is found next to the gin file
    result = _result(tmp_path)
    assert result["num_train_examples"] == 60 and result["num_validation_examples"] == 30
    assert result["updates"] == 4
    bad = tf_sources._feature_spec
    with pytest.raises(ValueError, match="feature 'x' must be"):
        bad({"x": ([4], "float16")}, "tfrecord_files")


def test_tfrecord_label_out_of_range_names_file_and_record(tmp_path):
    x, y = _examples(10)
    y[6] = 5
    _write_tfrecords(tmp_path / "d.tfrecord", x, y)
    with pytest.raises(ValueError, match=r"d.tfrecord, feature 'label', record 7: label 5 is "
                                         r"not below the number of classes \(3\)"):
        tf_sources.tfrecord_files(
            pattern=str(tmp_path / "d.tfrecord"), input_key="pixels", label_key="label",
            features={"pixels": ([4], "float32"), "label": ([], "int64")}, num_classes=3)


def test_tfrecord_spec_mismatch_names_the_failing_record(tmp_path):
    """The record whose features do not fit the spec is named by its 1-based number (record 4
    here, with three good records before it), not the one after it."""
    x, y = _examples(6)
    rows = list(x)
    rows[3] = rows[3][:3]  # 3 pixels, not 4
    _write_tfrecords(tmp_path / "e.tfrecord", rows, y)
    with pytest.raises(ValueError, match=r"e.tfrecord, record 4: does not match the feature spec"):
        tf_sources.tfrecord_files(
            pattern=str(tmp_path / "e.tfrecord"), input_key="pixels", label_key="label",
            features={"pixels": ([4], "float32"), "label": ([], "int64")}, num_classes=3)


def _write_csv(path, x, y):
    rows = ["a,b,c,d,label"] + [",".join(map(str, [*r, l])) for r, l in zip(x.tolist(), y)]
    path.write_text("\n".join(rows) + "\n")


def test_csv_with_a_fixed_validation_file(tmp_path):
    x, y = _examples(50)
    _write_csv(tmp_path / "train.csv", x[:40], y[:40])
    _write_csv(tmp_path / "val.csv", x[40:], y[40:])
    gin_file = _gin(tmp_path, (
        "train.data_fn = @csv_file\ncsv_file.path = 'train.csv'\n"
        "csv_file.validation_path = 'val.csv'\ncsv_file.label_column = 'label'\n"
        "train.batch_size = 8\n"))
    _launch(tmp_path, gin_file)
    result = _result(tmp_path)
    assert result["num_train_examples"] == 40 and result["num_validation_examples"] == 10
    with pytest.raises(ValueError, match="leave csv_file.validation_split unset"):
        arrays.csv_file(path=str(tmp_path / "train.csv"), label_column="label",
                        validation_path=str(tmp_path / "val.csv"), validation_split=0.2)


def test_npz_with_a_fixed_validation_file(tmp_path):
    x, y = _examples(30)
    np.savez(tmp_path / "train.npz", x=x[:20], y=y[:20])
    np.savez(tmp_path / "val.npz", x=x[20:], y=y[20:])
    data = arrays.npz_file(path=str(tmp_path / "train.npz"),
                           validation_path=str(tmp_path / "val.npz"))
    np.testing.assert_array_equal(data.y_validation, y[20:])
    assert data.num_train == 20 and sorted(data.y_train.tolist()) == sorted(y[:20].tolist())


def test_csv_fractional_and_negative_labels_name_file_line_and_column(tmp_path):
    x, y = _examples(6)
    lines = ["a,b,c,d,label"] + [",".join(map(str, [*r, l])) for r, l in zip(x.tolist(), y)]
    lines[4] = lines[4].rsplit(",", 1)[0] + ",1.7"
    (tmp_path / "frac.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"frac.csv, line 5, column 'label': label 1.7 is not "
                                         r"a whole number"):
        arrays.csv_file(path=str(tmp_path / "frac.csv"), label_column="label")
    lines[4] = lines[4].rsplit(",", 1)[0] + ",-1"
    (tmp_path / "neg.csv").write_text("\n".join(lines) + "\n")
    gin_file = _gin(tmp_path, "train.data_fn = @csv_file\ncsv_file.path = 'neg.csv'\n"
                              "csv_file.label_column = 'label'\ntrain.batch_size = 2\n")
    with pytest.raises(ValueError, match=r"neg.csv, line 5, column 'label': label -1.0 is "
                                         r"negative"):
        _launch(tmp_path, gin_file)
    assert run_dirs(str(tmp_path / "runs")) == []  # refused before the run directory


def test_binary_labels_from_files_are_named_by_file_line_and_column(tmp_path):
    """task='binary' checks 0/1 labels where the file is read, as classification does: the bad
    label's file, line and column (not the source's name and a 0-based row)."""
    x, y = _examples(6)
    lines = ["a,b,c,d,label"] + [",".join(map(str, [*r, l % 2])) for r, l in
                                 zip(x.tolist(), y)]
    lines[3] = lines[3].rsplit(",", 1)[0] + ",2"
    (tmp_path / "bin.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bin.csv, line 4, column 'label': label 2.0 is not "
                                         r"below the number of classes \(2\)"):
        arrays.csv_file(path=str(tmp_path / "bin.csv"), label_column="label", task="binary")
    np.savez(tmp_path / "bin.npz", x=x, y=np.array([0, 1, 1, 0, 3, 1]))
    with pytest.raises(ValueError, match=r"bin.npz, array 'y', row 4: label 3 is not below"):
        arrays.npz_file(path=str(tmp_path / "bin.npz"), task="binary")


def test_npz_labels_checked_against_num_classes(tmp_path):
    x, y = _examples(10)
    np.savez(tmp_path / "d.npz", x=x, y=y.astype("float32") + 0.5)
    with pytest.raises(ValueError, match=r"d.npz, array 'y', row 0: label \d.5 is not a whole"):
        arrays.npz_file(path=str(tmp_path / "d.npz"))
    np.savez(tmp_path / "e.npz", x=x, y=y)
    with pytest.raises(ValueError, match=r"e.npz, array 'y', row \d: label 2 is not below"):
        arrays.npz_file(path=str(tmp_path / "e.npz"), num_classes=2)


def test_a_csv_validation_file_is_read_by_the_training_files_feature_names(tmp_path):
    """The validation file's columns in another order give the same validation rows (its own
    order would swap features silently); a feature name it lacks is refused."""
    rows = np.random.default_rng(0).normal(size=(12, 3))
    labels = np.arange(12) % 2
    write = lambda name, order, rows: (tmp_path / name).write_text(
        ",".join(order) + ",label\n" + "".join(
            ",".join(f"{r['abc'.index(c)]:.4f}" for c in order) + f",{l}\n"
            for r, l in zip(rows, labels)))
    write("train.csv", "abc", rows)
    write("val.csv", "abc", rows + 10.0)  # other examples: a validation set of its own
    write("val_reordered.csv", "cab", rows + 10.0)
    same = arrays.csv_file(path=str(tmp_path / "train.csv"), label_column="label",
                           validation_path=str(tmp_path / "val.csv"))
    reordered = arrays.csv_file(path=str(tmp_path / "train.csv"), label_column="label",
                                validation_path=str(tmp_path / "val_reordered.csv"))
    np.testing.assert_array_equal(same.x_validation, reordered.x_validation)
    (tmp_path / "val_other.csv").write_text("a,b,d,label\n1,2,3,0\n")
    with pytest.raises(ValueError, match="'c'"):
        arrays.csv_file(path=str(tmp_path / "train.csv"), label_column="label",
                        validation_path=str(tmp_path / "val_other.csv"))


def test_every_source_refuses_non_finite_values_odd_binary_labels_and_one_class():
    x = np.random.default_rng(0).normal(size=(20, 3)).astype("float32")
    y = np.arange(20) % 2
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"'mine', x: NaN at index \(2, 1\)"):
        arrays.arrays(x=bad, y=y, name="mine")
    with pytest.raises(ValueError, match=r"validation, x: inf"):
        arrays.arrays(x=x, y=y, x_validation=np.full((2, 3), np.inf), y_validation=[0, 1],
                      name="mine")
    with pytest.raises(ValueError, match="y: NaN"):
        arrays.arrays(x=x, y=np.where(y == 1, np.nan, 0.5), task="regression")
    with pytest.raises(ValueError, match="is not below the number of classes \\(2\\)"):
        arrays.arrays(x=x, y=np.where(y == 1, 2, 0), task="binary")
    with pytest.raises(ValueError, match="every label is class 0"):
        arrays.arrays(x=x, y=np.zeros(20, int))
    binary = arrays.arrays(x=x, y=y, task="binary")
    assert set(np.unique(binary.y_train)) <= {0.0, 1.0} and binary.spec.num_outputs == 1


def test_text_file_takes_every_window_that_fits(tmp_path):
    (tmp_path / "t.txt").write_text("abcdefghij" * 20)  # 200 characters
    text = arrays.text_file(path=str(tmp_path / "t.txt"), sequence_length=10, stride=1,
                            validation_split=0.0)
    assert len(text.x_train) == 190  # starts 0 .. 189: the target of the last is character 199
    (tmp_path / "t65.txt").write_text("ab" * 32 + "c")
    assert len(arrays.text_file(path=str(tmp_path / "t65.txt"), sequence_length=64,
                                validation_split=0.0).x_train) == 1


def test_wrong_kinds_of_input_are_value_errors_so_main_prints_one_line():
    """A string for a column list, or a dataset_fn returning something else, is the user's
    input, not a bug: ValueError (one line from main.py), not TypeError (a traceback)."""
    from experiments.common import errors

    with pytest.raises(ValueError, match="must return a tf.data.Dataset") as raised:
        tf_sources.tf_data(dataset_fn=lambda: [1, 2, 3])
    assert errors.user_message(raised.value) is not None
    with pytest.raises(ValueError, match="list of column names") as raised:
        arrays.csv_file(path="data/none.csv", label_column="y", feature_columns="a")
    assert errors.user_message(raised.value) is not None


# -- Found by trying the product with one's own data (2026-12-05) --------------------------------

@pytest.mark.parametrize("source", [
    lambda task: arrays.arrays(x=_examples(20)[0], y=_examples(20)[1], task=task),
    lambda task: tf_sources.tf_data(
        dataset_fn=lambda: tf.data.Dataset.from_tensor_slices(_examples(20)), task=task),
])
def test_a_misspelt_task_is_refused(source):
    """'Binary' fell through to a softmax over one output: a constant 1.0, its loss normal."""
    with pytest.raises(ValueError, match="task='Binary' is not one of"):
        source("Binary")


def test_validation_targets_of_another_shape_are_refused():
    x, _ = _examples(20)
    y = np.random.default_rng(1).normal(size=20).astype("float32")
    with pytest.raises(ValueError, match=r"validation targets have shape \(2,\)"):
        arrays.arrays(x=x, y=y, task="regression", x_validation=x[:6] + 5.0,
                      y_validation=np.ones((6, 2), "float32"))
    same = arrays.arrays(x=x, y=y, task="regression", x_validation=x[:6] + 5.0,
                         y_validation=np.ones((6, 1), "float32"))  # (n,) and (n, 1) alike
    assert len(same.y_validation) == 6


def test_a_dataset_batched_with_drop_remainder_is_unbatched_when_told():
    """Its batch axis is known, so it looked like examples of shape (8, 4)."""
    x, y = _examples(64)
    batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True)
    data = tf_sources.tf_data(dataset_fn=lambda: batched, batched=True, validation_split=0.25)
    assert data.spec.input_shape == (4,)
    assert len(data.x_train) + len(data.x_validation) == 64


def test_a_validation_set_holding_training_examples_is_refused_or_warned_of(caplog):
    x, y = _examples(40)
    with pytest.raises(ValueError, match="40 of 40 validation examples"):
        arrays.arrays(x=x, y=y, x_validation=x, y_validation=y)
    other, _ = _examples(10, seed=5)
    some = np.concatenate([x[:2], other[:8]])
    with caplog.at_level("WARNING"):
        arrays.arrays(x=x, y=y, x_validation=some, y_validation=y[:10])
    assert "2 of 10 validation examples (20%)" in caplog.text


def test_inputs_that_repeat_by_design_are_warned_of_not_refused(caplog):
    """Categorical features (or a fixed grid) share every input between any two samples: a
    separate validation file of such data was refused as a leak."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=(200, 3)).astype("float32")  # 8 distinct inputs
    y = rng.integers(0, 2, size=200)
    x_va, y_va = rng.integers(0, 2, size=(50, 3)).astype("float32"), rng.integers(0, 2, 50)
    with caplog.at_level("WARNING"):
        data = arrays.arrays(x=x, y=y, x_validation=x_va, y_validation=y_va)
    assert len(data.x_validation) == 50 and "are also training examples" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        arrays.arrays(x=x, y=y, x_validation=x_va, y_validation=y_va, check_overlap=False)
    assert "training examples" not in caplog.text


def test_a_shuffled_pipeline_split_by_take_and_skip_is_caught(tmp_path, monkeypatch):
    """Shuffled before take/skip, each of the two passes reshuffles: 11 of 16 validation rows
    were also training rows, and the run trained on."""
    x, y = _examples(64)

    def split():
        shuffled = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64)
        return shuffled.skip(16), shuffled.take(16)

    with pytest.raises(ValueError, match="reshuffle_each_iteration=False"):
        tf_sources.tf_data(dataset_fn=split)


def test_a_split_that_rounds_to_no_validation_example_is_refused():
    x, y = _examples(4)
    with pytest.raises(ValueError, match="rounds to no validation example"):
        arrays.arrays(x=x, y=y, validation_split=0.1)
    assert len(arrays.arrays(x=x, y=y, validation_split=0.0).x_validation) == 0


def test_one_hot_labels_and_one_class_are_refused():
    x, y = _examples(30)
    with pytest.raises(ValueError, match="look one-hot"):
        arrays.arrays(x=x, y=np.eye(3)[y])
    with pytest.raises(ValueError, match="look one-hot"):
        arrays.arrays(x=x, y=np.eye(2)[y % 2], task="binary")
    with pytest.raises(ValueError, match="num_classes=1"):
        arrays.arrays(x=x, y=np.zeros(30, int), num_classes=1)
    # per-step class ids (tagging) and multi-label 0/1 rows are not one-hot
    per_step = np.random.default_rng(0).integers(0, 4, size=(30, 5))
    assert arrays.arrays(x=x, y=per_step).y_train.shape[1:] == (5,)
    multi = np.random.default_rng(1).integers(0, 2, size=(30, 4))
    assert arrays.arrays(x=x, y=multi, task="binary").y_train.shape[1:] == (4,)


def test_a_misspelt_file_source_binding_is_named_with_its_nearest(tmp_path):
    x, y = _examples(20)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(ValueError, match="npz_file.validaton_split is not a setting of npz_file; "
                                         "did you mean npz_file.validation_split"):
        arrays.npz_file(path=str(tmp_path / "d.npz"), validaton_split=0.5)


def test_tfrecord_input_and_label_under_one_key_are_refused():
    with pytest.raises(ValueError, match="would be given its own target"):
        tf_sources.tfrecord_files(pattern="*.tfrecord", features={"x": ([4], "float32")},
                                  input_key="x", label_key="x")


@pytest.mark.parametrize("task, loss, message", [
    # sparse cross-entropy cast regression targets in [0, 1) to class 0: loss 0, "finished"
    ("regression", "@keras.losses.SparseCategoricalCrossentropy()", "casts regression targets"),
    ("binary", "@keras.losses.CategoricalCrossentropy()", "over one output is log"),
    ("classification", "@keras.losses.BinaryCrossentropy()", "broadcasts each id"),
    # fail on the data: class ids against a one-hot loss, label 1 against one sparse output
    # (a long traceback at the first update)
    ("classification", "@keras.losses.CategoricalCrossentropy()", "cannot be computed on"),
    ("binary", "@keras.losses.SparseCategoricalCrossentropy()", "cannot be computed on"),
])
def test_a_loss_that_does_not_fit_the_task_is_refused_before_the_run_directory(
        tmp_path, task, loss, message):
    x, y = _examples(40, classes=2)
    y = y.astype("float32") / 2 if task == "regression" else y
    np.savez(tmp_path / "d.npz", x=x, y=y)
    gin_file = _gin(tmp_path, f"train.data_fn = @npz_file\nnpz_file.path = '{tmp_path}/d.npz'\n"
                              f"npz_file.task = '{task}'\ntrain.loss = {loss}\n"
                              "train.metrics = []\ntrain.batch_size = 8\n")
    with pytest.raises(ValueError, match=message):
        _launch(tmp_path, gin_file)
    assert not glob.glob(str(tmp_path / "runs" / "**" / "config.gin"), recursive=True)


def test_soft_targets_with_categorical_cross_entropy_are_not_refused(tmp_path):
    """Probability rows as regression targets train with categorical cross-entropy; the check
    refused it by the loss's name."""
    x, _ = _examples(40)
    soft = np.random.default_rng(2).dirichlet(np.ones(3), size=40).astype("float32")
    np.savez(tmp_path / "d.npz", x=x, y=soft)
    gin_file = _gin(tmp_path, f"train.data_fn = @npz_file\nnpz_file.path = '{tmp_path}/d.npz'\n"
                              "npz_file.task = 'regression'\n"
                              "train.loss = @keras.losses.CategoricalCrossentropy()\n"
                              "train.metrics = []\ntrain.batch_size = 8\n")
    _launch(tmp_path, gin_file)
    assert np.isfinite(_result(tmp_path)["final_validation"]["loss"])


# -- Found by trying the input side (2026-12-05, later) ------------------------------------------

def test_an_empty_source_says_it_has_no_examples():
    """0 rows: 'no examples' (it advised raising validation_split, or failed with NumPy's
    'zero-size array to reduction operation maximum')."""
    for split in (None, 0.0):
        with pytest.raises(ValueError, match="'arrays': no examples"):
            arrays.arrays(x=np.zeros((0, 3), "float32"), y=np.zeros(0, "int64"),
                          validation_split=split)


def test_values_that_are_not_numbers_are_refused_by_the_source(tmp_path):
    """String inputs passed the source and failed in the model with the array dumped in the
    message; a string series failed with NumPy's bare 'could not convert string to float'."""
    from experiments.inputs import stream_sources  # noqa: PLC0415

    with pytest.raises(ValueError, match=r"'arrays', x: values of type <U1 are not numbers"):
        arrays.arrays(x=np.array([["a", "b"]] * 10), y=np.arange(10) % 2)
    with pytest.raises(ValueError, match=r"'arrays', y: values of type <U3 are not numbers"):
        arrays.arrays(x=np.zeros((10, 2)), y=np.array(["cat", "dog"] * 5))
    np.save(tmp_path / "words.npy", np.array(list("abcdefgh") * 10))
    with pytest.raises(ValueError, match="'words': the series: values of type <U1 are not"):
        stream_sources.stream_series(path=str(tmp_path / "words.npy"))


def test_object_arrays_name_the_file_and_key_and_say_why(tmp_path):
    """A pickled object array: the file and key named and the cause said (the .npz gave NumPy's
    bare 'Object arrays cannot be loaded', the .npy 'it has no NumPy header')."""
    from experiments.inputs import files  # noqa: PLC0415

    ragged = np.empty(2, dtype=object)
    ragged[:] = [[1.0, 2.0], [3.0]]
    np.savez(tmp_path / "obj.npz", x=ragged, y=np.arange(2))
    np.save(tmp_path / "obj.npy", ragged, allow_pickle=True)
    with pytest.raises(files.InputFileError, match=r"obj.npz, key 'x': an object array"):
        files.read_npz_arrays(str(tmp_path / "obj.npz"))
    with pytest.raises(files.InputFileError, match=r"obj.npy: an object array"):
        files.read_npy(str(tmp_path / "obj.npy"))


def test_a_model_for_rows_on_stream_data_gets_the_streams_hint(tmp_path):
    """The MLP on stream windows failed with Keras' 'Shapes used to initialize variables must
    be fully-defined ... mlp/dense/kernel', nothing about streams; before the run directory."""
    with pytest.raises(ValueError, match=r"could not be built for 'flip_flop', stream data.*"
                                         r"Shapes used to initialize.*@stateful_stacked_lstm"):
        launch.launch(["gin/base.gin", "gin/models/mlp.gin", "gin/data/stateful_flip_flop.gin"],
                      ["flip_flop.num_steps = 4000", "train.verbose = 0"],
                      output_dir=str(tmp_path / "runs"), print_fn=lambda *_: None)
    assert not glob.glob(str(tmp_path / "runs" / "**" / "config.gin"), recursive=True)
