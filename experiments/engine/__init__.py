"""The training engine: one exact update per virtual batch, on one device or several.

- ``virtual_batch_model``: ``VirtualBatchModel`` and ``as_virtual_batch_model``.
- ``accumulation``: the micro-batch loop, the normalisation, regularizers (module functions).
- ``loss_terms``: a Keras loss split into numerator and denominator, so micro-batches add up.
- ``step_measurements``, ``noise_scale``: what the step measures (gradient norms, noise scale).
- ``schedule``: which updates are measured and where the loop's graph calls end (the one place).
- ``measurement``: the one shape of a per-update measurement, and how a loop runs it.
- ``evaluation``, ``inference``: the one route evaluating a fixed set of rows.
- ``states``: stateful layers' state (reset, snapshot, isolation) and other layer facts.
- ``distribute``, ``custom_loop``, ``graph_calls``: strategies as gin choices; fit and evaluate
  under them, and the loop's graph functions.
- ``keras_internals``: every use of private Keras and TensorFlow API, each with its reason.

Imports only ``experiments.common``. Callbacks use only public names of this package.
"""
