"""How far BatchNormalization's moving averages get from their initial values in a run.

Validation, the generalization gap and every other inference-mode number normalise with the
moving averages, which BatchNormalization updates once per training-mode forward pass (per
micro-batch: Ghost BN) as ``m * average + (1 - m) * batch statistic``. After N such updates
the initial values (mean 0, variance 1) still weigh m^N: with Keras' default momentum 0.99, 60
updates leave them 55% of the average. A run at a large batch has few updates, so its
inference-mode numbers use statistics far from those its training used, which a batch-size
comparison reads as the batch size hurting the model: on the Hoffer experiment's MLP, B = 512 at
equal epochs (60 updates) read val accuracy 0.955 with momentum 0.99 and 0.982 with momentum
0.9, the same weights (docs/literature.md). The run warns before training and records the
numbers in ``result.json`` (``batch_norm_statistics``); a study's report names the batch sizes
whose runs had stale averages.
"""

import math

import keras
from absl import logging

from experiments.engine import states

# Above this weight of the initial values (e^-3: fewer than 3 / (1 - m) updates) the averages
# are called stale.
STALE_WEIGHT = 0.05


def _update_sizes(layout, epoch):
    """The size of each update of ``epoch``: rows (windows for stream data), the last, ragged
    update of an epoch its own size; None when B is decided while training (an adaptive
    batch)."""
    if layout.adaptive:
        return None
    if layout.update_sizes is not None:
        return list(layout.update_sizes.epoch(epoch)[1])
    updates = layout.updates_per_epoch
    if layout.time_windows:
        return [layout.num_micro_batches] * updates
    rows = layout.examples_per_epoch
    if rows is None:
        return [layout.batch_size] * updates
    full, remainder = divmod(rows, layout.batch_size)
    sizes = [layout.batch_size] * min(full, updates)
    if updates > full and remainder:
        sizes.append(remainder)
    return sizes


def moving_average_updates(layout, epochs, replicas=1, updates=None):
    """How many times each BatchNormalization layer updates its moving averages over ``epochs``
    epochs (or over the run's first ``updates`` updates: a run stopped early), on the replica
    with the largest share: per update, its ceil(rows / replicas) rows in micro-batches of b (one
    pass without micro-batches); for stream data, one pass per window. None for an adaptive
    batch."""
    def passes(size):
        if layout.time_windows:
            return size
        share = -(-size // replicas)
        return -(-share // layout.micro_batch_size) if layout.micro_batch_size else 1

    def in_epoch(epoch):
        sizes = _update_sizes(layout, epoch)
        return None if sizes is None else sum(passes(size) for size in sizes)

    if updates is not None:
        return _through(layout, updates, passes)
    if layout.update_sizes is None and not layout.adaptive:
        return epochs * in_epoch(0)  # every epoch alike: counted once, not per epoch at start-up
    counts = [in_epoch(epoch) for epoch in range(epochs)]
    return None if None in counts else sum(counts)


def _through(layout, updates, passes):
    """The passes of the first ``updates`` updates (None for an adaptive batch)."""
    if layout.adaptive:
        return None
    if layout.update_sizes is None:  # every epoch alike
        sizes = _update_sizes(layout, 0)
        if not sizes:
            return 0
        full, rest = divmod(updates, len(sizes))
        return full * sum(passes(size) for size in sizes) \
            + sum(passes(size) for size in sizes[:rest])
    total, epoch = 0, 0
    while updates > 0:
        sizes = _update_sizes(layout, epoch)[:updates]
        if not sizes:
            break
        total += sum(passes(size) for size in sizes)
        updates -= len(sizes)
        epoch += 1
    return total


def describe(model, layout, epochs, replicas=1, updates=None):
    """{momentum, moving_average_updates, initial_weight, stale} for a model with
    BatchNormalization layers that update their averages (None without any, or for an adaptive
    batch, whose updates are not known before it trains); initial_weight is m^N of the slowest
    layer, stale whether it is above ``STALE_WEIGHT`` (what a study's report reads). ``updates``:
    count the run's first ``updates`` updates only (a run that ended before its last epoch)."""
    momenta = sorted({float(layer.momentum) for layer in states.layers(model)
                      if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable})
    if not momenta:
        return None
    count = moving_average_updates(layout, epochs, replicas, updates)
    if count is None:
        return None
    weight = max(momentum ** count for momentum in momenta)
    return {"momentum": momenta if len(momenta) > 1 else momenta[0],
            "moving_average_updates": count, "initial_weight": weight,
            "stale": weight > STALE_WEIGHT}


def warn_if_stale(described):
    """Logs one warning when the initial values will still weigh more than ``STALE_WEIGHT``
    at the end of the run; returns whether they will."""
    if described is None or not described["stale"]:
        return False
    momentum = described["momentum"]
    slowest = max(momentum) if isinstance(momentum, list) else momentum
    count = described["moving_average_updates"]
    suggested = _suggested(count)
    logging.warning(
        "BatchNormalization's moving averages will be updated only %d times in this run "
        "(momentum %g, once per micro-batch), so their initial values (mean 0, variance 1) "
        "still weigh %.0f%% at its end: validation and every inference-mode metric normalise "
        "with statistics far from those training used, and at a larger batch (fewer updates) "
        "this reads as a batch-size effect. Lower the momentum (momentum %g leaves %.2g%%: "
        "mlp.batch_norm_momentum for batchlab's MLP, BatchNormalization(momentum=...) in your "
        "own model), split the batch into micro-batches (each updates the averages), or train "
        "more updates.", count, slowest, 100 * described["initial_weight"], suggested,
        100 * suggested ** count)
    return True


def _suggested(count):
    """A momentum that leaves the initial values at most 1% after ``count`` updates, rounded
    down to 0.9, 0.8, ..."""
    exact = 0.01 ** (1.0 / max(count, 1))
    return max(0.0, math.floor(exact * 10) / 10)
