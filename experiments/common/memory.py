"""Peak memory of this process, as reported in ``result.json`` and TensorBoard."""

import resource


def peak_memory_mb():
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_gpu_memory_mb():
    """TensorFlow's peak allocation on the first GPU in MiB, or None without a GPU.

    TensorFlow is imported here, not at module level: this layer stays importable without it.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if not tf.config.list_logical_devices("GPU"):
        return None
    try:
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2.0 ** 20
    except (ValueError, RuntimeError):
        return None
