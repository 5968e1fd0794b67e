"""From a study's axes (or a sweep's variants) to the list of runs: names and gin bindings.

A ``RunSpec`` is what the executor needs to start one run: a readable, deterministic name (the
run directory's name, e.g. ``b32_lr0.1_s0``) and the gin bindings that make it differ from the
base experiment. Studies and sweeps both become a list of ``RunSpec``, so one executor runs both.
Pure functions: no gin state is read here (``study_launch`` queries what the grid needs).
"""

import dataclasses
import itertools
import math
from typing import Optional


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a study or sweep.

    Attributes:
      index: position in the grid (sharding takes ``index % n == i``).
      name: the run directory's name.
      bindings: gin bindings parsed after the base files and command-line bindings.
      hparams: the values that vary, for HParams and the report (empty for sweeps).
    """

    index: int
    name: str
    bindings: tuple
    hparams: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class GridContext:
    """What expanding a study needs to know about its base experiment.

    Attributes:
      lr_selector: the configurable whose ``learning_rate`` a grid point binds
        (``keras.optimizers.SGD``: what ``train.optimizer`` refers to).
      base_learning_rate: the base's learning rate (recorded when no LR axis), or None.
      base_epochs: the base's ``train.epochs`` (used when the study sets no epochs).
      num_train_examples: training rows, for ``study.update_budget``.
      base_micro_batch_size, base_seed: the base's, used when the study has no such axis.
    """

    lr_selector: str
    base_learning_rate: Optional[float] = None
    base_epochs: int = 1
    num_train_examples: Optional[int] = None
    base_micro_batch_size: Optional[int] = None
    base_seed: int = 0


def scaled_learning_rate(rule, reference_learning_rate, reference_batch_size, batch_size):
    """The learning rate at ``batch_size`` under ``rule``: 'none' keeps the reference one,
    'linear' multiplies it by B/B_ref, 'sqrt' by √(B/B_ref)."""
    ratio = batch_size / reference_batch_size
    factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]
    return reference_learning_rate * factor


def epochs_for_budget(update_budget, batch_size, num_train_examples):
    """Epochs that give at least ``update_budget`` updates at ``batch_size`` (ceil(N/B) a epoch)."""
    updates_per_epoch = -(-num_train_examples // batch_size)
    return max(1, -(-update_budget // updates_per_epoch))


def _lr_points(spec, batch_size):
    """[(learning rate, rule)] at this batch size: the LR axis, the rules, or the base's."""
    if spec.learning_rates_by_batch_size is not None or spec.learning_rates is not None:
        return [(lr, None) for lr in spec.learning_rates_at(batch_size)]
    if spec.rules is not None:
        return [(scaled_learning_rate(rule, spec.reference_learning_rate,
                                      spec.reference_batch_size, batch_size), rule)
                for rule in spec.rules]
    return [(None, None)]


def _epoch_points(spec, batch_size, context):
    if spec.epochs is not None:
        return list(spec.epochs)
    if spec.update_budget is not None:
        return [epochs_for_budget(spec.update_budget, batch_size, context.num_train_examples)]
    return [context.base_epochs]


def run_name(spec, batch_size, micro, lr, rule, epochs, seed):
    """``b32[_m8][_lr0.1|_linear][_e10]_s0``: epochs only when they are an axis."""
    parts = [f"b{batch_size}"]
    if spec.micro_batch_sizes != (None,):
        parts.append(f"m{micro or batch_size}")
    if rule is not None:
        parts.append(rule)
    elif lr is not None:
        parts.append(f"lr{lr:g}")
    if spec.epochs is not None and len(spec.epochs) > 1:
        parts.append(f"e{epochs}")
    parts.append(f"s{seed}")
    return "_".join(parts)


def _lr_bindings(spec, lr, selector):
    if lr is None:
        return []
    if spec.warmup_updates is None:
        return [f"{selector}.learning_rate = {lr!r}"]
    return [f"{selector}.learning_rate = @batchlab.WarmupSchedule()",
            f"batchlab.WarmupSchedule.peak_learning_rate = {lr!r}",
            f"batchlab.WarmupSchedule.warmup_steps = {spec.warmup_updates}"]


def point_bindings(spec, context, hparams):
    """The gin bindings of one grid point (see ``expand``)."""
    bindings = [f"train.batch_size = {hparams['batch_size']}",
                f"train.epochs = {hparams['epochs']}", f"train.seed = {hparams['seed']}"]
    if spec.micro_batch_sizes != (None,):  # else the base's micro-batch size stays
        bindings.append(f"train.micro_batch_size = {hparams['micro_batch_size']!r}")
    bindings += _lr_bindings(spec, hparams["learning_rate"], context.lr_selector)
    if getattr(spec, "batch_size_macro", None):
        bindings.append(f"{spec.batch_size_macro} = {hparams['batch_size']}")
    bindings += ["measurements.also = [@measurements.validation_curve, @measurements.hparams]",
                 f"measurements.hparams.values = {hparams!r}"]
    if spec.eval_every_n_updates is not None:
        bindings.append(
            f"measurements.validation_curve.every_n_updates = {spec.eval_every_n_updates}")
    return tuple(bindings)


def expand(spec, context):
    """Every grid point of ``spec`` (product of the axes, batch size outermost) as a RunSpec;
    micro-batch sizes larger than the batch size are skipped."""
    runs, names = [], set()
    for batch_size in spec.batch_sizes:
        runs += _points_at(spec, context, batch_size, _lr_points(spec, batch_size), len(runs),
                           names)
    return runs


def extension_runs(spec, context, batch_size, learning_rate, start_index, names):
    """The runs of one learning rate added beyond the grid's edge at ``batch_size``
    (``study_extension``): every micro-batch size, epoch count and seed of the grid, indices
    from ``start_index``; ``names`` (the names taken so far) gets theirs."""
    return _points_at(spec, context, batch_size, [(learning_rate, None)], start_index, names)


def _points_at(spec, context, batch_size, lr_points, start_index, names):
    """The RunSpecs of one batch size over ``lr_points`` x micro-batch sizes x epochs x seeds."""
    runs = []
    seeds = spec.seeds or (context.base_seed,)
    for micro in spec.micro_batch_sizes:
        if micro is not None and micro > batch_size:
            continue  # b > B is no split: the product of the two axes skips it
        for (lr, rule), epochs, seed in itertools.product(
                lr_points, _epoch_points(spec, batch_size, context), seeds):
            recorded_lr = context.base_learning_rate if lr is None else lr
            hparams = {"batch_size": batch_size,
                       "micro_batch_size": context.base_micro_batch_size
                       if spec.micro_batch_sizes == (None,) else micro,
                       "learning_rate": recorded_lr, "rule": rule, "seed": seed,
                       "epochs": epochs}
            name = run_name(spec, batch_size, micro, lr, rule, epochs, seed)
            if name in names:
                raise ValueError(
                    f"Two grid points are both named {name!r}: their values name the same run "
                    f"(at B = {batch_size}, a micro-batch size equal to B and None are both "
                    "one pass, k = 1; learning rates equal to 6 significant digits print "
                    "alike): remove one of them from its axis.")
            names.add(name)
            runs.append(RunSpec(start_index + len(runs), name,
                                point_bindings(spec, context, hparams), hparams))
    return runs


def from_variants(variants):
    """A sweep's ``{name: [bindings]}`` as RunSpecs, in order."""
    return [RunSpec(i, name, tuple(bindings)) for i, (name, bindings) in
            enumerate(variants.items())]


def parse_shard(text):
    """``'i/n'`` -> (i, n) with 0 <= i < n; ValueError naming ``--shard`` otherwise."""
    if text in (None, ""):
        return 0, 1
    parts = str(text).split("/")
    try:
        index, count = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--shard={text!r} must look like i/n, e.g. --shard=0/2.") from None
    if count < 1:
        raise ValueError(f"--shard={text}: n, the number of shards, must be at least 1.")
    if not 0 <= index < count:
        raise ValueError(f"--shard={text}: need 0 <= i < n (i in 0..{count - 1}).")
    return index, count


def shard(runs, index, count):
    """The runs of shard ``index`` of ``count``: those whose grid index % count == index."""
    return [run for run in runs if run.index % count == index]
