"""One run: ``settings`` (grouped bindings), ``plan`` (resolved and checked before anything is
written), ``modes`` (train, LR range test, micro-batch finder: each a small class chosen once),
``runner`` (the gin root ``train``), ``run_dir``, ``checkpoints`` and ``training_state``,
``measurements`` (which measurements a run gets), ``stateful`` (stream-specific checks),
``interrupts``, ``seeding``.
"""
