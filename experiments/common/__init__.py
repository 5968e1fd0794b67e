"""The lowest layer: small helpers every other layer may use (checks, paths, memory, and the
noise scale's statistics, which the probe callback and the study analysis share).

Nothing here imports TensorFlow, Keras or gin, or any other part of batchlab (NumPy and SciPy
only).
"""
