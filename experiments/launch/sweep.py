"""Sweeps: one launch, several runs that differ by a few gin bindings.

A sweep is declared in gin, e.g. the quickstart::

    sweep.variants = {
        'b16_e5':   ['train.batch_size = 16', 'train.epochs = 5'],
        'b160_e5':  ['train.batch_size = 160', 'train.epochs = 5'],
    }

Each variant is the base config (files and bindings) with the variant's bindings parsed last, and
gets its own run directory. An empty ``variants`` means a single run. ``sweep.seeds = [0, 1, 2]``
runs every variant with each seed (``<variant>_s<seed>``, ``train.seed`` bound last), and
``sweep.comparison = @comparison()`` compares the variants (its arms) over those seeds once the
sweep is done (``comparison``: e.g. adaptive batches against fixed ones). ``write_hparams`` gives a
sweep the TensorBoard HParams dashboard a study has: one session per variant, written from its
result.json after the sweep (``<run>/tensorboard/hparams``), and the columns in
``<group>/tensorboard``.
"""

import dataclasses
import os
import shutil

import gin

from callbacks import hparams as hparams_lib
from experiments.common import checks


@gin.configurable
def sweep(variants=None, report_columns=None, seeds=None, seed_parameters=(), comparison=None):
    """Returns (ordered variant dict or None, columns of the printed table or None, the
    comparison or None).

    Args:
      variants: {name: [gin bindings]} (or a list: named ``variant0``, ...).
      report_columns: the printed table's columns ((title, dotted result key), ...).
      seeds: each variant is run once per seed, named ``<name>_s<seed>`` with
        ``train.seed = <seed>`` after its own bindings.
      seed_parameters: more parameters bound to each run's seed, e.g. ``['nqm.seed']`` (a data
        source that draws its rows from a seed of its own).
      comparison: ``@comparison()`` (``launch.comparison``): after the sweep, its variants
        (arms) are compared over the seeds and the verdicts written beside ``table.txt``; the
        returned one knows its arms' run names.
    """
    if variants is None:
        if seeds is not None or comparison is not None:
            raise ValueError("sweep.seeds and sweep.comparison apply to the runs of "
                             "sweep.variants; bind sweep.variants too.")
        return None, report_columns, None
    if isinstance(variants, (list, tuple)):
        variants = {f"variant{i}": v for i, v in enumerate(variants)}
    for name, bindings in variants.items():
        _check_variant_name(name)
        if isinstance(bindings, str) or not all(isinstance(b, str) for b in bindings):
            raise ValueError(
                f"sweep.variants[{name!r}] must be a list of gin binding strings, got "
                f"{bindings!r}.")
    runs, arms = dict(variants), {name: [name] for name in variants}
    if seed_parameters and seeds is None:
        raise ValueError("sweep.seed_parameters are bound to each seed of sweep.seeds; bind "
                         "sweep.seeds too.")
    if seeds is not None:
        seeds = _seeds(seeds)
        parameters = ["train.seed"] + _parameters(seed_parameters)
        runs = {f"{name}_s{seed}": list(bindings) + [f"{p} = {seed}" for p in parameters]
                for name, bindings in variants.items() for seed in seeds}
        arms = {name: [f"{name}_s{seed}" for seed in seeds] for name in variants}
    if comparison is not None:
        if comparison.reference not in arms:
            raise ValueError(f"comparison.reference = {comparison.reference!r} is not a "
                             f"variant of sweep.variants ({', '.join(arms)}).")
        comparison = dataclasses.replace(comparison, arms=arms)
    return runs, report_columns, comparison


# Names inside a sweep's directory that are the sweep's own (its HParams config, its tables).
RESERVED_NAMES = ("tensorboard",)
RESERVED_SUFFIXES = (".json", ".txt", ".md", ".png")


def _check_variant_name(name):
    """A variant names its run directory inside the sweep's: one directory name (a string, no
    '/', not '..' or hidden), and none of the sweep's own files (its ``tensorboard/`` is
    rewritten after every sweep: a variant of that name would lose its run)."""
    if (not isinstance(name, str) or not name.strip() or name.startswith(".")
            or any(c in name for c in "/\\\0")):
        raise ValueError(f"sweep.variants: a variant's name must be a single directory name (a "
                         f"string, no '/', not '..'), got {name!r}.")
    if name in RESERVED_NAMES or name.endswith(RESERVED_SUFFIXES):
        raise ValueError(f"sweep.variants: {name!r} is the name of one of the sweep's own files "
                         f"({', '.join(RESERVED_NAMES)}, *{', *'.join(RESERVED_SUFFIXES)}); "
                         "rename the variant.")


def _parameters(names):
    if isinstance(names, str) or not all(isinstance(n, str) and "." in n for n in names):
        raise ValueError(f"sweep.seed_parameters must be a list of parameters such as "
                         f"['nqm.seed'], got {names!r}.")
    return [n for n in names if n != "train.seed"]


def _seeds(seeds):
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (list, tuple)) or not seeds:
        raise ValueError(f"sweep.seeds must be a non-empty list of seeds, got {seeds!r}.")
    checked = [checks.non_negative_int(seed, "sweep.seeds") for seed in seeds]
    if len(set(checked)) != len(checked):
        raise ValueError(f"sweep.seeds repeats a seed: {list(seeds)!r}.")
    return checked


# ---- HParams --------------------------------------------------------------------------------

# Columns every variant is shown with, read from its own configuration.
BASE_HPARAMS = {"batch_size": "train.batch_size", "micro_batch_size": "train.micro_batch_size",
                "epochs": "train.epochs", "seed": "train.seed"}
# What a finished run's result.json knows for certain (it replaces the bindings' values).
RESULT_HPARAMS = ("batch_size", "micro_batch_size", "epochs", "seed")
# Per-run HParams columns besides the final epoch's metrics.
SWEEP_METRICS = ("examples_per_sec",)
HPARAMS_DIR = "hparams"  # <run>/tensorboard/hparams: the session the sweep writes


def bound_parameters(runs):
    """{column: binding} of each parameter some variant binds (macros and imports left out), in
    order of first appearance: every variant gets a column for each, with its own value, so a
    column never holds a value no run had. The column names the configurable by its last name
    (``SGD.momentum``); the binding keeps the selector as the variant wrote it, which is what
    gin can look up (``MeanSquaredError`` alone names a loss and a metric)."""
    from experiments.launch import precedence  # noqa: PLC0415  (launch imports this module)

    columns = {}
    for run in runs:
        for binding in run.bindings:
            key = precedence.binding_key(binding)
            if key is None or key[1] == precedence.MACRO:
                continue
            scope, configurable, parameter = key
            column = f"{scope + '/' if scope else ''}{configurable}.{parameter}"
            columns.setdefault(column, binding.split("=", 1)[0].strip())
    return columns


def configured_hparams(parameters, value_of):
    """(columns, optimizer) of the run whose configuration gin holds, read with ``value_of``
    (``gin_config.effective_value``: the binding, macros resolved, else the signature's
    default): B, b (B when unset), epochs, seed, the learning rate of the optimizer
    ``train.optimizer`` refers to (``optimizer``: its last name, e.g. ``Adam``) and each of
    ``parameters`` ({column: binding}, ``bound_parameters``; ``train.<p>`` as ``p``). Read
    per variant, a variant that changes the optimizer, or sets B by a macro, shows what it
    trains with even when it fails."""
    values = {name: value_of(binding) for name, binding in BASE_HPARAMS.items()}
    if values["micro_batch_size"] is None:
        values["micro_batch_size"] = values["batch_size"]  # b = B unless set
    reference, optimizer = value_of("train.optimizer"), None
    if isinstance(reference, gin.config.ConfigurableReference):
        selector = reference.configurable.selector
        values["learning_rate"] = value_of(f"{selector}.learning_rate")
        optimizer = selector.rsplit(".", 1)[-1]
    for column, binding in parameters.items():
        values[column[len("train."):] if column.startswith("train.") else column] = \
            value_of(binding)
    return {name: _plain(value) for name, value in values.items()}, optimizer


def _plain(value):
    """A value the HParams dashboard takes: numbers, str, bool and None as they are, else text
    (a gin reference as ``@name``, a tuple as its repr)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def fold_learning_rates(configured):
    """{run: columns} from {run: (columns, optimizer)}: a variant's binding of its optimizer's
    rate (``SGD.learning_rate``) is the ``learning_rate`` column, not a column of its own."""
    optimizers = {optimizer for _, optimizer in configured.values() if optimizer}
    folded = {f"{optimizer}.learning_rate" for optimizer in optimizers}
    return {name: {k: v for k, v in columns.items() if k not in folded}
            for name, (columns, _) in configured.items()}


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _one_kind_per_column(sessions):
    """Each column of one kind, so that the dashboard can type, filter and plot it: where a
    failed run alone holds text among numbers (a schedule it never ran to its peak) the text is
    left out of its session; text among numbers otherwise (``None`` beside 0.1) makes the whole
    column text."""
    columns = dict.fromkeys(name for session in sessions for name in session["values"])
    for column in columns:
        entries = [s for s in sessions if column in s["values"]]
        numbers = [s for s in entries if _is_number(s["values"][column])]
        others = [s for s in entries if not _is_number(s["values"][column])]
        if not numbers or not others:
            continue
        if all(s["status"] == "failed" for s in others):
            for session in others:
                del session["values"][column]
        else:
            for session in entries:
                value = session["values"][column]
                session["values"][column] = "none" if value is None else str(value)


def write_hparams(group_dir, runs, outcomes_by_name, configured):
    """The sweep's HParams: each run's session (its variant's hyperparameters, ``configured``
    {run: columns} as ``fold_learning_rates`` gives them, the final epoch's metrics and
    examples/s from its result.json, its status) in ``<run>/tensorboard/hparams``, and the
    experiment config (one column per hyperparameter and metric, each column's values those its
    sessions hold) in ``<group>/tensorboard``. Both are rewritten whole at every launch of the
    sweep (a relaunch leaves one session per run). Returns {run name: {tag: value}} written."""
    sessions = []
    for run in runs:
        outcome = outcomes_by_name.get(run.name)
        if outcome is None or outcome.status not in ("finished", "failed"):
            continue  # running in another launch: its session is written when it is done
        run_dir = outcome.run_dir or os.path.join(group_dir, run.name)
        if not os.path.isdir(run_dir):
            continue  # failed before it had a directory
        values = dict(configured.get(run.name) or {})
        result = outcome.result if outcome.status == "finished" else None
        metrics, step = {}, 0
        if result:
            values.update({k: _plain(result[k]) for k in RESULT_HPARAMS
                           if result.get(k) is not None})
            if not _is_number(values.get("learning_rate")) \
                    and _is_number(result.get("peak_learning_rate")):
                # a schedule (its gin reference): the rate column holds its peak, a number
                values["learning_rate"] = float(result["peak_learning_rate"])
            metrics = hparams_lib.final_metrics(result.get("final_epoch") or {})
            metrics.update({k: float(result[k]) for k in SWEEP_METRICS
                            if _is_number(result.get(k))})
            step = int(result.get("updates") or 0)
        sessions.append({"run": run.name, "values": values, "metrics": metrics, "step": step,
                         "status": outcome.status,
                         "log_dir": os.path.join(run_dir, "tensorboard", HPARAMS_DIR)})
    _one_kind_per_column(sessions)
    written = {}
    for session in sessions:
        shutil.rmtree(session["log_dir"], ignore_errors=True)
        written[session["run"]] = hparams_lib.write_session(
            session["log_dir"], session["values"], session["run"], session["metrics"],
            session["step"], "success" if session["status"] == "finished" else "failure")
    if not sessions:
        return written
    names = list(dict.fromkeys(k for session in sessions for k in session["values"]))
    domains = {name: [s["values"][name] for s in sessions if name in s["values"]]
               for name in names}
    tags = list(dict.fromkeys(m for session in sessions for m in session["metrics"]))
    config_dir = os.path.join(group_dir, "tensorboard")
    shutil.rmtree(config_dir, ignore_errors=True)
    hparams_lib.write_experiment_config(config_dir, domains, tags or list(SWEEP_METRICS))
    return written
