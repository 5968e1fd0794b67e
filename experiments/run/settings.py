"""A run's settings, grouped: what to train, on what data and layout, how to measure and save.

``runner.train`` is the gin root (users keep simple bindings such as ``train.batch_size``); it
packs its parameters into a ``RunSettings`` so that everything below it passes a few named groups
instead of two dozen flat values. Measurement settings are ``measurements.*``
(``measurements.MeasurementSettings``); checkpointing is ``checkpoints.*``. What a run mode
(``train.mode``) needs of its own it holds itself (``modes``).
"""

import dataclasses
import os
import sys
from typing import Any, Callable, Optional

import gin

from experiments.common import checks
from experiments.models.learning_rate_scaling import AdaScaleRule

DTYPE_POLICIES = ("float32", "mixed_bfloat16", "float64")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The model and how it is compiled."""

    model_fn: Callable
    optimizer: Any
    loss: Any
    metrics: tuple
    dtype_policy: str
    learning_rate_scaling: Any = None  # models.learning_rate_scaling.AdaScaleRule


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """The data source and the batch bindings the ``BatchLayout`` is built from."""

    data_fn: Callable
    batch_size: Any
    micro_batch_size: Any
    eval_batch_size: Any
    shuffle: bool
    batch_size_schedule: Any = None  # inputs.batch_schedule.BatchSizeSchedule


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    """When the training state is saved (gin: ``checkpoints.*``); see ``checkpoint_settings``."""

    every_n_updates: Optional[int]
    every_n_minutes: Optional[float]
    keep: int
    every_epoch: bool
    heartbeat_seconds: float


@gin.configurable("checkpoints")
def checkpoint_settings(every_n_updates=None, every_n_minutes=2.0, keep=2, every_epoch=False,
                        heartbeat_seconds=30.0):
    """Checked checkpoint settings.

    Args:
      every_n_updates: save the whole training state every that many updates (None: not by
        count). A killed run resumes from its newest checkpoint (``experiments/run/checkpoints``).
      every_n_minutes: also save when that many minutes passed since the last save (None: not by
        time). A SIGTERM or SIGINT always saves at the next update boundary.
      keep: checkpoints kept (the newest); the final weights are always saved
        (``checkpoints/final.weights.h5``).
      every_epoch: also keep the weights of every epoch end (``epoch-NNN.weights.h5``), for
        analysis; off by default (200 epochs would leave 200 files).
      heartbeat_seconds: how often ``status.json`` records that the run is alive. The status
        holds it: a reader on another host takes the run as dead only after 3 intervals and 30 s
        (at least 2 minutes) without a heartbeat (``run_dir.stale_after``).
    """
    return CheckpointSettings(
        every_n_updates=checks.optional_positive_int(every_n_updates,
                                                     "checkpoints.every_n_updates"),
        every_n_minutes=None if every_n_minutes is None else checks.positive_number(
            every_n_minutes, "checkpoints.every_n_minutes"),
        keep=checks.positive_int(keep, "checkpoints.keep"), every_epoch=bool(every_epoch),
        heartbeat_seconds=checks.positive_number(heartbeat_seconds,
                                                 "checkpoints.heartbeat_seconds"))


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
    verbose: int = 2


@dataclasses.dataclass(frozen=True)
class RunOutput:
    """Where a run is written: ``<output_dir>/<experiment>/<run_name or a timestamp>``.

    ``resumable``: the named directory is the run's own (``--run_name``): an unfinished run of
    the same configuration there is resumed; otherwise a taken name gets a ``-N`` suffix.
    ``in_group``: the run is one of a sweep's or study's (``<root>/<experiment>/<group>/<run>``:
    ``output_dir`` is then ``<root>/<experiment>`` and ``experiment`` the group's directory), so
    that result.json names the experiment and the group each as what they are.
    """

    output_dir: str = "runs"
    experiment: str = "experiment"
    run_name: Optional[str] = None
    config_text: str = ""
    resumable: bool = False
    in_group: bool = False

    def names(self):
        """(experiment, group) as result.json records them; group None for a run of its own."""
        if self.in_group:
            return os.path.basename(os.path.normpath(self.output_dir)), self.experiment
        return self.experiment, None


# NumPy, TensorFlow and Python's random all take a seed below 2**32.
MAX_SEED = 2 ** 32 - 1


def check_training(epochs, seed, dtype_policy, verbose):
    """The integer and choice bindings of ``train``, each error naming its binding."""
    checks.positive_int(epochs, "train.epochs")
    checks.non_negative_int(seed, "train.seed")
    if seed > MAX_SEED:
        raise ValueError(f"train.seed must be at most 2**32 - 1 = {MAX_SEED}, got {seed}.")
    checks.one_of(dtype_policy, DTYPE_POLICIES, "train.dtype_policy")
    checks.one_of(verbose, (None, 0, 1, 2, "auto"), "train.verbose")


def check_learning_rate_scaling(scaling):
    """``train.learning_rate_scaling``: None or ``@adascale()``."""
    if scaling is not None and not isinstance(scaling, AdaScaleRule):
        raise ValueError(f"train.learning_rate_scaling must be @adascale() (with parentheses) "
                         f"or None, got {scaling!r}.")
    return scaling


# Names Keras' compile resolves by the loss and the output, in any case (not metrics of their
# own name; "crossentropy" and "ce" are names of losses only).
_COMPILE_METRIC_NAMES = ("accuracy", "acc")


def check_metrics(metrics):
    """``train.metrics``: each name one Keras knows. A misspelt one ('acuracy') otherwise fails
    at the first update, after the run directory exists, with Keras' "Could not interpret
    metric identifier" that names no binding."""
    import difflib  # noqa: PLC0415
    import keras  # noqa: PLC0415

    for metric in metrics or ():
        if not isinstance(metric, str) or metric.lower() in _COMPILE_METRIC_NAMES:
            continue
        try:
            keras.metrics.get(metric)
        except ValueError:
            known = list(_COMPILE_METRIC_NAMES) + [
                name for name in dir(keras.metrics)
                if name[:1].islower() and not name.startswith(("get", "serialize",
                                                               "deserialize"))]
            near = difflib.get_close_matches(metric, known, n=3)
            hint = f" (did you mean {', '.join(map(repr, near))}?)" if near else ""
            raise ValueError(f"train.metrics: {metric!r} is not a metric Keras knows{hint}; "
                             "give a name such as 'accuracy' or 'mae', or a class "
                             "(@keras.metrics.AUC).") from None


def check_eval_batch_size(eval_batch_size):
    """``train.eval_batch_size``: None (the batch size) or a positive integer; 0 is refused as
    -5 is, not taken as unset."""
    checks.optional_positive_int(eval_batch_size, "train.eval_batch_size")


def progress_verbosity(verbose, stream=None):
    """Keras' ``verbose`` for a run: the user's choice, else (None, 'auto') a progress bar on a
    terminal and one line per epoch elsewhere: Keras 3 takes any POSIX process as interactive
    and would write ``ESC[``, ``\r`` and ``\b`` runs into a log file."""
    if verbose not in (None, "auto"):
        return verbose
    stream = stream or sys.stdout
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):
        interactive = False
    return 1 if interactive else 2
