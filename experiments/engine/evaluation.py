"""The one evaluation route of a fixed set of rows: the loop's validation, the generalization gap
and the validation curve all evaluate through here.

``in_graph`` is graph code: for (x, y) rows in batchlab's loop, the forward pass per batch and the
loss and metrics once over all rows (``inference.evaluate_rows``, which itself falls back to
``test_step`` per batch wherever batching would change a value); anywhere else (sample weights,
other structures, Keras' own ``fit``, whose ``val_*`` come from ``test_step`` per batch) ``test_step``
per batch (``inference.by_batch``). Both reset the model's metrics first; ``keeping_metrics`` puts
the training metrics back afterwards, for evaluations in the middle of an epoch.

``FixedSet`` holds a set's tensors and its traced function: one graph call per evaluation;
``can_hold`` says where that applies (arrays, one replica, no stateful layers).
"""

import numpy as np
import tensorflow as tf

from experiments.engine import inference, states


def can_hold(model, data):
    """Whether ``data`` can be evaluated as a fixed set of tensors in one graph call of
    ``model``: arrays (not a dataset), one replica, and no stateful layers (their state is
    handled between batches on the host, ``states.isolated_state``). Elsewhere the caller falls
    back to ``model.evaluate`` (through the loop that trained the model, when it has one)."""
    return (not isinstance(data, tf.data.Dataset)
            and model.distribute_strategy is tf.distribute.get_strategy()
            and not states.stateful_layers(model))


def in_graph(model, data, batch_size, lean=True):
    """Graph code: ``{name: value}`` of ``model`` over ``data`` (a structure of tensors, rows on
    axis 0) in batches of ``batch_size``, as ``model.evaluate`` reports it; ``lean``: (x, y) rows
    may take ``inference.evaluate_rows``."""
    if lean and isinstance(data, tuple) and len(data) == 2:
        return inference.evaluate_rows(model, data[0], data[1], batch_size)
    return inference.by_batch(model, data, batch_size)


def keeping_metrics(model, evaluate):
    """Graph code: ``evaluate()`` (which resets and fills the model's metrics) with the metrics'
    variables saved before and restored after it, so the epoch's running training metrics are
    those of training alone."""
    variables = list(model.metrics_variables)
    saved = [tf.identity(v) for v in variables]
    results = evaluate()
    with tf.control_dependencies(tf.nest.flatten(results)):
        for variable, value in zip(variables, saved):
            variable.assign(value)
    return results


class FixedSet:
    """A fixed (x, y) set evaluated by one traced graph function.

    Args:
      model: the model to evaluate.
      data: (x, y) arrays or tensors.
      batch_size: evaluation batch size.
      lean: may take ``inference.evaluate_rows`` (see ``in_graph``).
      keep_metrics: restore the training metrics afterwards (``keeping_metrics``).
    """

    def __init__(self, model, data, batch_size, lean=True, keep_metrics=False):
        self.model = model
        self.tensors = tf.nest.map_structure(tf.convert_to_tensor, tuple(data))
        self.batch_size = int(batch_size)
        self.lean = bool(lean)
        self.keep_metrics = bool(keep_metrics)
        self._function = None

    def graph(self):
        """Graph code: ``{name: value}`` over the set (inside another graph function)."""
        def evaluate():
            return in_graph(self.model, self.tensors, self.batch_size, self.lean)

        return keeping_metrics(self.model, evaluate) if self.keep_metrics else evaluate()

    def function(self):
        """The traced function returning ``graph()``'s values (traced once)."""
        if self._function is None:
            self._function = tf.function(self.graph, autograph=False).get_concrete_function()
        return self._function

    def names(self):
        """The names ``graph()`` returns, in order."""
        return list(self.function().structured_outputs)

    def __call__(self):
        """{name: float} over the set, in one graph call."""
        return {name: float(np.asarray(value)) for name, value in self.function()().items()}
