"""Inputs: where examples come from and how they are batched (a layer below ``run/``).

- ``dataset``: ``Data``, ``DataSpec``, ``Pipelines`` (what sources hand over).
- ``layout``: ``BatchLayout`` (B, b, k, T, S, eval batch, updates per epoch), built and checked once.
- ``pipelines``: ``tf.data`` pipelines from a ``Data`` and its layout.
- ``files``: strict readers for csv, npz, npy and text files; the character vocabulary.
- ``arrays``, ``synthetic``: in-memory sources; ``streams``, ``stream_sources``: stateful streams.

Imports only ``experiments.common``.
"""
