"""Logs the virtual batch B and its micro-batches k to TensorBoard as training moves through the
stages of a batch-size schedule, so that curves read against updates show where B grew.

Usable in a plain ``model.fit`` too: give it the stages (for a fixed batch, one stage).
"""

import bisect

import keras

from callbacks import summary_writer
from experiments.engine.schedule import epoch_first_update


class BatchSizeLog(keras.callbacks.Callback):
    """Writes ``batch_size`` and ``num_micro_batches`` at the update each stage starts and at each
    epoch's first update (a step curve in TensorBoard), keyed as every per-update scalar is: by
    the 1-based count of the first update that has that B.

    Args:
      stages: dicts with ``update`` (updates done when the stage starts), ``batch_size`` and
        ``num_micro_batches``, in order (``BatchLayout.stages``).
      log_dir: TensorBoard directory (scalars go to ``log_dir/train``).
    """

    def __init__(self, stages, log_dir):
        super().__init__()
        if not stages:
            raise ValueError("BatchSizeLog needs at least one stage.")
        self.stages = sorted(stages, key=lambda stage: stage["update"])
        self._starts = [stage["update"] for stage in self.stages]
        self.log_dir = log_dir
        self.history = []  # (update, batch_size, num_micro_batches)

    def stage_at(self, update):
        """The stage in effect for the update after ``update`` updates were done."""
        return self.stages[max(bisect.bisect_right(self._starts, update) - 1, 0)]

    def on_epoch_begin(self, epoch, logs=None):
        # The epoch's first update (from the loop, also in an epoch resumed mid-way): a resumed
        # run logs the same points as an uninterrupted one.
        first = epoch_first_update(self.params, self.model)
        steps = (self.params or {}).get("steps") or 1
        points = [first] + [start for start in self._starts if first < start < first + steps]
        for update in points:
            stage = self.stage_at(update)
            values = {"batch_size": stage["batch_size"],
                      "num_micro_batches": stage["num_micro_batches"]}
            self.history.append((update, values["batch_size"], values["num_micro_batches"]))
            summary_writer.scalars(self.log_dir, values, update + 1)
