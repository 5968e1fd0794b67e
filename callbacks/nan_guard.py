"""Stops a run at the first non-finite loss with an error that says where it happened."""

import math

import keras


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

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"The training loss became {float(loss)} at update {batch + 1} of epoch "
                f"{self._epoch + 1}: lower the learning rate, check the data for NaN/inf, or "
                "use a float32 policy.")
