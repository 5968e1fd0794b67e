"""Smoke runs: every experiment gin file trains for a moment and leaves a complete run directory.

Each experiment file may declare the bindings that shrink it for this test in a comment line
``# smoke-test: binding; binding``; the test adds ``train.epochs = 1`` and quiet output.
"""

import glob
import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import launch
from experiments.inputs import keras_cache
from experiments.run import config_audit
from tests.helpers import event_tags, read_json, run_dirs

# Every shipped experiment trains end to end, the quickstart through main.py: slow.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(REPO, "gin", "base.gin")
EXPERIMENTS = sorted(os.path.relpath(p, REPO) for p in
                     glob.glob(os.path.join(REPO, "gin", "experiments", "*.gin")))
EXPECTED_TAGS = {"epoch_loss", "generalization_gap/loss", "gradients/global_norm",
                 "config/operative", "config/parsed"}


def smoke_bindings(path):
    bindings = []
    with open(os.path.join(REPO, path)) as handle:
        for line in handle:
            if line.startswith("# smoke-test:"):
                bindings += [b.strip() for b in line.split(":", 1)[1].split(";") if b.strip()]
    return bindings


@pytest.fixture
def fake_keras_cache(tmp_path, monkeypatch):
    """Tiny mnist/fashion-mnist/cifar10/imdb files where keras.datasets looks for them."""
    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    home = tmp_path / "keras_home"
    datasets = home / "datasets"
    datasets.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(datasets / "mnist.npz",
             x_train=rng.integers(0, 255, (64, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, 64), x_test=rng.integers(0, 255, (16, 28, 28),
                                                                   dtype=np.uint8),
             y_test=rng.integers(0, 10, 16))
    reviews = lambda n: np.array([[int(t) for t in rng.integers(1, 50, rng.integers(5, 30))]
                                  for _ in range(n)], dtype=object)
    np.savez(datasets / "imdb.npz", x_train=reviews(64), y_train=rng.integers(0, 2, 64),
             x_test=reviews(16), y_test=rng.integers(0, 2, 16))
    fashion = datasets / "fashion-mnist"
    fashion.mkdir()
    for prefix, n in (("train", 64), ("t10k", 16)):
        with gzip.open(fashion / f"{prefix}-labels-idx1-ubyte.gz", "wb") as handle:
            handle.write(bytes(8) + rng.integers(0, 10, n, dtype=np.uint8).tobytes())
        with gzip.open(fashion / f"{prefix}-images-idx3-ubyte.gz", "wb") as handle:
            handle.write(bytes(16) + rng.integers(0, 255, n * 784, dtype=np.uint8).tobytes())
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(home))
    monkeypatch.setattr(file_utils, "validate_file", lambda *args, **kwargs: True)
    for name in ("mnist", "imdb"):  # batchlab hashes a cached file before Keras does
        cached = keras_cache.KERAS_FILES[name][0]
        monkeypatch.setitem(keras_cache.KERAS_FILES, name, (cached._replace(
            sha256=keras_cache.sha256(str(datasets / cached.path))),))
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_experiment_smoke(path, tmp_path, fake_keras_cache):
    output = tmp_path / "runs"
    bindings = ["train.epochs = 1", "train.verbose = 0", "measurements.every_n_updates = 1"] \
        + smoke_bindings(path)
    results = launch.launch([path], bindings, output_dir=str(output), print_fn=lambda *_: None)
    assert results
    for result in results:
        run = result["run_dir"]
        assert read_json(os.path.join(run, "status.json"))["status"] == "finished"
        saved = read_json(os.path.join(run, "result.json"))
        assert saved["updates"] > 0 and np.isfinite(saved["final_epoch"]["loss"])
        assert saved["versions"]["keras"].startswith("3.")
        for name_ in ("config.gin", "operative_config.gin"):
            assert os.path.getsize(os.path.join(run, name_)) > 0
        assert "train.model_fn" in open(os.path.join(run, "operative_config.gin")).read()
        assert glob.glob(os.path.join(run, "checkpoints", "*.weights.h5"))
        tags = event_tags(os.path.join(run, "tensorboard"))
        assert EXPECTED_TAGS <= tags, EXPECTED_TAGS - tags
    # Every binding of the experiment is used by one of its runs (a sweep's variants may each
    # skip some). Only defaults inherited from gin/base.gin (the SGD settings of an experiment
    # that picks another optimizer) and the data a smoke run swaps out may go unused.
    allowed = {key.rsplit(".", 2)[-2] + "." + key.rsplit(".", 1)[-1]
               for key in config_audit.bound_keys(open(BASE).read())}
    unused = set.intersection(*(set(result["unused_bindings"]) for result in results))
    if any(binding.startswith("train.data_fn") for binding in smoke_bindings(path)):
        unused = {key for key in unused if not key.startswith("keras_dataset.")}
    assert unused <= allowed, unused


def test_quickstart_through_main_prints_the_table(tmp_path):
    """The real default command, shrunk: three runs, one table, one run dir each."""
    process = subprocess.run(
        [sys.executable, "main.py", f"--output_dir={tmp_path}",
         "--gin_bindings=train.verbose = 0",
         "--gin_bindings=sweep.variants = {'b16': ['train.batch_size = 16', 'train.epochs = 1'],"
         " 'b160': ['train.batch_size = 160', 'train.epochs = 1'],"
         " 'b160_long': ['train.batch_size = 160', 'train.epochs = 3']}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    out = process.stdout
    for column in ("epochs", "batch", "train loss", "val loss", "val acc", "gap (loss)",
                   "seconds", "updates"):
        assert column in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("b16", "b160"))]
    updates = {row[0]: int(row[-1]) for row in rows if row[-1].isdigit()}
    assert updates == {"b16": 90, "b160": 9, "b160_long": 27}
    assert len(run_dirs(str(tmp_path))) == 3
