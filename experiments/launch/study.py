"""A batch-size study: a gin file that includes a base experiment and declares axes.

    include 'gin/experiments/digits_mlp.gin'
    study.batch_sizes = [8, 32, 128, 512]
    study.learning_rates = [0.01, 0.03, 0.1]   # or study.rules = ['none', 'linear', 'sqrt']
    study.epochs = [10]                        # or study.update_budget = 2000
    study.target_metric = 'val_accuracy'
    study.target = 0.95

``study()`` returns the checked ``StudySpec`` (None when the gin files declare no study); the grid
(``grid.expand``) is the product of its axes, and ``study.extend_learning_rates = True`` adds
rates beyond its edge where the best one sits there (``study_extension``). The checks here need
no data and no model: each names the binding that is wrong, before anything runs.
"""

import dataclasses
from typing import Optional

import gin

from experiments.analysis.steps_to_result import TARGET_DIRECTIONS
from experiments.common import checks

# How ``study.rules`` scale the reference learning rate to each B (``grid.scaled_learning_rate``).
LR_SCALING_RULES = ("none", "linear", "sqrt")


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """The axes and the target of a study; see ``study`` for each field."""

    batch_sizes: tuple
    micro_batch_sizes: tuple = (None,)
    learning_rates: Optional[tuple] = None
    rules: Optional[tuple] = None
    reference_batch_size: Optional[int] = None
    reference_learning_rate: Optional[float] = None
    warmup_updates: Optional[int] = None
    epochs: Optional[tuple] = None
    update_budget: Optional[int] = None
    seeds: Optional[tuple] = None
    target_metric: str = "val_accuracy"
    target: Optional[float] = None
    target_mode: str = "max"
    eval_every_n_updates: Optional[int] = None
    learning_rates_by_batch_size: Optional[tuple] = None
    batch_size_macro: Optional[str] = None
    extend_learning_rates: bool = False
    max_extensions: int = 2

    def learning_rates_at(self, batch_size):
        """The learning rates tried at ``batch_size``: its own list, or the shared axis."""
        if self.learning_rates_by_batch_size is not None:
            return dict(self.learning_rates_by_batch_size)[batch_size]
        return self.learning_rates

    def axes(self):
        """The study's identity as plain JSON values: a relaunch must declare the same."""
        out = {k: list(v) if isinstance(v, tuple) else v
               for k, v in dataclasses.asdict(self).items()}
        if self.learning_rates_by_batch_size is not None:
            out["learning_rates_by_batch_size"] = {
                str(b): list(lrs) for b, lrs in self.learning_rates_by_batch_size}
        else:
            del out["learning_rates_by_batch_size"]
        if self.batch_size_macro is None:
            del out["batch_size_macro"]
        # Not the study's identity: turning the extension on, or raising its limit, on a
        # relaunch only adds runs (``study_extension``); the grid stays the same.
        del out["extend_learning_rates"], out["max_extensions"]
        return out


class StudyError(ValueError):
    """A study declaration that cannot be run; the message names the binding."""


@gin.configurable
def study(batch_sizes=None, micro_batch_sizes=None, learning_rates=None, rules=None,
          reference_batch_size=None, reference_learning_rate=None, warmup_updates=None,
          epochs=None, update_budget=None, seeds=None, target_metric="val_accuracy",
          target=None, target_mode="max", eval_every_n_updates=None,
          learning_rates_by_batch_size=None, batch_size_macro=None,
          extend_learning_rates=False, max_extensions=2):
    """The checked ``StudySpec``, or None when ``study.batch_sizes`` is not bound.

    Args:
      batch_sizes: the batch sizes B (one update each), the study's main axis.
      micro_batch_sizes: optional axis of micro-batch sizes b (B must be a multiple; None: b = B).
      learning_rates: an axis of fixed learning rates; exclusive with ``rules``.
      rules: an axis of rules ('none', 'linear', 'sqrt') scaling ``reference_learning_rate``,
        tuned at ``reference_batch_size``, to each B.
      warmup_updates: with rules, a linear warm-up over this many updates (``WarmupSchedule``).
      epochs: an axis of epoch counts; exclusive with ``update_budget``. Neither: the base's.
      update_budget: about this many updates per run: epochs = ceil(budget / updates per epoch).
      seeds: an axis of seeds (None: the base's ``train.seed``).
      target_metric, target, target_mode: steps to result count the updates until
        ``target_metric`` reaches ``target`` ('max': at least, 'min': at most); ``target`` None
        picks the best value every batch size reached.
      eval_every_n_updates: validation-curve cadence (None: ``measurements.every_n_updates``).
      learning_rates_by_batch_size: {B: [learning rates]}: each batch size its own list (a
        window where a coarse search put the optimum); exclusive with the other two.
      batch_size_macro: a gin macro name bound to each run's B (``NAME = 32``), for data
        sources whose size follows B (``gin/studies/nqm_known_answer.gin``).
      extend_learning_rates: when the learning rate that sets a batch size's S(B) point (or,
        where no run reached the target, its best final metric) is the smallest or largest
        tried at that B, run the next rate beyond that edge (same ratio as the two rates at
        the edge) at that B, and repeat until the best is inside or ``max_extensions`` rates
        were added at that B (``study_extension``). Needs learning rates (not rules).
      max_extensions: the most rates added beyond the grid at one batch size.
    """
    if batch_sizes is None:
        return None
    spec = StudySpec(
        batch_sizes=_axis(batch_sizes, "study.batch_sizes", _positive_int),
        micro_batch_sizes=(None,) if micro_batch_sizes is None else _axis(
            micro_batch_sizes, "study.micro_batch_sizes", _optional_positive_int),
        learning_rates=None if learning_rates is None else _axis(
            learning_rates, "study.learning_rates", _positive_number),
        rules=None if rules is None else _axis(rules, "study.rules", _rule),
        reference_batch_size=_optional_positive_int(reference_batch_size,
                                                    "study.reference_batch_size"),
        reference_learning_rate=None if reference_learning_rate is None else _positive_number(
            reference_learning_rate, "study.reference_learning_rate"),
        warmup_updates=_optional_positive_int(warmup_updates, "study.warmup_updates"),
        epochs=None if epochs is None else _axis(epochs, "study.epochs", _positive_int),
        update_budget=_optional_positive_int(update_budget, "study.update_budget"),
        seeds=None if seeds is None else _axis(seeds, "study.seeds", _non_negative_int),
        target_metric=_metric_name(target_metric),
        target=None if target is None else float(target),
        target_mode=_mode(target_mode),
        eval_every_n_updates=_optional_positive_int(eval_every_n_updates,
                                                    "study.eval_every_n_updates"),
        learning_rates_by_batch_size=_by_batch_size(learning_rates_by_batch_size, batch_sizes),
        batch_size_macro=_macro(batch_size_macro),
        extend_learning_rates=_flag(extend_learning_rates, "study.extend_learning_rates"),
        max_extensions=_positive_int(max_extensions, "study.max_extensions"))
    _check_combinations(spec)
    return spec


def _check_combinations(spec):
    """Axes that exclude or need each other."""
    if spec.learning_rates is not None and spec.rules is not None:
        raise StudyError("Set study.learning_rates or study.rules, not both.")
    if spec.learning_rates_by_batch_size is not None and (
            spec.learning_rates is not None or spec.rules is not None):
        raise StudyError("Set study.learning_rates_by_batch_size alone, without "
                         "study.learning_rates or study.rules.")
    if spec.rules is not None and (spec.reference_batch_size is None
                                   or spec.reference_learning_rate is None):
        raise StudyError("study.rules needs study.reference_batch_size and "
                         "study.reference_learning_rate (the batch size the learning rate was "
                         "tuned at, and that learning rate).")
    if spec.warmup_updates is not None and spec.rules is None and spec.learning_rates is None \
            and spec.learning_rates_by_batch_size is None:
        raise StudyError("study.warmup_updates needs study.rules or study.learning_rates.")
    if spec.epochs is not None and spec.update_budget is not None:
        raise StudyError("Set study.epochs or study.update_budget, not both.")
    if spec.extend_learning_rates and spec.learning_rates is None and \
            spec.learning_rates_by_batch_size is None:
        raise StudyError("study.extend_learning_rates adds learning rates beyond the grid's "
                         "edge: it needs study.learning_rates or "
                         "study.learning_rates_by_batch_size (not study.rules).")


def _axis(values, binding, check):
    """A non-empty tuple of checked values, without repeats."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise StudyError(f"{binding} must be a list, got {values!r}.")
    if not values:
        raise StudyError(f"{binding} is empty: give at least one value.")
    checked = tuple(check(v, binding) for v in values)
    if len(set(checked)) != len(checked):
        raise StudyError(f"{binding} repeats a value: {list(values)!r}.")
    return checked


def _study_error(check):
    """``check`` (one of ``common.checks``) raising ``StudyError``: every error of a study
    declaration has one type, whichever check found it."""

    def checked(value, binding):
        try:
            return check(value, binding)
        except ValueError as error:
            raise StudyError(str(error)) from None

    return checked


_positive_int = _study_error(checks.positive_int)
_optional_positive_int = _study_error(checks.optional_positive_int)
_non_negative_int = _study_error(checks.non_negative_int)
_positive_number = _study_error(checks.positive_number)


def _rule(value, binding):
    if value not in LR_SCALING_RULES:
        raise StudyError(f"{binding} holds {value!r}; rules are {', '.join(LR_SCALING_RULES)}.")
    return value


def _metric_name(value):
    if not isinstance(value, str) or not value:
        raise StudyError(f"study.target_metric must be a metric name such as 'val_accuracy', "
                         f"got {value!r}.")
    return value


def _mode(value):
    if value not in TARGET_DIRECTIONS:
        raise StudyError(f"study.target_mode must be 'max' or 'min', got {value!r}.")
    return value


def _by_batch_size(values, batch_sizes):
    """{B: [lrs]} as ((B, (lrs...)), ...) in batch-size order; every B of the study needs one."""
    if values is None:
        return None
    if not isinstance(values, dict) or not values:
        raise StudyError(f"study.learning_rates_by_batch_size must be a dict {{B: [learning "
                         f"rates]}}, got {values!r}.")
    missing = [b for b in batch_sizes or () if b not in values]
    if missing:
        raise StudyError(f"study.learning_rates_by_batch_size has no learning rates for "
                         f"B = {missing}.")
    return tuple((b, _axis(values[b], f"study.learning_rates_by_batch_size[{b}]",
                           _positive_number)) for b in sorted(values) if b in batch_sizes)


def _flag(value, binding):
    if not isinstance(value, bool):
        raise StudyError(f"{binding} must be True or False, got {value!r}.")
    return value


def _macro(name):
    if name is None:
        return None
    if not isinstance(name, str) or not name.isidentifier():
        raise StudyError(f"study.batch_size_macro must be a gin macro name such as "
                         f"'BATCH_SIZE', got {name!r}.")
    return name
