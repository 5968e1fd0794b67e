"""keras.datasets offline: the file a missing dataset needs is named with its URL, and a cached
file with the wrong hash is refused before Keras, which would delete it, sees it.

Every test caches under a temporary KERAS_HOME (Keras reads the variable once, when imported, so
its copy is set too) and has no network: Keras' download raises as it does offline.
"""

import hashlib
import inspect
import os
import urllib.error

import keras
import pytest

from experiments.inputs import arrays as data
from experiments.inputs import keras_cache

LOADERS = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist,
           "cifar10": keras.datasets.cifar10, "imdb": keras.datasets.imdb}


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    """A fresh Keras home and a download that fails as it does without internet; the origin and
    target of every download Keras tries are recorded."""
    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    home = tmp_path / "keras_home"
    home.mkdir()
    tried = []

    def offline(origin, target, *args, **kwargs):
        tried.append((origin, target))
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(home))
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    return home, tried


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_the_file_table_is_what_keras_downloads(name, offline_home, monkeypatch):
    """Each path and URL is the one Keras' own get_file tries (recorded from a real call, each
    download 'succeeding' with an empty file so that the next one is tried), and each SHA-256 is
    the one in Keras' source; an upgraded Keras that moved a file fails here."""
    from keras.src.utils import file_utils

    home, tried = offline_home

    def empty_download(origin, target, *args, **kwargs):
        tried.append((origin, target))
        open(target, "wb").close()

    monkeypatch.setattr(file_utils, "urlretrieve", empty_download)
    with pytest.raises(Exception):  # noqa: B017  (an empty file is no dataset)
        LOADERS[name].load_data()
    expected = keras_cache.KERAS_FILES[name]
    assert sorted(tried) == sorted((f.origin, keras_cache.cache_path(f)) for f in expected)
    assert all(path.startswith(str(home / "datasets")) for _, path in tried)
    source = inspect.getsource(LOADERS[name].load_data)
    for keras_file in expected:
        assert keras_file.sha256 is None or keras_file.sha256 in source
    if all(f.sha256 is None for f in expected):
        assert "file_hash" not in source


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_missing_dataset_names_each_file_to_place_its_url_and_hash(name, offline_home):
    home, _ = offline_home
    with pytest.raises(FileNotFoundError) as raised:
        data.keras_dataset(name=name)
    message = str(raised.value)
    first = keras_cache.KERAS_FILES[name][0]  # the first file Keras fetches (none is cached)
    assert f"{home / 'datasets' / first.path} from {first.origin}" in message, message
    if first.sha256:
        assert f"(SHA-256 {first.sha256})" in message
    assert f"could not load {name!r}" in message and "not cached" in message


def test_a_cached_file_with_the_wrong_hash_survives_and_is_named(offline_home):
    home, tried = offline_home
    cached = home / "datasets" / "mnist.npz"
    cached.parent.mkdir()
    cached.write_bytes(b"a truncated download")
    with pytest.raises(Exception) as raised:
        data.keras_dataset(name="mnist")
    assert cached.exists(), f"the user's {cached} was deleted ({raised.value})"
    assert cached.read_bytes() == b"a truncated download"
    assert tried == []  # Keras was not asked: it would download again, then delete the file
    message = str(raised.value)
    assert isinstance(raised.value, ValueError), message
    assert str(cached) in message
    assert hashlib.sha256(b"a truncated download").hexdigest() in message
    assert keras_cache.KERAS_FILES["mnist"][0].sha256 in message
    assert "not cached" not in message


def test_a_damaged_file_keras_does_not_hash_is_named_not_called_missing(offline_home):
    """fashion-mnist's files carry no hash in Keras: a truncated one fails while read, and the
    error names the cached files instead of asking for a download."""
    import gzip

    home, tried = offline_home
    directory = home / "datasets" / "fashion-mnist"
    directory.mkdir(parents=True)
    for keras_file in keras_cache.KERAS_FILES["fashion_mnist"]:
        with gzip.open(home / "datasets" / keras_file.path, "wb") as handle:
            handle.write(bytes(16) + bytes(784))
        truncated = (home / "datasets" / keras_file.path).read_bytes()[:-6]
        (home / "datasets" / keras_file.path).write_bytes(truncated)
    with pytest.raises(ValueError) as raised:
        data.keras_dataset(name="fashion_mnist")
    message = str(raised.value)
    assert tried == [] and "not cached" not in message
    assert str(directory / "train-labels-idx1-ubyte.gz") in message, message
    assert all(os.path.exists(home / "datasets" / f.path)
               for f in keras_cache.KERAS_FILES["fashion_mnist"])


def test_the_docs_list_the_same_files():
    """docs/data.md's offline table is the code's: each path, URL and hash in one row."""
    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "data.md")).read()
    rows = [line for line in docs.splitlines() if line.startswith("| `")]
    for name, keras_files in keras_cache.KERAS_FILES.items():
        for f in keras_files:
            sha = f"`{f.sha256}`" if f.sha256 else "none"
            assert any(line.startswith(f"| `{name}` | `datasets/{f.path}` | {f.origin} | {sha}")
                       for line in rows), (name, f)
