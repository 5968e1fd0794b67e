"""Launching: from flags and gin files to runs (the top layer, below ``main.py`` only).

- ``registry``: imports every module that defines configurables, registers Keras built-ins.
- ``gin_config``: parsing files and bindings, with errors that name the file, line and the nearest
  valid names (``ConfigError``).
- ``sweep``: several runs that differ by a few bindings (``sweep.variants``).
- ``launcher``: ``launch(gin_files, gin_bindings, output_dir)``: one run or a sweep, then a table.

Layers (each imports only layers below it; ``tests/test_architecture.py`` walks the imports):
``launch`` > ``run`` > ``callbacks`` > ``engine``, ``inputs``, ``models``, ``analysis`` >
``common``.
"""

from experiments.launch.gin_config import ConfigError, parse  # noqa: F401
from experiments.launch.launcher import QUICKSTART, experiment_name, launch  # noqa: F401
