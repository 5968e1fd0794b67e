"""What a small run pays per process with the default measurements, against measurements off.

    python benchmarks/bench_run_cost.py [--rounds 3]

Studies are many small runs, so what a run pays before and around training matters as much as
the step. The run: linear regression (``regression_mlp.gin`` with no hidden layer), 1024 training
rows, B = 128 = 16 x 8 (k = 8), 10 epochs: 80 updates. Two arms, each launched as a user does
(``main.py`` in a fresh process): the default measurements, and ``measurements.enabled = []``.

1. Whole process: ``--rounds`` launches of each arm, alternating; the median wall seconds and the
   ratio default / off. Target (measurement-architecture issue): at most 1.3.
2. Where the time goes: one more launch of each arm with a timer inside the process (this
   script's ``--child`` mode, which runs ``main.py``'s code path with each phase timed): imports,
   parsing, plan (data, layout, pipelines), model (build and compile), callbacks and
   measurements, training split into its first epoch and the rest (the first epoch's excess over
   a later one is tracing), the final evaluation and writing, and the remainder (process start
   and exit).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

STARTED = time.perf_counter()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ["gin/experiments/regression_mlp.gin"]
BINDINGS = ["mlp.hidden_units = ()", "train.batch_size = 128", "train.micro_batch_size = 16",
            "synthetic_regression.num_examples = 1280", "train.epochs = 10", "train.verbose = 0"]
ARMS = {"default measurements": [], "measurements off": ["measurements.enabled = []"]}


def launch(arm, output_dir, name):
    command = [sys.executable, os.path.join(ROOT, "main.py"), f"--output_dir={output_dir}",
               f"--run_name={name}"] + [f"--gin_file={f}" for f in FILES] + \
        [f"--gin_bindings={b}" for b in BINDINGS + ARMS[arm]]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def child(arm, output_dir, out_file):
    """One run in this process, each phase timed; the phases are written to ``out_file``."""
    phases = {}
    sys.path.insert(0, ROOT)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from experiments import launch as launch_lib  # noqa: PLC0415
    from experiments.engine import distribute  # noqa: PLC0415
    from experiments.run import plan as plan_lib  # noqa: PLC0415
    from experiments.run import runner  # noqa: PLC0415
    import keras  # noqa: PLC0415

    phases["imports"] = time.perf_counter() - STARTED

    def timed(owner, name, key):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                phases[key] = phases.get(key, 0.0) + time.perf_counter() - started

        setattr(owner, name, wrapper)

    epochs = []

    class EpochTimes(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epochs.append(time.perf_counter() - self._start)

    original_fit = distribute.fit

    def fit(model, pipelines, epochs_, callbacks, *args, **kwargs):
        return original_fit(model, pipelines, epochs_, list(callbacks) + [EpochTimes()], *args,
                            **kwargs)

    distribute.fit = fit
    timed(plan_lib, "build", "plan")
    # (before the run-mode change the model was built in the runner)
    timed(plan_lib if hasattr(plan_lib, "build_model") else runner, "build_model", "model")
    timed(runner, "make_callbacks", "callbacks and measurements")
    timed(distribute, "fit", "training")
    timed(distribute, "evaluate", "final evaluation")
    timed(runner.run_dir_lib, "write_json", "writing (json)")
    started = time.perf_counter()
    launch_lib.parse([os.path.join(ROOT, f) for f in FILES], BINDINGS + ARMS[arm])
    phases["parse"] = time.perf_counter() - started
    started = time.perf_counter()
    runner.train(output_dir=output_dir, experiment="bench_run_cost", run_name="child")
    phases["run total"] = time.perf_counter() - started
    later = statistics.median(epochs[1:]) if len(epochs) > 1 else 0.0
    phases["training: first epoch's excess (tracing)"] = epochs[0] - later
    phases["training: the other epochs"] = phases["training"] - phases[
        "training: first epoch's excess (tracing)"]
    with open(out_file, "w", encoding="utf-8") as handle:
        json.dump(phases, handle)


def breakdown(arm, output_dir):
    out_file = os.path.join(output_dir, "phases.json")
    command = [sys.executable, os.path.abspath(__file__), "--child", arm, "--output_dir",
               output_dir, "--out_file", out_file]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    total = time.perf_counter() - started
    with open(out_file, encoding="utf-8") as handle:
        phases = json.load(handle)
    phases["process total"] = total
    return phases


ROWS = ["imports", "parse", "plan", "model", "callbacks and measurements",
        "training: first epoch's excess (tracing)", "training: the other epochs",
        "final evaluation", "writing (json)", "process total"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=list(ARMS))
    parser.add_argument("--output_dir")
    parser.add_argument("--out_file")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.output_dir, args.out_file)
        return
    with tempfile.TemporaryDirectory() as output_dir:
        walls = {arm: [] for arm in ARMS}
        for round_ in range(args.rounds):
            order = list(ARMS) if round_ % 2 == 0 else list(reversed(ARMS))
            for arm in order:
                walls[arm].append(launch(arm, output_dir, f"{round_}-{len(walls[arm])}-"
                                         f"{arm.split()[1]}"))
        medians = {arm: statistics.median(times) for arm, times in walls.items()}
        ratio = medians["default measurements"] / medians["measurements off"]
        print(f"small linear-regression run (80 updates, B = 128 = 16 x 8), fresh main.py "
              f"processes, {args.rounds} rounds:")
        for arm, times in walls.items():
            print(f"  {arm:22s} {medians[arm]:6.2f} s  ({', '.join(f'{t:.2f}' for t in times)})")
        print(f"  per-process ratio default / off: {ratio:.2f} (target <= 1.3: "
              f"{'met' if ratio <= 1.3 else 'not met'})")
        phases = {arm: breakdown(arm, os.path.join(output_dir, f"phases-{i}"))
                  for i, arm in enumerate(ARMS)}
        print("\nphase (seconds, one fresh process each) | " + " | ".join(ARMS))
        for row in ROWS:
            print(f"  {row:42s} " + "  ".join(f"{phases[arm].get(row, 0.0):8.2f}"
                                              for arm in ARMS))


if __name__ == "__main__":
    main()
