"""From command-line flags to runs: parse gin (with helpful errors), expand sweeps, print tables.

Everything that can be wrong with the configuration is found here, before any run directory is
made: missing gin files, syntax errors, unknown configurables or parameters (with the nearest valid
names), and bad bindings in any variant of a sweep.
"""

import datetime
import difflib
import importlib.util  # noqa: F401  (gin reports missing files through importlib.util)
import inspect
import json
import os
import re

import gin

from experiments import registry  # noqa: F401  (register before parsing)
from experiments import report
from experiments import runner
from experiments import sweep as sweep_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join("gin", "quickstart.gin")


class ConfigError(ValueError):
    """A configuration problem, explained for the user."""


def _registered_names():
    names = set()
    for selector, _ in gin.config._REGISTRY.items():
        names.add(selector)
        names.add(selector.rsplit(".", 1)[-1])
    return sorted(names)


def _suggest(word, candidates):
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def explain(error):
    """Turns a gin parse error into a ConfigError that names the closest valid names."""
    text = str(error)
    unknown = re.search(r"No configurable matching '([^']+)'", text)
    if unknown:
        name = unknown.group(1)
        return ConfigError(f"Unknown configurable '{name}'.{_suggest(name, _registered_names())}"
                           f"\n{text}")
    parameter = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", text)
    if parameter:
        name, param = parameter.groups()
        try:
            target = gin.config._REGISTRY.get_match(name).wrapped
            target = target.__init__ if inspect.isclass(target) else target
            params = [p for p in inspect.signature(target).parameters if p != "self"]
        except (KeyError, AttributeError, TypeError, ValueError):
            params = []
        return ConfigError(f"'{name}' has no parameter '{param}'.{_suggest(param, params)} "
                           f"Its parameters: {', '.join(params)}.\n{text}")
    if isinstance(error, SyntaxError) or type(error).__name__ == "TokenError":
        return ConfigError(f"gin syntax error: {text}")
    if isinstance(error, OSError):
        return ConfigError(f"Missing gin file: {text}")
    return ConfigError(f"{type(error).__name__}: {text}")


def resolve_gin_file(path):
    """A gin file as given, or relative to the repository root; a clear error if neither exists."""
    for candidate in (path, os.path.join(REPO_ROOT, path)):
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"Gin file not found: {path!r} (also looked in {REPO_ROOT}).")


def parse(gin_files, gin_bindings):
    """Clears gin and parses files then bindings, in order; raises ConfigError on any problem."""
    files = [resolve_gin_file(f) for f in gin_files]
    gin.clear_config()
    gin.add_config_file_search_path(REPO_ROOT)
    try:
        gin.parse_config_files_and_bindings(files, list(gin_bindings), skip_unknown=False)
    except Exception as error:  # gin raises many types; each is explained below
        raise explain(error) from error
    return files


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
        print_fn(report.format_table([result]))
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
    table = report.format_table(results, _columns(columns))
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
        return report.DEFAULT_COLUMNS
    return tuple(tuple(c) for c in columns)


def _query(binding, default=None):
    """A bound value with macros resolved (``%BATCH``); ``default`` when unbound."""
    try:
        value = gin.query_parameter(binding)
    except ValueError:
        return default
    if isinstance(value, gin.config.ConfigurableReference) and \
            value.configurable.name == "macro":
        value = value.scoped_configurable_fn()
    return value


def _check_variant(name):
    """Cheap checks on a variant's batch layout before the first run starts."""
    batch = _query("train.batch_size")
    micro = _query("train.micro_batch_size")
    if batch is None or isinstance(batch, gin.config.ConfigurableReference) or \
            isinstance(micro, gin.config.ConfigurableReference):
        return
    try:
        runner.check_virtual_batch(batch, micro, None)
    except ValueError as error:
        raise ConfigError(f"In sweep variant {name!r}: {error}") from error
