"""``--resume=RUN_DIR``: continue a run from its own ``config.gin``, wherever it lies.

The run directory holds every binding the run was started with (``config.gin``), so no gin file
or binding is needed: the run is parsed from it and trained on from its newest checkpoint into
the same directory. A finished run is refused, as is one that is still alive.
"""

import os

from experiments.launch.gin_config import ConfigError, parse
from experiments.launch.study import study
from experiments.launch.sweep import sweep
from experiments.run import runner


def resume(path):
    """Trains the run at ``path`` on from its newest checkpoint; returns its result dict."""
    path = os.path.abspath(path)
    config = os.path.join(path, "config.gin")
    if not os.path.isfile(config):
        raise ConfigError(f"--resume={path}: no config.gin there; is it a run directory?")
    parse([config], [])
    sweep()  # a sweep variant's or a study run's config names its group: not this run's business
    study()
    experiment_dir = os.path.dirname(path)
    with open(config) as handle:
        config_text = handle.read()  # the run's own text: the same configuration by definition
    in_group = any(os.path.isfile(os.path.join(experiment_dir, name))
                   for name in ("sweep.json", "study.json"))  # a sweep's or study's run
    return runner.train(output_dir=os.path.dirname(experiment_dir),
                        experiment=os.path.basename(experiment_dir),
                        run_name=os.path.basename(path), config_text=config_text, resumable=True,
                        in_group=in_group)
