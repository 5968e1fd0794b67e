"""batchlab's experiments package, in layers that import only downwards.

    launch/    flags -> gin (parsing, errors, registry), sweeps        knows gin and run/
    run/       one run: settings, plan, runner, run directory,         wires everything below
               measurement wiring, stateful checks
    callbacks/ (top-level package) Keras callbacks, one job each       public names of engine/
    engine/    VirtualBatchModel, accumulation, loss terms, step       common/ only
               measurements, noise scale, states, distribution
    inputs/    BatchLayout, batch-size schedules, sources (arrays,     common/ only
               files, synthetic, streams), tf.data pipelines
    models/    builders, LR schedules, metrics                         common/ only
    analysis/  tables over finished runs                               common/ only
    common/    checks, paths, memory                                   nothing

The import rule: a package imports only packages below it in this list (``engine``, ``inputs``,
``models`` and ``analysis`` are siblings and do not import each other); ``callbacks`` imports
only ``common`` and public names of ``engine``; nothing below ``run`` reads gin globals or flags
(configurables receive their values). ``tests/test_architecture.py`` enforces it.
Data flows one way: flags -> gin -> plan -> (pipelines, model, callbacks) -> fit -> run directory
-> analysis. See docs/architecture.md.
"""
