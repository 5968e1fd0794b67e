"""Launching: from flags and gin files to runs (the top layer, below ``main.py`` only).

- ``registry``: imports every module that defines configurables, registers Keras built-ins.
- ``gin_config``: parsing files and bindings, with errors that name the file, line and the nearest
  valid names (``ConfigError``).
- ``sweep``: several runs that differ by a few bindings (``sweep.variants``).
- ``study``, ``grid``, ``points``: batch-size studies (``study.*``): axes -> named runs with
  their bindings, each parsed and checked before anything runs; sweeps use the same run list.
- ``executor``, ``worker``: runs in this process or in ``--jobs`` worker processes; a failing
  run never stops the others.
- ``study_dir``, ``study_launch``, ``study_reporting``: ``study.json``, relaunch (finished runs
  skipped, interrupted ones resumed, failed ones rerun), ``--shard``, the report and its
  TensorBoard images.
- ``resume``: ``--resume=RUN_DIR``.
- ``launcher``: ``launch(gin_files, gin_bindings, output_dir)``: one run, a sweep or a study.

Layers (each imports only layers below it; ``tests/test_architecture.py`` walks the imports):
``launch`` > ``run`` > ``callbacks`` > ``engine``, ``inputs``, ``models``, ``analysis`` >
``common``.
"""

from experiments.launch.gin_config import ConfigError, parse  # noqa: F401
from experiments.launch.launcher import QUICKSTART, experiment_name, launch  # noqa: F401
