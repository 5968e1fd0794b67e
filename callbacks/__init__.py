"""Keras callbacks of batchlab: one job each, each usable in a plain ``model.fit``."""
