"""An adaptive virtual batch: k grows (or shrinks) during training to follow the measured
gradient noise scale (McCandlish et al. 2018, section 2.4; the goodput-driven batch of
Pollux/AdaptDL, Qiao et al. 2021, in its statistical-efficiency half).

Configured like a batch-size schedule, but its stages are decided while training runs::

    train.batch_size = 16                    # B at the start (k = 2 here)
    train.micro_batch_size = 8               # b: memory stays that of one micro-batch
    train.batch_size_schedule = @adaptive_batch_size()
    adaptive_batch_size.scale = 1.0          # c: B follows c * B_simple
    adaptive_batch_size.max_batch_size = 512 # B_max
    adaptive_batch_size.every_n_updates = 10 # n: a decision every n updates

Every n updates the run's controller (``experiments.run.adaptive_batch``) reads B_simple from
the train step's noise-scale averages and sets B = clip(c * B_simple, b, B_max), rounded to the
nearest multiple of b (``target_batch_size``). A decision takes effect from the next update on,
so every update is still exact for its own B. The decisions are the run's history: this module
keeps them (``AdaptiveUpdateSizes``), the pipelines cut the data by them, a checkpoint saves them
and a resumed run restores them before it reads a batch, so the batches are those of the
uninterrupted run.
"""

import bisect
import dataclasses
import math
from typing import Optional

import gin

from experiments.common import checks
from experiments.inputs.batch_schedule import UpdateSizes


@dataclasses.dataclass(frozen=True)
class AdaptiveBatchSize:
    """What the user bound for ``train.batch_size_schedule = @adaptive_batch_size()``.

    Attributes:
      scale: c, B follows c * B_simple (> 0).
      max_batch_size: B_max, a multiple of b (checked against the data by the layout).
      every_n_updates: n, updates between decisions.
      min_relative_change: B changes only when the new value differs from the current one by
        more than this fraction of it (0: on every difference, the rule as stated).
      horizon_examples: the noise-scale averages' horizon the decisions read (None: the run's,
        ``measurements.gradient_noise_scale.horizon_examples``, 4096 by default).
    """

    scale: float
    max_batch_size: int
    every_n_updates: int
    min_relative_change: float = 0.0
    horizon_examples: Optional[float] = None

    def stage_name(self, stage):
        return f"adaptive_batch_size: decision {stage}"


@gin.configurable
def adaptive_batch_size(scale=1.0, max_batch_size=gin.REQUIRED, every_n_updates=10,
                        min_relative_change=0.0, horizon_examples=None):
    """An ``AdaptiveBatchSize`` for ``train.batch_size_schedule``.

    Args:
      scale: c > 0: the batch follows c * B_simple (c = 1: the noise scale itself, where the
        steps-to-result trade-off bends; McCandlish et al. 2018).
      max_batch_size: B_max, the largest virtual batch (a multiple of the micro-batch b).
      every_n_updates: how often (in updates) the batch is decided again.
      min_relative_change: change B only when the rule's B differs from the current one by more
        than this fraction (e.g. 0.25): fewer changes, each of which starts a new input pipeline
        (about 0.1 to 0.4 s on a CPU machine; docs/adaptive.md), for a coarser tracking.
      horizon_examples: the horizon (examples) of the noise-scale averages the decisions read;
        None: the run's (``measurements.gradient_noise_scale.horizon_examples``, 4096). Shorter
        follows a fast-changing B_simple with less lag and more noise (docs/adaptive.md).
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0 \
            or not math.isfinite(scale):
        raise ValueError(f"adaptive_batch_size.scale={scale!r} must be a number > 0 (c: the "
                         "batch follows c * B_simple).")
    if isinstance(min_relative_change, bool) or not isinstance(min_relative_change, (int, float)) \
            or not 0 <= min_relative_change < 1e6:
        raise ValueError(f"adaptive_batch_size.min_relative_change={min_relative_change!r} must "
                         "be a number in [0, 1e6) (a fraction of the current batch).")
    if horizon_examples is not None:
        checks.positive_number(horizon_examples, "adaptive_batch_size.horizon_examples")
        horizon_examples = float(horizon_examples)
    return AdaptiveBatchSize(
        scale=float(scale), min_relative_change=float(min_relative_change),
        horizon_examples=horizon_examples,
        max_batch_size=checks.positive_int(max_batch_size, "adaptive_batch_size.max_batch_size"),
        every_n_updates=checks.positive_int(every_n_updates,
                                            "adaptive_batch_size.every_n_updates"))


def target_batch_size(b_simple, scale, micro_batch_size, max_batch_size):
    """B = clip(scale * b_simple, b, B_max), rounded to the nearest multiple of b, and why.

    ``b_simple`` may be ``inf`` (the measured |G|^2 is not above zero: the gradient is all
    noise, the largest batch is taken). Returns (B, reason)."""
    b = micro_batch_size
    wanted = scale * b_simple
    if not wanted < max_batch_size:
        return max_batch_size, (f"c * B_simple = {wanted:.4g} >= B_max: B = max_batch_size "
                                f"{max_batch_size}")
    if wanted <= b:
        return b, f"c * B_simple = {wanted:.4g} <= b: B = micro_batch_size {b}"
    # Halves go up (20 -> 24 at b = 8, as 28 -> 32): Python's round() takes them to even.
    size = min(max(math.floor(wanted / b + 0.5), 1) * b, max_batch_size)
    return size, f"c * B_simple = {wanted:.4g}: B = {size} (the nearest multiple of b = {b})"


class AdaptiveUpdateSizes(UpdateSizes):
    """``UpdateSizes`` whose sizes come from decisions made while training.

    ``decisions`` are (update, B): from 0-based update ``update`` on, updates have B rows (the
    last of an epoch whatever rows remain). The first is (0, the initial B). ``decide`` adds one
    and forgets the cached sizes of the epoch it falls in and later ones; ``restore`` sets them
    from a checkpoint.
    """

    def __init__(self, settings, initial_size, micro_batch_size, capacity):
        super().__init__(settings, (initial_size,), capacity, ragged=True)
        self.micro_batch_size = micro_batch_size
        self.initial_size = initial_size
        self.decisions = [(0, initial_size)]

    @property
    def largest_size(self):
        return self.schedule.max_batch_size

    @property
    def current_size(self):
        return self.decisions[-1][1]

    def _index(self, update):
        return bisect.bisect_right([start for start, _ in self.decisions], update) - 1

    def size_at(self, epoch, update):
        return self.decisions[self._index(update)][1]

    def stage_of(self, epoch, update):
        return self._index(update)

    def decide(self, update, size):
        """From 0-based update ``update`` on, B = ``size``; returns whether B changed."""
        if update < self.decisions[-1][0]:
            raise ValueError(f"A batch-size decision at update {update} comes before the last "
                             f"one (update {self.decisions[-1][0]}).")
        if size == self.current_size:
            return False
        if update == self.decisions[-1][0] and len(self.decisions) > 1:
            self.decisions[-1] = (update, size)
        else:
            self.decisions.append((update, size))
        self._forget_from(update)
        return True

    def restore(self, decisions):
        """The decisions a checkpoint saved (a list of [update, size])."""
        decisions = [(int(update), int(size)) for update, size in decisions]
        if not decisions or decisions[0] != (0, self.initial_size):
            raise ValueError(f"The saved batch-size decisions {decisions} do not start at B = "
                             f"{self.initial_size} (train.batch_size): this run was started "
                             "with another batch size.")
        self.decisions = decisions
        self._epochs = []

    def _forget_from(self, update):
        """Drops the cached sizes of the epoch holding ``update`` and of every later one."""
        for index, (before, sizes) in enumerate(self._epochs):
            if update < before + len(sizes):
                del self._epochs[index:]
                return
