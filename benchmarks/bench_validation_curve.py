"""What the validation curve costs a steps-to-result study run: a digits run with and without it.

    python benchmarks/bench_validation_curve.py [--rounds 3] [--every 5]

Each round trains the same digits MLP run (B = 16, 6 epochs, the default measurements, the
validation set of 359 rows) twice in this process, without and with
``@measurements.validation_curve`` every ``--every`` updates (what ``study.eval_every_n_updates``
sets for every run of a study), alternating which goes first. It prints each run's training time
(``result.json``: ``train_time_s``) and the ratio with / without. Then, once each, the same two
runs as a user launches them (``main.py`` in a fresh process, whole-process wall time).

Target (issue: measurement architecture): with the curve every 5 updates a run costs at most 1.5x
the run without it. A point is evaluated inside the train call (``experiments.engine.evaluation``),
so it costs one pass over the validation rows and no graph call of its own.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # noqa: E402

from experiments import launch  # noqa: E402
from experiments.run import runner  # noqa: E402

FILES = ["gin/experiments/digits_mlp.gin"]
BASE = ["train.batch_size = 16", "train.epochs = 6", "train.verbose = 0",
        "train.eval_batch_size = 512"]


def curve(every):
    return [f"measurements.also = [@measurements.validation_curve]",
            f"measurements.validation_curve.every_n_updates = {every}"]


def run_in_process(bindings, output_dir, name):
    launch.parse([os.path.join(ROOT, f) for f in FILES], BASE + bindings)
    result = runner.train(output_dir=output_dir, experiment="bench_curve", run_name=name)
    return result["train_time_s"], result


def run_as_user(bindings, output_dir, name):
    command = [sys.executable, os.path.join(ROOT, "main.py"), f"--output_dir={output_dir}",
               f"--run_name={name}"] + [f"--gin_file={f}" for f in FILES] + \
        [f"--gin_bindings={b}" for b in BASE + bindings]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--every", type=int, default=5)
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    arms = {"without curve": [], f"curve every {args.every}": curve(args.every)}
    times = {arm: [] for arm in arms}
    points = 0
    with tempfile.TemporaryDirectory() as output_dir:
        run_in_process([], output_dir, "warm-up")  # imports, first tracing of the process
        for round_ in range(args.rounds):
            order = list(arms) if round_ % 2 == 0 else list(reversed(arms))
            for arm in order:
                seconds, result = run_in_process(arms[arm], output_dir, f"{arm}-{round_}")
                times[arm].append(seconds)
                curve_points = result["measurements"].get("curve", {}).get("val_loss", [])
                points = max(points, len(curve_points))
        without, with_ = (statistics.median(times[arm]) for arm in arms)
        print(f"digits MLP, B = 16, 6 epochs; {points} curve points per run; "
              f"{args.rounds} rounds (median training seconds)")
        for arm in arms:
            print(f"  {arm:18s} {statistics.median(times[arm]):7.2f} s  "
                  f"({', '.join(f'{t:.2f}' for t in times[arm])})")
        print(f"  training time ratio with / without: {with_ / without:.2f} (target <= 1.5: "
              f"{'met' if with_ / without <= 1.5 else 'not met'})")
        process = {arm: run_as_user(arms[arm], output_dir, f"user-{i}")
                   for i, arm in enumerate(arms)}
        ratio = process[list(arms)[1]] / process[list(arms)[0]]
        print("  whole process (main.py, fresh): " + ", ".join(
            f"{arm} {seconds:.2f} s" for arm, seconds in process.items())
              + f"; ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
