"""Distance of the weights from their initial values, ||w_t - w_0|| (Hoffer et al. 2017).

Hoffer et al. observe that the weights travel roughly like a random walk, ||w_t - w_0|| ~ log t,
and that large batches, taking fewer updates, simply travel less far: their "generalization gap"
closes when the number of updates is matched. This callback records w_0 when training starts
(the first ``fit`` only, so resumed calls keep measuring from the true start; one extra copy of
the weights in memory) and logs, keyed by the update count:

- ``weights/distance_from_init``: ||w - w_0|| over all trainable variables;
- ``weights/relative_distance_from_init``: ||w - w_0|| / ||w_0||;
- ``weights/distance_from_init/layer/<NN_layer>``: the same distance per layer (layer names as
  in ``callbacks.gradient_norm.layer_groups``: ``01_dense``, ...).

It logs at each epoch end and, with ``every_n_updates``, also every that many updates: one pass
over the weights each time, in a single graph call (in batchlab's loop, inside the train chunk's
call: ``update_probe``).
"""

import numpy as np
import tensorflow as tf

from callbacks.base import UpdateClock
from callbacks.gradient_norm import SquaredSums, layer_groups, norms64
from experiments.common import checks
from experiments.engine.step_measurements import UpdateProbe


class WeightDistance(UpdateClock):
    """Args:
      log_dir: TensorBoard directory; None keeps values only (``self.history``).
      every_n_updates: also log every that many updates (None: at epoch ends only).
      per_layer: also log one distance per layer.
    """

    def __init__(self, log_dir=None, every_n_updates=None, per_layer=True):
        super().__init__(log_dir)
        self.every_n_updates = checks.optional_positive_int(every_n_updates, "every_n_updates")
        self.per_layer = bool(per_layer)
        self._initial = None
        self._last_update = None
        self._probe = None
        self._probed = False

    def on_train_begin(self, logs=None):
        variables = self.model.trainable_variables
        self._groups = layer_groups(variables)
        self._sums = SquaredSums(self._groups, len(variables))
        self._tags = [f"weights/distance_from_init/layer/{layer}" for layer in self._groups]
        self._probed = False
        if self._initial is not None:
            return
        self._initial = [tf.Variable(tf.convert_to_tensor(v), trainable=False) for v in variables]
        initial = self._initial
        sizes = np.array([np.linalg.norm(np.ravel(w0.numpy()).astype(np.float64))
                          for w0 in initial])
        self._initial_norm = float(np.sqrt(np.sum(sizes ** 2)))

        def distances():
            return norms64(v - w0 for v, w0 in zip(self.model.trainable_variables, initial))

        # One graph call per logged value (a concrete function skips the tracing-cache lookup).
        self._distances = tf.function(distances).get_concrete_function()
        if self.every_n_updates is not None:
            # Logged updates and the epoch's last (which ``on_epoch_end`` then finds logged).
            self._probe = UpdateProbe(self.every_n_updates, lambda update: distances(),
                                      shape=(len(variables),), receive=self.log)

    def update_probe(self):
        """The per-update measurement as an ``UpdateProbe`` for batchlab's loop (the batch hook
        then does nothing in this ``fit``); None without ``every_n_updates``."""
        if self._probe is not None:
            self._probed = True
        return self._probe

    def measure(self, distances=None):
        """``distances``: the per-variable distances, when read inside the train chunk."""
        distances = self._distances().numpy() if distances is None else distances
        totals, layers = self._sums(distances[None])
        total = float(np.sqrt(totals[0]))
        values = {"weights/distance_from_init": total}
        if self._initial_norm > 0:
            values["weights/relative_distance_from_init"] = total / self._initial_norm
        if self.per_layer:
            values.update(zip(self._tags, np.sqrt(layers[0]).tolist()))
        return values

    def log(self, update, distances=None):
        if update == self._last_update:
            return
        self._last_update = update
        self.publish(update, self.measure(distances))

    def on_train_batch_end(self, batch, logs=None):
        if self._probed:
            return
        if self.every_n_updates is not None and self.is_logged(batch, self.every_n_updates,
                                                               at_epoch_end=False):
            self.log(self.update_after(batch))

    def on_epoch_end(self, epoch, logs=None):
        self.log(self.current_update())

    def result(self):
        return {k: v for k, v in super().result().items() if "/layer/" not in k}
