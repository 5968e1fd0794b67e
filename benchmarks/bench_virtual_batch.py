"""Virtual batches against plain Keras: time per epoch and peak memory, side by side in one run.

    python benchmarks/bench_virtual_batch.py [--quick] [--repeats N]

Time per epoch (one process, configurations interleaved round by round, one untimed epoch first so
that tracing is not counted), for an MLP 784-512-512-10 and an LSTM(256) over 200 steps of 32
features, 10 classes, on synthetic data:

- batchlab 32x8: ``VirtualBatchModel`` at B = 256, b = 32 (one update per 256 rows),
- plain ``model.fit`` at 32, and at 256,
- Keras' built-in ``optimizer(gradient_accumulation_steps=8)`` at 32,
- batchlab 32x1 (k = 1) against plain fit at 32: the step's own overhead, with the gradient
  norms recorded on every update (the worst case: a run records them only on its logged
  updates, every ``measurements.every_n_updates``) and without them.

Peak memory of the LSTM at 64x8 against plain fit at 64 and at 512, each configuration trained on
the same 1024 rows in its own child process: virtual batches should cost the memory of one
micro-batch (plus the rows of one virtual batch in the input pipeline). The child reports its peak
resident set size from ``/proc/self/status`` (VmHWM): ``ru_maxrss`` of a child (``os.wait4``,
``RUSAGE_CHILDREN``) also counts the parent's pages the child held between fork and exec, so it
reads the parent's size whenever that is the larger.

Targets: batchlab 32x8 <= 0.95 x plain fit at 32 and faster than Keras' accumulation; k = 1
overhead <= 3%; LSTM 64x8 peak memory <= plain 64 + 10%. On a machine shared with other work an
epoch is only ever slowed down by it, so the checks use the fastest round of each configuration
(as ``timeit`` does); the median, its spread ((max - min) / median) and the process CPU time are
printed beside it.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from experiments.engine import virtual_batch_model  # noqa: E402

SIZES = {  # rows of synthetic data per model: (full, --quick)
    "mlp": (8192, 4096),
    "lstm": (512, 256),
}
MEMORY_ROWS = 1024  # LSTM rows of every memory run (two updates at 512 rows)


def make_data(model_name, rows, seed=0):
    rng = np.random.default_rng(seed)
    shape = (784,) if model_name == "mlp" else (200, 32)
    x = rng.normal(size=(rows, *shape)).astype("float32")
    y = rng.integers(0, 10, size=rows)
    return x, y


def build(model_name):
    if model_name == "mlp":
        return keras.Sequential([
            keras.Input((784,)), keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(10, activation="softmax")])
    return keras.Sequential([keras.Input((200, 32)), keras.layers.LSTM(256),
                             keras.layers.Dense(10, activation="softmax")])


# name -> (batch the pipeline yields, micro-batch or None, Keras accumulation steps or None, kind)
# 'batchlab' records the gradient norms every update (``measure_every_update``: what a run
# logging them every update computes); 'batchlab-bare' records none
# (measure_gradient_norms=False): the cost of the step alone.
CONFIGURATIONS = {
    "batchlab 32x8": (256, 32, None, "batchlab"),
    "plain fit 32": (32, None, None, "plain"),
    "plain fit 256": (256, None, None, "plain"),
    "keras accumulation 32x8": (32, None, 8, "plain"),
    "batchlab 32x1 (k=1)": (32, None, None, "batchlab"),
    "batchlab 32x1 (k=1), no gradient norms": (32, None, None, "batchlab-bare"),
}
MEMORY_CONFIGURATIONS = {
    "batchlab 64x8": (512, 64, None, "batchlab"),
    "plain fit 64": (64, None, None, "plain"),
    "plain fit 512": (512, None, None, "plain"),
}


def make_model(model_name, configuration):
    batch, micro, accumulation, kind = configuration
    model = build(model_name)
    if kind.startswith("batchlab"):
        model = virtual_batch_model.as_virtual_batch_model(
            model, micro_batch_size=micro, virtual_batch_size=batch,
            measure_gradient_norms=kind != "batchlab-bare")
        if kind == "batchlab":
            model.measurements.measure_every_update()
    optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9,
                                     gradient_accumulation_steps=accumulation)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    return model


def pipeline(x, y, batch):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).prefetch(2)


def time_epochs(model_name, rows, repeats):
    """Wall and CPU seconds per epoch: ({name: [wall s per round]}, {name: [CPU s per round]}).

    CPU time (this process, all threads) is reported beside wall time: on a machine shared with
    other work it is the steadier measure of the work each configuration does.
    """
    x, y = make_data(model_name, rows)
    runs = {}
    for name, configuration in CONFIGURATIONS.items():
        keras.utils.set_random_seed(0)
        model = make_model(model_name, configuration)
        data = pipeline(x, y, configuration[0])
        model.fit(data, epochs=1, verbose=0)  # tracing and warm-up, not timed
        runs[name] = (model, data)
    seconds = {name: [] for name in runs}
    cpu_seconds = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(repeats):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            model, data = runs[name]
            started, cpu_started = time.perf_counter(), time.process_time()
            model.fit(data, epochs=1, verbose=0)
            seconds[name].append(time.perf_counter() - started)
            cpu_seconds[name].append(time.process_time() - cpu_started)
    return seconds, cpu_seconds


def peak_rss_self_mb():
    """This process's peak resident set size since exec (VmHWM), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?).")


def memory_child(name):
    """Runs inside a child process: one epoch of the LSTM configuration ``name``; prints peak."""
    configuration = MEMORY_CONFIGURATIONS[name]
    x, y = make_data("lstm", MEMORY_ROWS)
    keras.utils.set_random_seed(0)
    model = make_model("lstm", configuration)
    model.fit(pipeline(x, y, configuration[0]), epochs=1, verbose=0)
    print(f"peak_rss_mb={peak_rss_self_mb():.1f}")


def peak_rss_mb(name):
    """Peak RSS of a child process that trains one memory configuration (MiB)."""
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--memory-child", name],
        capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory run {name!r} failed:\n{result.stderr[-2000:]}")
    line = [s for s in result.stdout.splitlines() if s.startswith("peak_rss_mb=")][-1]
    return float(line.split("=")[1])


def spread(values):
    return (max(values) - min(values)) / statistics.median(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller data, fewer rounds")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per model")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return

    repeats = args.repeats or (3 if args.quick else 7)
    size = 1 if args.quick else 0
    checks = []
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPUs, {'quick' if args.quick else 'full'} run, "
          f"{repeats} timed rounds\n")
    # Memory first, while this process is small; each configuration in its own process.
    peaks = {name: peak_rss_mb(name) for name in MEMORY_CONFIGURATIONS}

    print("| model | configuration | rows | s / epoch (fastest) | vs plain fit 32 | "
          "s / epoch (median) | spread | CPU s / epoch (median) | vs plain fit 32 (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model_name in ("mlp", "lstm"):
        rows = SIZES[model_name][size]
        seconds, cpu_seconds = time_epochs(model_name, rows, repeats)
        fastest = {name: min(values) for name, values in seconds.items()}
        median = {name: statistics.median(values) for name, values in seconds.items()}
        cpu = {name: statistics.median(values) for name, values in cpu_seconds.items()}
        base, cpu_base = fastest["plain fit 32"], cpu["plain fit 32"]
        for name in CONFIGURATIONS:
            print(f"| {model_name} | {name} | {rows} | {fastest[name]:.3f} | "
                  f"{fastest[name] / base:.3f} | {median[name]:.3f} | "
                  f"{spread(seconds[name]):.0%} | {cpu[name]:.3f} | {cpu[name] / cpu_base:.3f} |",
                  flush=True)
        checks.append((f"{model_name}: batchlab 32x8 / plain fit 32",
                       fastest["batchlab 32x8"] / base, "<= 0.95"))
        checks.append((f"{model_name}: batchlab 32x8 / keras accumulation 32x8",
                       fastest["batchlab 32x8"] / fastest["keras accumulation 32x8"], "< 1"))
        checks.append((f"{model_name}: batchlab k=1, no gradient norms / plain fit 32",
                       fastest["batchlab 32x1 (k=1), no gradient norms"] / base, "<= 1.03"))
        checks.append((f"{model_name}: batchlab k=1 with gradient norms / plain fit 32",
                       fastest["batchlab 32x1 (k=1)"] / base, "<= 1.03"))

    print(f"\n| LSTM(256), 200 steps, {MEMORY_ROWS} rows | peak RSS (MiB) | vs plain fit 64 |")
    print("|---|---|---|")
    for name, peak in peaks.items():
        print(f"| {name} | {peak:.0f} | {peak / peaks['plain fit 64']:.3f} |")
    checks.append(("lstm: peak RSS batchlab 64x8 / plain fit 64",
                   peaks["batchlab 64x8"] / peaks["plain fit 64"], "<= 1.10"))

    print("\n| check | measured | target | met |")
    print("|---|---|---|---|")
    for name, value, target in checks:
        limit = float(target.split()[-1])
        met = value <= limit if target.startswith("<=") else value < limit
        print(f"| {name} | {value:.4f} | {target} | {'yes' if met else 'NO'} |")


if __name__ == "__main__":
    main()
