"""Shared test set-up: quiet TensorFlow, a clean gin config, float32 policy and op determinism off
around each test."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import keras  # noqa: E402
import pytest  # noqa: E402

from experiments.engine import keras_internals  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def clean_state():
    gin.clear_config()
    yield
    gin.clear_config()
    keras.backend.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    # A test that turned op determinism on (a run with train.deterministic_ops, a direct call)
    # leaves the next test in this process as it would find a fresh one.
    keras_internals.set_op_determinism(False)


# TensorFlow can make the interpreter's final clean-up wait for minutes after a session that
# trained many runs in this process, some of them stopped on purpose by an exception (simulated
# kills, NaN losses, a full disk): destroying the tf.data iterators those runs left behind waits
# on their thread pools, whose threads are already gone at that point. Everything is reported and
# written once the session has finished, so the process leaves with pytest's own exit status and
# without that clean-up.
_SESSION = {}


def pytest_sessionfinish(session, exitstatus):
    _SESSION["exit_status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if "exit_status" in _SESSION:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_SESSION["exit_status"])
