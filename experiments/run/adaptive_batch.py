"""The adaptive batch's controller: every n updates, B from the measured noise scale.

The loop (``engine.custom_loop.CustomLoop``) ends a call on every multiple of
``every_n_updates`` and asks ``decide(update)`` before the callbacks see that update (so a
checkpoint saved there holds the decision), except at the run's last update, where a decision
would size no update (the log, TensorBoard and ``result.json`` would disagree). The controller
reads the train step's noise-scale averages (``model.measurements``: tr(Sigma) and the followed
|G|^2, bias-corrected, over the horizon
``measurements.gradient_noise_scale.horizon_examples``; the step samples every update in an
adaptive run), sets B = clip(c * B_simple, B_min, B_max) rounded to a multiple of b
(``inputs.adaptive_batch.target_batch_size``) and records it in the layout's
``AdaptiveUpdateSizes``, which the pipelines cut the data by. B_min is b, or 2b on one device
(one micro-batch per update would leave nothing to measure the noise with, and the batch could
never grow again).

Every decision is logged to TensorBoard at its update (``batch_size``, ``num_micro_batches``,
``adaptive_batch_size/b_simple``, ``adaptive_batch_size/target``), each change with its reason
(the log and ``result.json``'s ``batch_size_stages``); ``state()`` / ``restore()`` carry the
decisions through a checkpoint.
"""

import math

from absl import logging

from callbacks import summary_writer
from experiments.inputs.adaptive_batch import target_batch_size


class AdaptiveBatchController:
    """Args:
      model: the run's ``VirtualBatchModel`` (its ``measurements`` hold the averages).
      update_sizes: the layout's ``inputs.adaptive_batch.AdaptiveUpdateSizes``.
      num_replicas: replicas the strategy trains on (each one's batch is a piece of the noise
        scale: with two or more, B = b still measures it).
      log_dir: the run's TensorBoard directory (None: log nothing).
    """

    def __init__(self, model, update_sizes, num_replicas=1, log_dir=None):
        self.model = model
        self.sizes = update_sizes
        self.settings = update_sizes.schedule
        self.every_n_updates = self.settings.every_n_updates
        micro = update_sizes.micro_batch_size
        self.micro_batch_size = micro
        self.min_batch_size = micro if num_replicas > 1 else min(
            2 * micro, self.settings.max_batch_size)
        self.log_dir = log_dir
        # [update, |G|^2, tr(Sigma), B] at every decision (None, None: no estimate yet)
        self.history = []
        self.reasons = {0: "train.batch_size"}  # update -> why B changed there

    def decide(self, update):
        """Decides B for the updates after ``update``; returns whether it changed. B_simple is
        tr(Sigma) / |G|^2 of the averages, infinite where the |G|^2 estimate is not above 0
        while tr(Sigma)'s is (noise only: B_max). Where it is undefined (an estimate not finite,
        as after a NaN loss, or neither estimate above 0) B stays, as AdaScale's gain stays 1."""
        averages = self.model.measurements.noise_scale_values()["averages"]
        current = self.sizes.current_size
        if averages is None:
            self.history.append([update, None, None, current])
            return False
        g2, trace = averages["gradient_sq_norm"], averages["trace_sigma"]
        if not (math.isfinite(g2) and math.isfinite(trace)) or (g2 <= 0 and trace <= 0):
            self.history.append([update, g2, trace, current])
            logging.info("Update %d: batch %d kept (B_simple undefined: |G|^2 = %.4g, "
                         "tr(Sigma) = %.4g).", update, current, g2, trace)
            self._log(update, math.nan, current)
            return False
        b_simple = trace / g2 if g2 > 0 else math.inf
        size, reason = target_batch_size(b_simple, self.settings.scale, self.micro_batch_size,
                                         self.settings.max_batch_size)
        if size < self.min_batch_size:
            size, reason = self.min_batch_size, (
                f"{reason}; raised to 2b = {self.min_batch_size} (one device: an update needs "
                "two micro-batches to measure the noise)")
        tolerance = self.settings.min_relative_change
        if size != current and abs(size - current) <= tolerance * current:
            size = current  # within adaptive_batch_size.min_relative_change: B stays
        changed = self.sizes.decide(update, size)
        self.history.append([update, g2, trace, size])
        if changed:
            self.reasons[update] = reason
            logging.info("Update %d: batch %d -> %d (%s).", update, current, size, reason)
        self._log(update, b_simple, size)
        return changed

    def _log(self, update, b_simple, size):
        """B_simple at the update it was measured after (``update`` updates done), the B decided
        at the first update that trains with it (1-based ``update + 1``), as every per-update
        scalar is keyed."""
        if math.isfinite(b_simple):
            summary_writer.scalars(self.log_dir, {
                "adaptive_batch_size/b_simple": b_simple,
                "adaptive_batch_size/target": self.settings.scale * b_simple}, update)
        summary_writer.scalars(self.log_dir, {
            "batch_size": size, "num_micro_batches": size // self.micro_batch_size}, update + 1)

    def log_start(self):
        """The batch training starts (or resumes) with, at its update."""
        update = int(self.model.optimizer.iterations.numpy())
        size = self.sizes.current_size
        summary_writer.scalars(self.log_dir, {
            "batch_size": size, "num_micro_batches": size // self.micro_batch_size}, update + 1)

    def state(self):
        """What a checkpoint keeps: the decisions, their reasons and the history."""
        return {"decisions": [list(d) for d in self.sizes.decisions],
                "reasons": {str(u): r for u, r in self.reasons.items()},
                "history": self.history}

    def restore(self, state):
        """Back to a checkpoint's ``state()`` (before the pipeline reads a batch)."""
        if not state:
            return
        self.sizes.restore(state["decisions"])
        self.reasons = {int(u): r for u, r in state.get("reasons", {}).items()}
        self.history = [list(row) for row in state.get("history", [])]

    def stages(self, epochs):
        """``result.json``'s ``batch_size_stages``: each change of B with its reason."""
        return [{**stage, "reason": self.reasons.get(stage["update"], "")}
                for stage in self._layout_stages(epochs)]

    def _layout_stages(self, epochs):
        micro = self.micro_batch_size
        return [{"stage": s["stage"], "epoch": s["epoch"], "update": s["update"],
                 "batch_size": s["size"], "num_micro_batches": s["size"] // micro}
                for s in self.sizes.stages(epochs)]

    def result(self, epochs):
        """What ``result.json`` records of the adaptive batch."""
        stages = self.stages(epochs)
        return {"batch_size_stages": stages, "final_batch_size": stages[-1]["batch_size"],
                "final_num_micro_batches": stages[-1]["num_micro_batches"],
                "adaptive_batch_size/decisions": self.history}
