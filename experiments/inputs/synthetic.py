"""Synthetic sources: learnable, seeded, small; some with closed-form gradient statistics."""

import gin
import numpy as np

from experiments.inputs.arrays import arrays


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
