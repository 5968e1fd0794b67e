"""Cost of the TensorBoard measurements: time per epoch with all of them on vs all off.

    python benchmarks/bench_measurement.py [--epochs 8] [--repeats 3]

Each setup is trained through the real runner (``experiments.runner.train``) in this process,
alternating "off" (``train.measurements = []``) and "on" runs, ``--repeats`` times each, so that
both arms see the same machine load. "On" is every per-epoch and per-update measurement
(gradient norms and update ratios, generalization gap, distance from init, throughput, and the
gradient noise scale when k > 1), logged every ``--every`` updates, plus Keskar sharpness, whose
one-off end-of-training cost is reported in its own column (it is not part of any epoch). The time
of an epoch is taken by a callback placed after every measurement, from its start to the end of
the last measurement's epoch-end work; the first epoch (tracing) is dropped and the median of the
rest is compared; also the fastest epochs and the process' CPU time, both less sensitive to a
shared machine's load. Target: at most 5% overhead per epoch. Prints a markdown table.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
from absl import logging  # noqa: E402

from experiments import launch, runner  # noqa: E402

ALL_ON = ("train.measurements = [@measurements.gradient_norms, @measurements.generalization_gap,"
          " @measurements.weight_distance, @measurements.gradient_noise_scale,"
          " @measurements.throughput, @measurements.sharpness]")
SYNTHETIC = ["train.data_fn = @synthetic_classification",
             "synthetic_classification.num_examples = 25000",  # 20k train, 5k validation
             "synthetic_classification.input_shape = (64,)",
             "synthetic_classification.num_classes = 10"]
SETUPS = {
    # name: (gin files, bindings)
    "digits MLP, B=32 (k=1)": (["gin/experiments/digits_mlp.gin"],
                               ["train.batch_size = 32"]),
    "digits MLP, B=128 = 4x32 (k=4)": (["gin/experiments/digits_mlp.gin"],
                                       ["train.batch_size = 128", "train.micro_batch_size = 32"]),
    "synthetic 20k rows MLP(256,256), B=256 = 4x64 (k=4)": (
        ["gin/experiments/digits_mlp.gin"], SYNTHETIC + [
            "mlp.hidden_units = (256, 256)", "train.batch_size = 256",
            "train.micro_batch_size = 64"]),
    "synthetic 20k rows MLP(1024,1024), B=512 = 4x128 (k=4)": (
        ["gin/experiments/digits_mlp.gin"], SYNTHETIC + [
            "mlp.hidden_units = (1024, 1024)", "train.batch_size = 512",
            "train.micro_batch_size = 128"]),
}


class EpochTimer(keras.callbacks.Callback):
    """Wall and CPU seconds per epoch, from this callback's epoch start to its epoch end (it is
    listed last). CPU time (all threads of this process) is less sensitive to other processes."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append((time.perf_counter() - self._start[0],
                             time.process_time() - self._start[1]))


def run_once(files, bindings, measured, epochs, every, output_dir):
    extra = [ALL_ON] if measured else ["train.measurements = []"]
    launch.parse(files, list(bindings) + extra + [
        f"train.epochs = {epochs}", "train.verbose = 0", f"train.gradient_norm_every = {every}"])
    timer = EpochTimer()
    result = runner.train(output_dir=output_dir, experiment="bench_measurement",
                          extra_callbacks=[timer])
    sharpness = result["measurements"].get("sharpness/seconds") if measured else None
    return timer.seconds[1:], sharpness


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--every", type=int, default=10, help="train.gradient_norm_every")
    parser.add_argument("--setups", nargs="*", default=None,
                        help="setup names to run (default: all)")
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as output_dir:
        for name, (files, bindings) in SETUPS.items():
            if args.setups and name not in args.setups:
                continue
            times = {False: [], True: []}
            sharpness = []
            for _ in range(args.repeats):
                for measured in (False, True):
                    seconds, sharp = run_once(files, bindings, measured, args.epochs, args.every,
                                              output_dir)
                    times[measured].extend(seconds)
                    if sharp is not None:
                        sharpness.append(sharp)
            wall = {arm: [w for w, _ in t] for arm, t in times.items()}
            cpu = {arm: [c for _, c in t] for arm, t in times.items()}
            off, on = statistics.median(wall[False]), statistics.median(wall[True])
            rows.append((name, off, on, on / off, min(wall[True]) / min(wall[False]),
                         statistics.median(cpu[True]) / statistics.median(cpu[False]),
                         statistics.median(sharpness)))
            print(f"{name}: off {off:.4f} s, on {on:.4f} s", file=sys.stderr)

    print(f"\nWall time per epoch, median of {args.repeats} x {args.epochs - 1} epochs per arm "
          f"(first epoch dropped), measurements logged every {args.every} updates.\n")
    print("| setup | epoch s, off | epoch s, all on | on / off | on / off, fastest epochs "
          "| on / off, CPU time | sharpness s (once, at end) |")
    print("|---|---|---|---|---|---|---|")
    for name, off, on, ratio, fastest, cpu, sharp in rows:
        print(f"| {name} | {off:.4f} | {on:.4f} | {ratio:.3f} | {fastest:.3f} | {cpu:.3f} "
              f"| {sharp:.3f} |")


if __name__ == "__main__":
    main()
