"""The training engine: one exact update per virtual batch, on one device or several.

- ``virtual_batch_model``: ``VirtualBatchModel`` and ``as_virtual_batch_model``.
- ``accumulation``: the micro-batch loop, the normalisation, regularizers (module functions).
- ``loss_terms``: a Keras loss split into numerator and denominator, so micro-batches add up.
- ``step_measurements``, ``noise_scale``: what the step measures (gradient norms, noise scale).
- ``states``: stateful layers' state (reset, snapshot, isolation) and other layer facts.
- ``distribute``, ``custom_loop``: strategies as gin choices; fit and evaluate under them.

Imports only ``experiments.common``. Callbacks use only public names of this package.
"""
