"""The files ``keras.datasets`` reads, checked before Keras is asked to load them.

Why a check of our own: on a cached file whose hash does not match, Keras' ``get_file`` (3.15.1)
re-downloads it and, when that download fails (no internet here), deletes the user's file; and
every failure, a damaged file included, read "not cached" once caught. So a present file is hashed
here first and a mismatch refused without calling Keras, and the error after a failed load says
which file was missing (with where to fetch it) or which file it was reading.

``KERAS_FILES`` is copied from ``keras/src/datasets/{mnist,fashion_mnist,cifar10,imdb}.py`` and
``keras/src/utils/file_utils.get_file`` of Keras 3.15.1 (``tests/test_keras_datasets.py`` checks
it against the installed Keras): a path relative to ``<keras home>/datasets``, the URL Keras
downloads it from and the SHA-256 Keras checks (None where it checks none).
"""

import collections
import hashlib
import os
import tempfile

KerasFile = collections.namedtuple("KerasFile", ["path", "origin", "sha256"])

_GOOGLE = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
_FASHION = ("train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",  # Keras' order
            "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz")

KERAS_FILES = {
    "mnist": (KerasFile("mnist.npz", _GOOGLE + "mnist.npz",
                        "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"),),
    "fashion_mnist": tuple(KerasFile(f"fashion-mnist/{name}", _GOOGLE + name, None)
                           for name in _FASHION),
    # get_file(fname="cifar-10-batches-py-target", extract=True): a name without a dot keeps the
    # archive as "<fname>_archive" and extracts it into "<fname>/" on every load.
    "cifar10": (KerasFile("cifar-10-batches-py-target_archive",
                          "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                          "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
    "imdb": (KerasFile("imdb.npz", _GOOGLE + "imdb.npz",
                       "69664113be75683a8fe16e3ed0ab59fda8886cb3cd7ada244f7d9544e4676b9f"),),
}


def keras_home():
    """The directory Keras caches under, resolved as Keras resolves it: ``$KERAS_HOME`` (even
    empty), else ``~/.keras``; ``get_file`` falls back to ``<tmp>/.keras`` where that is not
    writable (a home directory that does not exist included), so the paths named are the ones
    Keras really reads."""
    if "KERAS_HOME" in os.environ:
        home = os.environ["KERAS_HOME"]
    else:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    home = os.path.expanduser(home)
    if not os.access(home, os.W_OK):
        home = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return home


def datasets_dir():
    return os.path.join(keras_home(), "datasets")


def cache_path(keras_file):
    return os.path.join(datasets_dir(), *keras_file.path.split("/"))


def sha256(path, chunk_size=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def present(name):
    """The cache paths of dataset ``name`` that exist now (before a load: which ones Keras would
    have to download)."""
    return {cache_path(f) for f in KERAS_FILES[name] if os.path.exists(cache_path(f))}


def check_cached(name):
    """Refuses a cached file of ``name`` whose SHA-256 is not the one Keras checks, before Keras
    sees it: Keras would try to download it again and, failing, delete it."""
    for keras_file in KERAS_FILES[name]:
        path = cache_path(keras_file)
        if keras_file.sha256 is None or not os.path.exists(path):
            continue
        if os.path.isdir(path):
            raise ValueError(f"keras.datasets will not load {name!r}: {path} is a directory; Keras "
                             f"expects the file {keras_file.origin} there, SHA-256 "
                             f"{keras_file.sha256}.")
        try:
            actual = sha256(path)
        except OSError as error:
            raise ValueError(f"keras.datasets will not load {name!r}: {path} cannot be read "
                             f"({type(error).__name__}: {error.strerror or error}).") from error
        if actual != keras_file.sha256:
            raise ValueError(
                f"keras.datasets will not load {name!r}: {path} has SHA-256 {actual}, not the "
                f"{keras_file.sha256} Keras expects (a truncated or different file; Keras would "
                f"delete it when it cannot download it again). Replace it with {keras_file.origin}"
                ", or move it away to let Keras download it.")


def load_error(name, error, present_before):
    """The error to raise for a failed ``keras.datasets`` load of ``name``: the files that were
    not cached and are still absent (their download failed) with where to fetch each, or else the
    file Keras was reading."""
    missing = [f for f in KERAS_FILES[name]
               if cache_path(f) not in present_before and not os.path.exists(cache_path(f))]
    cause = f"{type(error).__name__}: {error}"
    if missing:
        places = "; ".join(
            f"{cache_path(f)} from {f.origin}"
            + (f" (SHA-256 {f.sha256})" if f.sha256 else "") for f in missing)
        return FileNotFoundError(
            f"keras.datasets could not load {name!r}: it is not cached and could not be "
            f"downloaded here ({cause}). Fetch on a machine with internet and place: {places} "
            "(docs/data.md, Keras datasets offline).")
    reading = getattr(error, "filename", None)
    if not reading:
        paths = [cache_path(f) for f in KERAS_FILES[name]]
        reading = paths[0] if len(paths) == 1 else "one of " + ", ".join(paths)
    return ValueError(f"keras.datasets could not load {name!r} from its cached file {reading} "
                      f"({cause}); replace a damaged file with a fresh copy (docs/data.md, Keras "
                      "datasets offline).")
