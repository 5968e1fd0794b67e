"""The lowest layer: small helpers every other layer may use (checks, paths, memory).

Nothing here imports TensorFlow, Keras or gin, or any other part of batchlab.
"""
