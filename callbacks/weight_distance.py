"""Distance of the weights from their initial values, ||w_t - w_0|| (Hoffer et al. 2017).

Hoffer et al. observe that the weights travel roughly like a random walk, ||w_t - w_0|| ~ log t,
and that large batches, taking fewer updates, simply travel less far: their "generalization gap"
closes when the number of updates is matched. This callback records w_0 when training starts
(the model's first ``fit`` only, so resumed calls keep measuring from the true start; one extra
copy of the weights in memory; a new model gets its own) and logs, keyed by the update count:

- ``weights/distance_from_init``: ||w - w_0|| over all trainable variables;
- ``weights/relative_distance_from_init``: ||w - w_0|| / ||w_0||;
- ``weights/distance_from_init/layer/<NN_layer>``: the same distance per layer (layer names as
  in ``callbacks.gradient_norm.layer_groups``: ``01_dense``, ...).

It logs at each epoch end and, with ``every_n_updates``, also every that many updates: one pass
over the weights each time, read inside batchlab's train call (a ``Measurement``,
``experiments.engine.measurement``; in Keras' own ``fit`` it is a callback like any other).
"""

import numpy as np
import tensorflow as tf

from callbacks.base import LoggedMeasurement
from callbacks.gradient_norm import SquaredSums, layer_groups, norms64
from experiments.common import checks
from experiments.engine.schedule import Cadence


class WeightDistance(LoggedMeasurement):
    """Args:
      log_dir: TensorBoard directory; None keeps values only (``self.history``).
      every_n_updates: also log every that many updates (None: at epoch ends only).
      per_layer: also log one distance per layer.
    """

    def __init__(self, log_dir=None, every_n_updates=None, per_layer=True):
        super().__init__(log_dir)
        self.every_n_updates = checks.optional_positive_int(every_n_updates, "every_n_updates")
        self.cadence = Cadence(self.every_n_updates, at_epoch_end=True)
        self.per_layer = bool(per_layer)
        self._initial = None
        self._initial_for = None  # the model whose w_0 ``_initial`` holds
        self._last_update = None

    def start(self, model):
        self.set_model(model)
        variables = model.trainable_variables
        self._groups = layer_groups(variables)
        self._sums = SquaredSums(self._groups, len(variables))
        self._tags = [f"weights/distance_from_init/layer/{layer}" for layer in self._groups]
        self.shape = (len(variables),)
        if self._initial_for is not model:  # another model: its own w_0, its own traced read
            self._initial, self._initial_for, self._own_call = None, model, None
            self._last_update = None
        if self._initial is None:  # w_0: the model's first fit only, so later fits measure from it
            self._initial = [tf.Variable(tf.convert_to_tensor(v), trainable=False)
                             for v in variables]
            sizes = np.array([np.linalg.norm(np.ravel(w0.numpy()).astype(np.float64))
                              for w0 in self._initial])
            self._initial_norm = float(np.sqrt(np.sum(sizes ** 2)))
        return True

    def read(self, update):
        return norms64(v - w0 for v, w0 in zip(self.model.trainable_variables, self._initial))

    def values(self, update, distances):
        if update == self._last_update:
            return None
        self._last_update = update
        totals, layers = self._sums(np.asarray(distances)[None])
        total = float(np.sqrt(totals[0]))
        values = {"weights/distance_from_init": total}
        if self._initial_norm > 0:
            values["weights/relative_distance_from_init"] = total / self._initial_norm
        if self.per_layer:
            values.update(zip(self._tags, np.sqrt(layers[0]).tolist()))
        return values

    def result(self):
        return {k: v for k, v in super().result().items() if "/layer/" not in k}
