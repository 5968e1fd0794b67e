"""Shared test set-up: quiet TensorFlow, a clean gin config and float32 policy around each test."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import keras  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def clean_state():
    gin.clear_config()
    yield
    gin.clear_config()
    keras.backend.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
