"""When XLA pays: ``fit.jit_compile`` off vs on, per epoch after the first, through the runner.

    python benchmarks/bench_jit.py [--rounds 2] [--epochs 4]

Setups from ``bench_measurement.py`` (the reference MLP 784-512-512-10 on 8192 rows at B = 256,
whole and as 8 micro-batches of 32, and the digits MLP at B = 32), measurements off (the train
step alone), arms interleaved round by round. The first epoch (tracing, and XLA compiling each
batch shape) is reported apart: it is what a short run pays. Prints a markdown table.
"""

import argparse
import os
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import logging  # noqa: E402

from benchmarks.bench_measurement import MLP_GIN, REFERENCE_MLP, EpochTimer  # noqa: E402
from experiments import launch  # noqa: E402
from experiments.run import runner  # noqa: E402

SETUPS = {
    "MLP 784-512-512-10, B=256 (k=1)": (MLP_GIN, REFERENCE_MLP + ["train.batch_size = 256"]),
    "MLP 784-512-512-10, B=256 = 8x32 (k=8)": (
        MLP_GIN, REFERENCE_MLP + ["train.batch_size = 256", "train.micro_batch_size = 32"]),
    "digits MLP(64,64), B=32 (k=1)": (MLP_GIN, ["train.batch_size = 32"]),
}


def run_once(files, bindings, jit, epochs, output_dir):
    """[(wall, cpu)] of every epoch of one run."""
    launch.parse(files, list(bindings) + [
        f"fit.jit_compile = {jit}", f"train.epochs = {epochs}", "train.verbose = 0",
        "measurements.enabled = []"])
    timer = EpochTimer()
    runner.train(output_dir=output_dir, experiment="bench_jit", extra_callbacks=[timer])
    return timer.seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch (tracing) is timed apart")
    logging.set_verbosity(logging.ERROR)
    print("| setup | first epoch s, off / on | epoch s (median), off | epoch s (median), on "
          "| on / off (fastest) | on / off (CPU) |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as output_dir:
        for name, (files, bindings) in SETUPS.items():
            times = {False: [], True: []}
            first = {False: [], True: []}
            for index in range(args.rounds):
                for jit in ((False, True) if index % 2 == 0 else (True, False)):
                    seconds = run_once(files, bindings, jit, args.epochs, output_dir)
                    first[jit].append(seconds[0][0])
                    times[jit].extend(seconds[1:])
            wall = {jit: [w for w, _ in t] for jit, t in times.items()}
            cpu = {jit: statistics.median(c for _, c in t) for jit, t in times.items()}
            print(f"| {name} | {min(first[False]):.2f} / {min(first[True]):.2f} | "
                  f"{statistics.median(wall[False]):.4f} | {statistics.median(wall[True]):.4f} | "
                  f"{min(wall[True]) / min(wall[False]):.3f} | {cpu[True] / cpu[False]:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
