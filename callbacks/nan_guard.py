"""Stops a run at the first non-finite loss with an error that says where it happened."""

import math

import keras

from experiments.engine.schedule import epoch_first_update


class NonFiniteLossError(FloatingPointError):
    pass


class FailOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises ``NonFiniteLossError`` when the loss of an update is NaN or infinite.

    Unlike ``keras.callbacks.TerminateOnNaN`` (which ends training quietly, so a run looks
    finished), the error reaches the runner, which marks the run as failed.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0
        self._checked = 0  # updates of the epoch whose loss was seen finite

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        # the updates this epoch ran before (a run resumed mid-epoch starts past its first)
        self._checked = int(self.model.optimizer.iterations.numpy()) \
            - epoch_first_update(self.params, self.model) if self.model is not None else 0

    def on_train_batch_end(self, batch, logs=None):
        # A loop running several updates per graph call (``steps_per_execution``) calls this
        # once per call: the loss turned non-finite somewhere after the last finite reading.
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        if math.isfinite(float(loss)):
            self._checked = batch + 1
            return
        first, last = self._checked + 1, batch + 1
        where = (f"at update {last}" if first == last else
                 f"between updates {first} and {last} (checked once per graph call of updates)")
        raise NonFiniteLossError(
            f"The training loss became {float(loss)} {where} of epoch {self._epoch + 1}: lower "
            f"the learning rate{self._policy_advice()}.")

    def _policy_advice(self):
        """", check the data for NaN/inf, or use a float32 policy" under a low-precision
        policy; without the policy advice when the model already computes in float32 or 64."""
        policy = getattr(self.model, "dtype_policy", None)
        compute = getattr(policy, "compute_dtype", None)
        if compute in (None, "float32", "float64"):
            return " or check the data for NaN/inf"
        return (f", check the data for NaN/inf, or use a float32 policy (this run computes in "
                f"{compute})")
