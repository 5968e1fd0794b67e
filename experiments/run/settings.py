"""A run's settings, grouped: what to train, on what data and layout, how to measure and save.

``runner.train`` is the gin root (users keep simple bindings such as ``train.batch_size``); it
packs its parameters into a ``RunSettings`` so that everything below it passes a few named groups
instead of two dozen flat values. Measurement settings are ``measurements.*``
(``measurements.MeasurementSettings``); checkpointing is ``checkpoints.*``.
"""

import dataclasses
from typing import Any, Callable, Optional

import gin

from experiments.common import checks

DTYPE_POLICIES = ("float32", "mixed_bfloat16", "float64")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The model and how it is compiled."""

    model_fn: Callable
    optimizer: Any
    loss: Any
    metrics: tuple
    dtype_policy: str


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """The data source and the batch bindings the ``BatchLayout`` is built from."""

    data_fn: Callable
    batch_size: Any
    micro_batch_size: Any
    eval_batch_size: Any
    shuffle: bool


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    """When weights are saved (gin: ``checkpoints.*``)."""

    every_epoch: bool


@gin.configurable("checkpoints")
def checkpoint_settings(every_epoch=True):
    """Args:
      every_epoch: save the weights at every epoch end (``checkpoints/epoch-NNN.weights.h5``);
        the final weights are always saved (``checkpoints/final.weights.h5``).
    """
    return CheckpointSettings(every_epoch=bool(every_epoch))


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything ``runner.run`` needs, grouped; built from the bindings by ``runner.train``."""

    model: ModelSettings
    data: DataSettings
    epochs: int
    seed: int
    deterministic_ops: bool
    strategy: Any
    measurements: Any  # measurements.MeasurementSettings
    checkpoints: CheckpointSettings
    extra_callbacks: tuple = ()
    verbose: int = 1


@dataclasses.dataclass(frozen=True)
class RunOutput:
    """Where a run is written: ``<output_dir>/<experiment>/<run_name or a timestamp>``."""

    output_dir: str = "runs"
    experiment: str = "experiment"
    run_name: Optional[str] = None
    config_text: str = ""


def check_training(epochs, seed, dtype_policy, verbose):
    """The integer and choice bindings of ``train``, each error naming its binding."""
    checks.positive_int(epochs, "train.epochs")
    checks.non_negative_int(seed, "train.seed")
    checks.one_of(dtype_policy, DTYPE_POLICIES, "train.dtype_policy")
    checks.one_of(verbose, (0, 1, 2, "auto"), "train.verbose")
