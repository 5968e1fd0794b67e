"""One run: ``settings`` (grouped bindings), ``plan`` (resolved and checked before anything is
written), ``runner`` (the gin root ``train``), ``run_dir``, ``measurements`` (which callbacks a run
gets), ``stateful`` (stream-specific checks), ``seeding``.
"""
