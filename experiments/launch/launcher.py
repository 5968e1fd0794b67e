"""From command-line flags to runs: parse gin, expand sweeps, run, print tables.

Every variant of a sweep is parsed and its batch layout checked before the first run starts.
"""

import datetime
import json
import os

import gin

from experiments.analysis import tables
from experiments.inputs.layout import check_virtual_batch
from experiments.launch import sweep as sweep_lib
from experiments.launch.gin_config import ConfigError, parse, query
from experiments.run import runner

QUICKSTART = os.path.join("gin", "quickstart.gin")


def experiment_name(gin_files):
    return os.path.splitext(os.path.basename(gin_files[-1]))[0] if gin_files else "quickstart"


def launch(gin_files=(), gin_bindings=(), output_dir="runs", print_fn=print):
    """Runs what the gin files describe (one run or a sweep); returns the list of results."""
    gin_files = list(gin_files) or [QUICKSTART]
    files = parse(gin_files, gin_bindings)
    experiment = experiment_name(files)
    variants, columns = sweep_lib.sweep()
    if not variants:
        result = runner.train(output_dir=output_dir, experiment=experiment,
                              config_text=gin.config_str())
        result["run"] = experiment
        print_fn(tables.format_table([result]))
        return [result]

    for name, bindings in variants.items():  # every variant parses before anything runs
        try:
            parse(files, list(gin_bindings) + list(bindings))
        except ConfigError as error:
            raise ConfigError(f"In sweep variant {name!r}: {error}") from error
        _check_variant(name)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    group = f"{experiment}/{stamp}"
    results = []
    for name, bindings in variants.items():
        parse(files, list(gin_bindings) + list(bindings))
        print_fn(f"\n=== {experiment}: {name} ({'; '.join(bindings)})")
        result = runner.train(output_dir=output_dir, experiment=group, run_name=name,
                              config_text=gin.config_str())
        result["run"] = name
        results.append(result)
    table = tables.format_table(results, _columns(columns))
    group_dir = os.path.join(output_dir, experiment, stamp)
    with open(os.path.join(group_dir, "table.txt"), "w") as handle:
        handle.write(table + "\n")
    with open(os.path.join(group_dir, "sweep.json"), "w") as handle:
        json.dump({"variants": variants, "runs": [r["run_dir"] for r in results]}, handle,
                  indent=2)
    print_fn("\n" + table)
    print_fn(f"\nRuns: {group_dir}   (tensorboard --logdir {output_dir})")
    return results


def _columns(columns):
    if not columns:
        return tables.DEFAULT_COLUMNS
    return tuple(tuple(c) for c in columns)


def _check_variant(name):
    """Cheap checks on a variant's batch layout before the first run starts."""
    batch = query("train.batch_size")
    micro = query("train.micro_batch_size")
    if batch is None or isinstance(batch, gin.config.ConfigurableReference) or \
            isinstance(micro, gin.config.ConfigurableReference):
        return
    try:
        check_virtual_batch(batch, micro)
    except ValueError as error:
        raise ConfigError(f"In sweep variant {name!r}: {error}") from error
