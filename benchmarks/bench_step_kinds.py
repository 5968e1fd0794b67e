"""The train step traced for two kinds of update against one step testing every update.

    python benchmarks/bench_step_kinds.py [--calls 300] [--setups NAME ...]

batchlab's loop reads per-update measurements inside its train calls. A chunk of updates with
measurements used to run one train step that tested, on every update, whether this update is the
measured one (``tf.cond`` around the gradient norms, the ``before_update`` hooks and the noise
scale's ingredients): an untaken branch still costs its ops' dispatch on every update (BUILD.md,
"Stop 33"). The chunk now runs the step traced for unmeasured updates, with none of those ops, and
the step traced for the measured update on the last update of a segment that ends on one
(``graph_calls.chunk_function``, ``StepMeasurements.tracing``).

This script builds, for one model, three chunk functions over the same iterator: "off" (no
measurement, and a step without any measuring op), "one step" (the step testing every update: the earlier design) and "two steps"
(today's), with the default per-update measurements (gradient norms with update ratios, distance
from init, and the gradient noise scale when k > 1) read every 10 updates. It calls them in turn
(the order rotating every round) on an epoch's updates with the segments the loop plans, and
prints the median milliseconds per call of each, the extra ms over "off" of each design and
their ratio (two steps / one step), with the order-statistic interval of each median (at
least 95%). Only the graph call is timed: the host side of the measurements (publishing) is the
same in both designs. All three run in one process, interleaved call by call, so a slower
stretch of a shared machine slows all three.

Setups: the digits MLP (64 features, 64-64 hidden, 10 classes) at B = 32 (k = 1) and B = 128 =
4 x 32 (k = 4), 1440 rows (45 and 12 updates an epoch), and the reference MLP 784-512-512-10 at
B = 256 = 8 x 32 on 8192 rows (32 updates).
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from callbacks.gradient_noise_scale import GradientNoiseScale  # noqa: E402
from callbacks.gradient_norm import GradientNorm  # noqa: E402
from callbacks.weight_distance import WeightDistance  # noqa: E402
from experiments.analysis import study_statistics  # noqa: E402
from experiments.engine import custom_loop, graph_calls  # noqa: E402
from experiments.engine.schedule import UpdateSchedule  # noqa: E402
from experiments.engine.virtual_batch_model import as_virtual_batch_model  # noqa: E402

SETUPS = {  # name: (features, hidden, rows, B, b or None)
    "digits MLP, B=32 (k=1)": (64, (64, 64), 1440, 32, None),
    "digits MLP, B=128 = 4x32 (k=4)": (64, (64, 64), 1440, 128, 32),
    "MLP 784-512-512-10, B=256 = 8x32 (k=8)": (784, (512, 512), 8192, 256, 32),
}
EVERY = 10


def build(features, hidden, micro_batch_size):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((features,))] + [keras.layers.Dense(h, activation="relu")
                                           for h in hidden] + [keras.layers.Dense(10)]
    model = as_virtual_batch_model(keras.Sequential(layers), micro_batch_size=micro_batch_size,
                                   track_gradient_noise=micro_batch_size is not None)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def functions(setup):
    """(model, iterator, {design: (function, arguments)}, updates per epoch)."""
    features, hidden, rows, batch, micro = setup
    model = build(features, hidden, micro)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features)).astype("float32")
    y = rng.integers(0, 10, size=rows)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()
    loop = custom_loop.CustomLoop(model, steps_per_execution=64)
    loop._prepare(dataset)
    iterator = iter(dataset)
    measurements = [GradientNorm(every_n_updates=EVERY), WeightDistance(every_n_updates=EVERY)]
    if micro is not None:
        measurements.append(GradientNoiseScale(every_n_updates=EVERY))
    measured = loop._start_measurements(measurements)
    steps = -(-rows // batch)
    lengths, masks, _ = UpdateSchedule([m.cadence for m in measured], [], 64).segments(
        0, steps, steps)
    segments = (tf.constant(lengths, tf.int64), tf.constant(masks, tf.bool))
    strategy = loop.strategy
    designs = {
        # No measurement: the step traced for unmeasured updates has no measuring op at all
        # (traced for any update it would test the noise scale's sampling per micro-batch).
        "off": (graph_calls.chunk_function(model, strategy, loop._step(False), iterator),
                (tf.constant(steps, tf.int64),)),
        "one step": (graph_calls.chunk_function(model, strategy, loop._step(None), iterator,
                                                measured), segments),
        "two steps": (graph_calls.chunk_function(model, strategy, loop._step(False), iterator,
                                                 measured, loop._step(True)), segments),
    }
    return iterator, designs, steps


def time_calls(designs, iterator, calls):
    """Median ms per call of each design over ``calls`` rounds (order rotating), after two
    untimed rounds."""
    names = list(designs)
    seconds = {name: [] for name in names}
    for round_ in range(calls + 2):
        order = names[round_ % 3:] + names[:round_ % 3]
        for name in order:
            function, arguments = designs[name]
            started = time.perf_counter()
            result = function(iterator, *arguments)
            tf.nest.map_structure(lambda t: t.numpy(), result)
            if round_ >= 2:
                seconds[name].append(1000 * (time.perf_counter() - started))
    return seconds


def with_interval(values):
    """The median and its order-statistic interval as a cell, the interval's level beside it
    when it is under 95% (fewer than 6 values: their whole range) and none for one value."""
    median = statistics.median(values)
    interval, level = study_statistics.median_interval(values, level=0.95)
    if interval is None:
        return f"{median:.2f}"
    text = f"{median:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]"
    return text if level >= 0.95 else f"{text}<sub>{100 * level:.0f}%</sub>"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="timed calls of each design")
    parser.add_argument("--setups", nargs="*", default=None,
                        help="setup names (or unique parts of them); default: all")
    args = parser.parse_args()
    print(f"\nms per call of one epoch's updates, measurements read every {EVERY} updates; "
          f"median over {args.calls} interleaved calls [interval of the median, >= 95%, or its "
          "level as a subscript when fewer calls give less]; "
          "extra: the design's median minus the per-round 'off' time, paired by round.\n")
    print("| setup | updates | off | one step | two steps | extra, one step | extra, two steps "
          "| two / one (extra) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, setup in SETUPS.items():
        if args.setups and not any(part in name for part in args.setups):
            continue
        iterator, designs, steps = functions(setup)
        seconds = time_calls(designs, iterator, args.calls)
        extra = {d: [on - off for on, off in zip(seconds[d], seconds["off"])]
                 for d in ("one step", "two steps")}
        cells = []
        for values in (seconds["off"], seconds["one step"], seconds["two steps"],
                       extra["one step"], extra["two steps"]):
            cells.append(with_interval(values))
        one, two = statistics.median(extra["one step"]), statistics.median(extra["two steps"])
        print(f"| {name} | {steps} | " + " | ".join(cells) + f" | {two / one:.2f} |", flush=True)


if __name__ == "__main__":
    main()
