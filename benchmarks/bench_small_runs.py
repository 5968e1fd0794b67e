"""Small runs, where fixed costs dominate: the seed's table through batchlab against plain Keras.

    python benchmarks/bench_small_runs.py [--rounds 3] [--knobs] [--breakdown]

The seed's three runs (``gin/experiments/seed_table.gin``: a two-class problem of 500 training and
200 test rows of 20 features, an MLP 16-8, Adam 1e-3; batch 16 for 15 epochs, batch 160 for 15,
batch 160 for 150; validation every epoch; the default measurements on), each through the real
runner as a sweep variant, against the plain Keras script a user would write (a fresh
``keras.Sequential`` per run, ``model.fit(x, y, batch_size, epochs, validation_data=(xv, yv),
verbose=0)``) on the same rows. One process, rounds interleaved (the order flips every round).

batchlab's time is ``train_time_s`` of the run's result (the training call: every epoch with its
validation and measurements, no setup); plain Keras' is the time around ``fit``. CPU time (this
process, all threads) is taken over the same spans and printed beside wall time: on a shared
machine it is the steadier measure. Target: batchlab / plain <= 0.4 over the three runs. Each
run's final losses are printed too: with the same epochs, 10x the batch trains worse; 10x the
epochs recovers.

``--knobs``: also times batchlab with ``fit.steps_per_execution = 1`` (one update per call),
``fit.jit_compile = True`` (XLA) and ``train.dtype_policy = 'mixed_bfloat16'``.
``--breakdown``: one batchlab run of the 150-epoch variant, with the wall milliseconds of each
epoch split into its phases (train calls, validation, each callback's hooks, the rest).
``--steps-per-execution 1 8 32``: the 32-updates-per-epoch run at each value, with the default
measurements and with none (how the default of ``fit.steps_per_execution`` was chosen).
"""

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gin  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from experiments import launch  # noqa: E402
from experiments.engine import custom_loop  # noqa: E402
from experiments.inputs import synthetic  # noqa: E402
from experiments.run import runner  # noqa: E402

GIN_FILE = "gin/experiments/seed_table.gin"
KNOBS = {
    "batchlab (defaults)": [],
    "fit.steps_per_execution = 1": ["fit.steps_per_execution = 1"],
    "fit.jit_compile = True": ["fit.jit_compile = True"],
    "train.dtype_policy = 'mixed_bfloat16'": ["train.dtype_policy = 'mixed_bfloat16'"],
}


def variants():
    """{name: (batch size, epochs)} from the gin file's ``sweep.variants``."""
    launch.parse([GIN_FILE], [])
    found = {}
    for name, bindings in gin.query_parameter("sweep.variants").items():
        values = dict(b.replace(" ", "").split("=") for b in bindings)
        found[name] = (int(values["train.batch_size"]), int(values["train.epochs"]))
    return found


class CpuClock(keras.callbacks.Callback):
    """CPU seconds of the process from training's start to its end (listed last)."""

    def on_train_begin(self, logs=None):
        self.started = time.process_time()

    def on_train_end(self, logs=None):
        self.seconds = time.process_time() - self.started


def run_batchlab(variant, output_dir, extra=(), extra_callbacks=()):
    """(train wall s, train CPU s, final train loss, final val loss) of one batchlab run."""
    batch, epochs = variant
    launch.parse([GIN_FILE], [f"train.batch_size = {batch}", f"train.epochs = {epochs}",
                              "train.verbose = 0", *extra])
    clock = CpuClock()
    result = runner.train(output_dir=output_dir, experiment="bench_small_runs",
                          extra_callbacks=[*extra_callbacks, clock])
    return (result["train_time_s"], clock.seconds, result["final_epoch"]["loss"],
            result["final_epoch"]["val_loss"])


def run_plain(variant, data):
    """(fit wall s, fit CPU s, final train loss, final val loss) of the plain Keras script."""
    batch, epochs = variant
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((20,)), keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  metrics=["accuracy"])
    started, cpu = time.perf_counter(), time.process_time()
    history = model.fit(data.x_train, data.y_train, batch_size=batch, epochs=epochs,
                        validation_data=(data.x_validation, data.y_validation), verbose=0)
    return (time.perf_counter() - started, time.process_time() - cpu,
            history.history["loss"][-1], history.history["val_loss"][-1])


def timed_rounds(arms, names, rounds, output_dir, data):
    """{arm: {run: [(wall, cpu, loss, val loss)]}}, arms and runs interleaved round by round."""
    runs = variants()
    times = {arm: collections.defaultdict(list) for arm in arms}
    for index in range(rounds):
        order = list(arms) if index % 2 == 0 else list(reversed(arms))
        for name in names:
            for arm in order:
                if arm == "plain Keras":
                    times[arm][name].append(run_plain(runs[name], data))
                else:
                    times[arm][name].append(run_batchlab(runs[name], output_dir, arms[arm]))
                wall, cpu, loss, val = times[arm][name][-1]
                print(f"round {index + 1} {name} {arm}: {wall:.2f} s (CPU {cpu:.2f} s), "
                      f"loss {loss:.4f}, val loss {val:.4f}", file=sys.stderr, flush=True)
    return times


def totals(per_run, column):
    """Per round, the sum over runs of ``column`` (0: wall, 1: CPU)."""
    rounds = len(next(iter(per_run.values())))
    return [sum(values[i][column] for values in per_run.values()) for i in range(rounds)]


def print_comparison(times, names, rounds):
    batchlab, plain = times["batchlab (defaults)"], times["plain Keras"]
    print(f"\nTraining time per run, {rounds} interleaved rounds (wall: fastest / median; CPU: "
          "median); ratio = batchlab / plain.\n")
    print("| run | batchlab s | plain Keras s | ratio (fastest) | batchlab CPU s | plain CPU s "
          "| ratio (CPU) | final loss batchlab / plain | final val loss batchlab / plain |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [(name, batchlab[name], plain[name]) for name in names]
    rows.append(("total", [(w, c, None, None) for w, c in zip(totals(batchlab, 0),
                                                             totals(batchlab, 1))],
                 [(w, c, None, None) for w, c in zip(totals(plain, 0), totals(plain, 1))]))
    for name, ours, theirs in rows:
        wall = [min(r[0] for r in ours), statistics.median(r[0] for r in ours),
                min(r[0] for r in theirs), statistics.median(r[0] for r in theirs)]
        cpu = [statistics.median(r[1] for r in ours), statistics.median(r[1] for r in theirs)]
        losses = "-" if ours[-1][2] is None else f"{ours[-1][2]:.4f} / {theirs[-1][2]:.4f}"
        val = "-" if ours[-1][3] is None else f"{ours[-1][3]:.4f} / {theirs[-1][3]:.4f}"
        print(f"| {name} | {wall[0]:.2f} / {wall[1]:.2f} | {wall[2]:.2f} / {wall[3]:.2f} | "
              f"{wall[0] / wall[2]:.3f} | {cpu[0]:.2f} | {cpu[1]:.2f} | {cpu[0] / cpu[1]:.3f} | "
              f"{losses} | {val} |")
    fastest = min(totals(batchlab, 0)) / min(totals(plain, 0))
    cpu = statistics.median(totals(batchlab, 1)) / statistics.median(totals(plain, 1))
    print("\n| check | measured | target | met |\n|---|---|---|---|")
    for label, value in (("total, fastest rounds", fastest), ("total, median CPU", cpu)):
        print(f"| batchlab / plain Keras, {label} | {value:.3f} | <= 0.4 | "
              f"{'yes' if value <= 0.4 else 'NO'} |")


def print_knobs(times, names, rounds):
    base = times["batchlab (defaults)"]
    print(f"\nbatchlab speed knobs: total training time of the three runs, {rounds} interleaved "
          "rounds; ratio to the defaults.\n")
    print("| configuration | total s (fastest) | total s (median) | vs defaults (fastest) "
          "| CPU s (median) | vs defaults (CPU) | final losses (" + ", ".join(names) + ") |")
    print("|---|---|---|---|---|---|---|")
    for arm, per_run in times.items():
        if arm == "plain Keras":
            continue
        wall, cpu = totals(per_run, 0), totals(per_run, 1)
        losses = ", ".join(f"{per_run[name][-1][2]:.4f}" for name in names)
        print(f"| {arm} | {min(wall):.2f} | {statistics.median(wall):.2f} | "
              f"{min(wall) / min(totals(base, 0)):.3f} | {statistics.median(cpu):.2f} | "
              f"{statistics.median(cpu) / statistics.median(totals(base, 1)):.3f} | {losses} |")


class PhaseTimer(keras.callbacks.Callback):
    """Per-epoch wall seconds of every phase: wraps the loop's train calls and validation and
    every callback's hooks (listed last, so its epoch spans everything else)."""

    def __init__(self):
        super().__init__()
        self.phases = collections.defaultdict(float)
        self.epochs = []

    def wrap_callbacks(self, callbacks):
        for callback in callbacks:
            for hook in ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
                         "on_train_batch_end", "on_test_begin", "on_test_end"):
                if getattr(type(callback), hook) is not getattr(keras.callbacks.Callback, hook):
                    setattr(callback, hook, self.timed(getattr(callback, hook),
                                                       f"hooks: {type(callback).__name__}"))
        return callbacks

    def timed(self, function, name):
        def wrapped(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.phases[name] += time.perf_counter() - started
        return wrapped

    def on_epoch_begin(self, epoch, logs=None):
        self.phases = collections.defaultdict(float)
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.phases["epoch"] = time.perf_counter() - self._started
        self.epochs.append(dict(self.phases))


def breakdown(output_dir, epochs=None):
    """One 150-epoch run (``epochs``: fewer); prints the median ms per epoch of each phase
    (epochs 2..). Works on the loop before ``steps_per_execution`` too (one ``_function`` for
    train and test calls). It wraps private parts of the runner and the loop, so
    ``tests/test_benchmarks.py`` runs it (3 epochs) to keep it working."""
    timer = PhaseTimer()
    build, loop = runner.make_callbacks, custom_loop.CustomLoop
    originals = {name: getattr(loop, name) for name in ("_train_function", "_function",
                                                        "evaluate") if hasattr(loop, name)}

    def make_callbacks(*args, **kwargs):
        callbacks, *rest = build(*args, **kwargs)  # (callbacks, measured, kept callback states)
        return (timer.wrap_callbacks(callbacks), *rest)

    def train_function(self, iterator, *args):  # args: the probes, where the loop has them
        return timer.timed(originals["_train_function"](self, iterator, *args), "train calls")

    def function(self, cache, step, spec):
        phase = "train calls" if cache is self._train_functions else "validation calls"
        return timer.timed(originals["_function"](self, cache, step, spec), phase)

    try:
        runner.make_callbacks = make_callbacks
        if "_train_function" in originals:
            loop._train_function = train_function
        loop._function = function
        loop.evaluate = lambda self, *a, **k: timer.timed(
            originals["evaluate"].__get__(self), "validation (evaluate)")(*a, **k)
        batch, planned = variants()["batch160_epochs150"]
        run_batchlab((batch, epochs or planned), output_dir, extra_callbacks=[timer])
    finally:
        runner.make_callbacks = build
        for name, function_ in originals.items():
            setattr(loop, name, function_)
    epochs = timer.epochs[1:]
    names = sorted({name for epoch in epochs for name in epoch} - {"epoch"})
    print(f"\nWall ms per epoch, batch160_epochs150 (4 updates per epoch), median over epochs "
          f"2-{len(timer.epochs)}. Phases overlap: 'validation (evaluate)' includes its calls, a callback's "
          "hooks include what they evaluate (GeneralizationGap: its training subset).\n")
    print("| phase | ms / epoch (median) | ms / epoch (mean) |\n|---|---|---|")
    for name in names + ["epoch"]:
        values = [epoch.get(name, 0.0) * 1000 for epoch in epochs]
        print(f"| {name} | {statistics.median(values):.2f} | {statistics.mean(values):.2f} |")


def steps_per_execution_table(output_dir, values, rounds):
    """batch16_epochs15 with the default measurements and with none, for each
    ``fit.steps_per_execution``; interleaved rounds; total training time."""
    variant = variants()["batch16_epochs15"]
    arms = {(n, measured): [f"fit.steps_per_execution = {n}"]
            + ([] if measured else ["measurements.enabled = []"])
            for measured in (True, False) for n in values}
    times = collections.defaultdict(list)
    for index in range(rounds):
        order = list(arms) if index % 2 == 0 else list(reversed(arms))
        for arm in order:
            times[arm].append(run_batchlab(variant, output_dir, arms[arm])[:2])
    print(f"\nfit.steps_per_execution on batch16_epochs15 (32 updates per epoch, 15 epochs), "
          f"{rounds} interleaved rounds; training s (fastest / median), CPU s (median).\n")
    print("| steps_per_execution | measurements | train s | CPU s |\n|---|---|---|---|")
    for (n, measured), values_ in times.items():
        wall = [w for w, _ in values_]
        print(f"| {n} | {'default set' if measured else 'none'} | {min(wall):.2f} / "
              f"{statistics.median(wall):.2f} | {statistics.median(c for _, c in values_):.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--knobs", action="store_true", help="also time the speed knobs")
    parser.add_argument("--breakdown", action="store_true",
                        help="per-epoch phase breakdown of one run instead")
    parser.add_argument("--steps-per-execution", type=int, nargs="*", default=None,
                        help="time these fit.steps_per_execution values instead")
    args = parser.parse_args()
    logging.set_verbosity(logging.ERROR)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
          f"GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    with tempfile.TemporaryDirectory() as output_dir:
        if args.breakdown:
            breakdown(output_dir)
            return
        if args.steps_per_execution:
            steps_per_execution_table(output_dir, args.steps_per_execution, args.rounds)
            return
        names = list(variants())
        data = synthetic.synthetic_binary(num_examples=700, validation_split=200 / 700)
        arms = {"batchlab (defaults)": [], "plain Keras": None}
        if args.knobs:
            arms.update({name: bindings for name, bindings in KNOBS.items() if bindings})
        times = timed_rounds(arms, names, args.rounds, output_dir, data)
    print_comparison(times, names, args.rounds)
    if args.knobs:
        print_knobs(times, names, args.rounds)


if __name__ == "__main__":
    main()
