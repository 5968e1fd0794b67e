"""Distribution strategy as a gin choice, and the fit/evaluate calls that work under it.

``strategy`` bindings name a factory here: ``@distribute.default_strategy``,
``@distribute.mirrored`` (all local devices, or N logical CPU devices for tests).
"""

import gin
import tensorflow as tf


@gin.configurable
def default_strategy():
    return tf.distribute.get_strategy()


@gin.configurable
def mirrored(num_cpu_devices=None):
    """MirroredStrategy over the local GPUs, or over ``num_cpu_devices`` logical CPUs."""
    if num_cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        existing = tf.config.get_logical_device_configuration(cpu)
        if not existing:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:num_cpu_devices]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.MirroredStrategy()


def resolve(strategy):
    """A strategy instance from a factory, an instance, or None (the default strategy)."""
    if strategy is None:
        return tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    return strategy()


def fit(model, pipelines, epochs, callbacks, strategy, verbose=1):
    """Trains with ``model.fit``; returns the history dict (metric -> per-epoch values)."""
    history = model.fit(
        pipelines.train, epochs=epochs, validation_data=pipelines.validation,
        callbacks=callbacks, verbose=verbose)
    return history.history


def evaluate(model, pipelines, strategy):
    return model.evaluate(pipelines.validation, verbose=0, return_dict=True)
