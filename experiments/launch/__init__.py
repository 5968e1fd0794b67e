"""Launching: from flags and gin files to runs (the top layer, below ``main.py`` only).

- ``registry``: imports every module that defines configurables, registers Keras built-ins.
- ``gin_config``: parsing files and bindings, with errors that name the file, line and the nearest
  valid names (``ConfigError``).
- ``sweep``: several runs that differ by a few bindings (``sweep.variants``), optionally each
  with several seeds (``sweep.seeds``).
- ``comparison``: a sweep's variants (arms) compared over their seeds once it is done
  (``sweep.comparison = @comparison()``: an adaptive batch against fixed ones).
- ``study``, ``grid``, ``points``: batch-size studies (``study.*``): axes -> named runs with
  their bindings, each parsed and checked before anything runs; sweeps use the same run list.
- ``executor``, ``worker``, ``worker_processes``, ``outcomes``: runs in this process or in
  ``--jobs`` worker processes (the executor's slots; the worker protocol's two sides; how each
  run ended and the progress lines); a failing run never stops the others.
- ``study_dir``, ``study_launch``, ``study_reporting``: ``study.json``, relaunch (finished runs
  skipped, interrupted ones resumed, failed ones rerun), ``--shard``, the report and its
  TensorBoard images.
- ``resume``: ``--resume=RUN_DIR``.
- ``precedence``: command-line bindings applied after a variant's or study run's own, each
  override announced (a study axis erased is refused).
- ``listing``: ``--list=DIR`` (imports no TensorFlow).
- ``launcher``: ``launch(gin_files, gin_bindings, output_dir)``: one run, a sweep or a study.
- ``spares``: the worker command and its environment, and workers ``main.py`` starts before it
  imports TensorFlow (importing it imports no TensorFlow, so this package's own names below are
  loaded on first use).

Layers (each imports only layers below it; ``tests/test_architecture.py`` walks the imports):
``launch`` > ``run`` > ``callbacks`` > ``engine``, ``inputs``, ``models``, ``analysis`` >
``common``.
"""

import importlib

_NAMES = {"ConfigError": "gin_config", "parse": "gin_config", "QUICKSTART": "launcher",
          "experiment_name": "launcher", "launch": "launcher"}


def __getattr__(name):
    """``ConfigError``, ``parse``, ``QUICKSTART``, ``experiment_name``, ``launch``, imported on
    first use (they import TensorFlow; ``experiments.launch.spares`` must not)."""
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    globals()[name] = value
    return value
