"""What checkpointing costs: the same runs with checkpoints off, at the default cadence, and at an
aggressive one, side by side in one process, several rounds.

    python benchmarks/bench_checkpoint.py [--rounds 3] [--epochs 40]

Each run is the shipped digits MLP (``gin/experiments/digits_mlp.gin``, 45 updates per epoch)
through the real runner, measurements at their defaults. Arms:

- off: ``checkpoints.every_n_minutes = None`` (no checkpoint until the end);
- default: the shipped cadence (``checkpoints.every_n_minutes = 2``, keep 2);
- every 10 updates: ``checkpoints.every_n_updates = 10`` (a checkpoint every ~0.1 s here).

Arms are interleaved round by round. Reported: training time (``result.json``'s
``train_time_s``, the loop only) per arm, fastest and median, CPU time of the process around the
run, and the ratios to "off". Target: the default cadence costs <= 3% of training time.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import launch  # noqa: E402

ARMS = {
    "off": ["checkpoints.every_n_minutes = None"],
    "default (every 2 min)": [],
    "every 10 updates": ["checkpoints.every_n_updates = 10"],
}


def run_once(bindings, epochs, output_dir):
    started = time.process_time()
    (result,) = launch.launch(["gin/experiments/digits_mlp.gin"], [
        f"train.epochs = {epochs}", "train.verbose = 0", *bindings], output_dir=output_dir,
        print_fn=lambda *_: None)
    checkpoints = len([n for n in os.listdir(os.path.join(result["run_dir"], "checkpoints"))
                       if n.startswith("state-")])
    return result["train_time_s"], time.process_time() - started, checkpoints


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    times = {arm: [] for arm in ARMS}
    cpu = {arm: [] for arm in ARMS}
    kept = {}
    with tempfile.TemporaryDirectory() as output_dir:
        run_once(ARMS["off"], 1, output_dir)  # warm-up: imports, first tracing
        for round_ in range(args.rounds):
            order = list(ARMS) if round_ % 2 == 0 else list(reversed(ARMS))  # no arm always first
            for arm in order:
                bindings = ARMS[arm]
                seconds, cpu_seconds, kept[arm] = run_once(bindings, args.epochs, output_dir)
                times[arm].append(seconds)
                cpu[arm].append(cpu_seconds)
    base_fast, base_median = min(times["off"]), statistics.median(times["off"])
    print(f"digits MLP, {args.epochs} epochs x 45 updates, {args.rounds} rounds\n")
    print("| arm | train s (fastest) | train s (median) | CPU s (median) | vs off (fastest) "
          "| vs off (median) | checkpoints kept |")
    print("|---|---|---|---|---|---|---|")
    for arm in ARMS:
        fast, median = min(times[arm]), statistics.median(times[arm])
        print(f"| {arm} | {fast:.3f} | {median:.3f} | {statistics.median(cpu[arm]):.3f} | "
              f"{fast / base_fast:.3f} | {median / base_median:.3f} | {kept[arm]} |")
    ratio = min(times["default (every 2 min)"]) / base_fast
    print(f"\n| check | measured | target | met |\n|---|---|---|---|\n"
          f"| default cadence / off (fastest) | {ratio:.4f} | <= 1.03 | "
          f"{'yes' if ratio <= 1.03 else 'NO'} |")


if __name__ == "__main__":
    main()
