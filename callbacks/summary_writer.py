"""Shared helper: one TensorBoard writer per (log_dir, subdirectory), created lazily."""

import os

import tensorflow as tf

_WRITERS = {}


def writer_for(log_dir, subdir="train"):
    """Returns a summary writer for ``log_dir/subdir`` (None when ``log_dir`` is None)."""
    if log_dir is None:
        return None
    path = os.path.join(log_dir, subdir)
    if path not in _WRITERS:
        _WRITERS[path] = tf.summary.create_file_writer(path)
    return _WRITERS[path]


def close_all():
    """Flushes and forgets every writer (called at the end of a run)."""
    for writer in _WRITERS.values():
        writer.flush()
        writer.close()
    _WRITERS.clear()
