"""Every run of a sweep or study is checked before the first one starts.

Each run's bindings are parsed on top of the base files and bindings (an unknown or misspelt
binding fails here, naming the run), and its batch layout (B, b) is checked, so a bad grid point
of that kind never surfaces after an hour of other runs. Its data is not loaded here (it may
depend on the run's own bindings, and loading every run's would cost what the runs cost to
start): a batch larger than the data fails when that run starts, the others going on.
"""

import gin

from experiments.inputs.layout import check_virtual_batch
from experiments.launch.gin_config import ConfigError, parse, query


def check_all(gin_files, gin_bindings, runs, label, inspect=None):
    """Parses and checks every RunSpec; ConfigError "In <label> '<name>': ..." on the first bad
    one. Leaves gin holding the base configuration. ``inspect(run)``, called while gin holds
    that run's configuration, reads what the run will be configured with (a sweep's HParams
    columns: a variant that fails before it writes a result is still shown with its own
    values); returns {run name: what it returned}."""
    seen = {}
    for run in runs:
        try:
            parse(gin_files, list(gin_bindings) + list(run.bindings))
        except ConfigError as error:
            raise ConfigError(f"In {label} {run.name!r}: {error}") from error
        check_layout(run.name, label)
        if query("train.mode") == "find_micro_batch":  # a variant's own binding of the mode
            raise ConfigError(f"In {label} {run.name!r}: train.mode = 'find_micro_batch' cannot "
                              "run inside a sweep or a study: run the finder on one "
                              "configuration.")
        if inspect is not None:
            seen[run.name] = inspect(run)
    parse(gin_files, gin_bindings)
    return seen


def check_layout(name, label):
    """Cheap checks on the run's batch layout (B, b) under the current gin config."""
    batch = query("train.batch_size")
    micro = query("train.micro_batch_size")
    if batch is None or isinstance(batch, gin.config.ConfigurableReference) or \
            isinstance(micro, gin.config.ConfigurableReference):
        return
    try:
        check_virtual_batch(batch, micro)
    except ValueError as error:
        raise ConfigError(f"In {label} {name!r}: {error}") from error
