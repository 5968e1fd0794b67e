"""Data sources and pipelines: files, splits, seeded shuffling, batch sizes, keras.datasets cache."""

import numpy as np
import pytest

from experiments.inputs import arrays as data
from experiments.inputs import keras_cache
from experiments.inputs import pipelines as pipelines_lib
from experiments.inputs import synthetic


def test_digits_ships_with_the_repo_and_splits_reproducibly():
    a, b = data.digits(), data.digits()
    assert a.num_train + a.num_validation == 1797
    assert a.num_validation == round(1797 * 0.2)
    assert a.spec.input_shape == (64,) and a.spec.num_outputs == 10
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    np.testing.assert_array_equal(a.y_validation, b.y_validation)
    assert data.digits(split_seed=1).y_validation.tolist() != a.y_validation.tolist()


def test_npz_and_csv_files(tmp_path):
    x = np.arange(40, dtype="float32").reshape(20, 2)
    y = np.arange(20) % 3
    np.savez(tmp_path / "d.npz", inputs=x, labels=y)
    npz = data.npz_file(path=str(tmp_path / "d.npz"), x_key="inputs", y_key="labels",
                        validation_split=0.25)
    assert (npz.num_train, npz.num_validation) == (15, 5)
    assert npz.spec.num_outputs == 3
    rows = ["a,b,label"] + [f"{i},{2 * i},{i % 2}" for i in range(10)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    table = data.csv_file(path=str(tmp_path / "d.csv"), label_column="label",
                          validation_split=0.0)
    assert table.x_train.shape == (10, 2) and set(table.y_train) == {0, 1}
    np.testing.assert_array_equal(np.sort(table.x_train[:, 0]), np.arange(10))
    with pytest.raises(KeyError, match="no column 'target'"):
        data.csv_file(path=str(tmp_path / "d.csv"), label_column="target")
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        data.npz_file(path=str(tmp_path / "nothing.npz"))


def test_text_file_windows_predict_the_next_character(tmp_path):
    (tmp_path / "t.txt").write_text("abcabcabcabcabcabcabcabc")
    text = data.text_file(path=str(tmp_path / "t.txt"), sequence_length=4, stride=1,
                          validation_split=0.0)
    assert text.spec.vocabulary_size == 3
    for window, target in zip(text.x_train, text.y_train):
        assert (window[-1] + 1) % 3 == target  # a->b->c->a


def test_pipeline_batches_shuffles_with_the_seed_and_uses_the_eval_batch_size():
    source = synthetic.synthetic_classification(num_examples=100, validation_split=0.3)
    first = pipelines_lib.batched(source, 16, eval_batch_size=50, seed=3)[1]
    again = pipelines_lib.batched(source, 16, eval_batch_size=50, seed=3)[1]
    other = pipelines_lib.batched(source, 16, eval_batch_size=50, seed=4)[1]
    labels = lambda p: np.concatenate([y.numpy() for _, y in p.train])
    assert labels(first).tolist() == labels(again).tolist()
    assert labels(first).tolist() != labels(other).tolist()
    assert sorted(labels(first)) == sorted(source.y_train)  # every example once per epoch
    assert [len(y) for _, y in first.train] == [16] * 4 + [6]
    assert [len(y) for _, y in first.validation] == [30]
    assert first.steps_per_epoch == 5


def test_keras_dataset_reads_the_keras_cache(tmp_path, monkeypatch):
    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    datasets = tmp_path / "datasets"
    datasets.mkdir()
    rng = np.random.default_rng(0)
    np.savez(datasets / "mnist.npz", x_train=rng.integers(0, 255, (12, 28, 28), dtype=np.uint8),
             y_train=np.arange(12) % 10, x_test=np.zeros((4, 28, 28), np.uint8),
             y_test=np.arange(4))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    # A stand-in for mnist.npz: both hash checks (batchlab's, then Keras') are told its hash.
    fake = keras_cache.KerasFile("mnist.npz", keras_cache.KERAS_FILES["mnist"][0].origin,
                                 keras_cache.sha256(str(datasets / "mnist.npz")))
    monkeypatch.setitem(keras_cache.KERAS_FILES, "mnist", (fake,))
    monkeypatch.setattr(file_utils, "validate_file", lambda *args, **kwargs: True)
    mnist = data.keras_dataset(name="mnist")
    assert mnist.x_train.shape == (12, 28, 28, 1) and mnist.x_train.max() <= 1.0
    assert mnist.num_validation == 4 and mnist.spec.num_outputs == 10
    assert data.keras_dataset(name="mnist", flatten=True).spec.input_shape == (784,)
    with pytest.raises(ValueError, match="Unknown keras dataset 'svhn'"):
        data.keras_dataset(name="svhn")


def test_missing_keras_dataset_says_where_keras_looked(tmp_path, monkeypatch):
    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    monkeypatch.setattr(file_utils, "urlretrieve", offline, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="could not load 'mnist'.*datasets"):
        data.keras_dataset(name="mnist")


def test_synthetic_sources_are_seeded():
    a = synthetic.synthetic_regression(seed=5)
    b = synthetic.synthetic_regression(seed=5)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.spec.task == "regression" and a.y_train.dtype == np.float32
    binary = synthetic.synthetic_binary(num_examples=64)
    assert binary.y_train.shape[1:] == (1,) and binary.spec.num_outputs == 1
    seqs = synthetic.synthetic_sequences(num_examples=32, sequence_length=6, num_features=3)
    assert seqs.spec.input_shape == (6, 3)
