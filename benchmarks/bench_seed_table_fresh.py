"""The seed's table as a user runs it: batchlab and a plain Keras script, each in a fresh process.

    python benchmarks/bench_seed_table_fresh.py [--rounds 3]

``bench_small_runs.py`` times both inside one warm process; a user launches
``python main.py --gin_file=gin/experiments/seed_table.gin`` (the three runs of the seed's table
as one sweep) or their own script, each a fresh process that imports TensorFlow, builds, traces
and trains. Each round launches both (the order flips every round):

- batchlab: ``main.py`` with the seed table's gin file; fit time is the sum of the three runs'
  ``train_time_s`` (every epoch with its validation and the default measurements);
- plain Keras: this script's ``--plain`` mode, the script a user would write (a fresh
  ``keras.Sequential`` per run, ``model.fit(..., validation_data=..., verbose=0)``) on the same
  rows; fit time is the sum of the three ``fit`` calls.

Whole process is the wall time of the launch. Targets (measurement-architecture issue): fit
time <= 0.4x and whole process <= 0.5x plain Keras.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = [(16, 15), (160, 15), (160, 150)]  # (batch size, epochs) of gin/experiments/seed_table.gin


def plain(out_file):
    """The plain Keras script (in this fresh process); writes the summed fit seconds."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # noqa: PLC0415

    sys.path.insert(0, ROOT)
    from experiments.inputs import synthetic  # noqa: PLC0415  (the same rows as the gin file)

    data = synthetic.synthetic_binary(num_examples=700, validation_split=200 / 700)
    fit_seconds = 0.0
    for batch, epochs in RUNS:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((20,)), keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1, activation="sigmoid")])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                      metrics=["accuracy"])
        started = time.perf_counter()
        model.fit(data.x_train, data.y_train, batch_size=batch, epochs=epochs,
                  validation_data=(data.x_validation, data.y_validation), verbose=0)
        fit_seconds += time.perf_counter() - started
    with open(out_file, "w", encoding="utf-8") as handle:
        json.dump({"fit_seconds": fit_seconds}, handle)


def launch(command):
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_batchlab(output_dir):
    process = launch([sys.executable, os.path.join(ROOT, "main.py"), f"--output_dir={output_dir}",
                      "--gin_file=gin/experiments/seed_table.gin",
                      "--gin_bindings=train.verbose = 0"])
    fit = 0.0
    for path in glob.glob(os.path.join(output_dir, "**", "result.json"), recursive=True):
        with open(path, encoding="utf-8") as handle:
            fit += json.load(handle)["train_time_s"]
    return fit, process


def run_plain(output_dir):
    out_file = os.path.join(output_dir, "plain.json")
    process = launch([sys.executable, os.path.abspath(__file__), "--plain", out_file])
    with open(out_file, encoding="utf-8") as handle:
        return json.load(handle)["fit_seconds"], process


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plain", metavar="OUT_FILE")
    args = parser.parse_args()
    if args.plain:
        plain(args.plain)
        return
    arms = {"batchlab": run_batchlab, "plain Keras": run_plain}
    times = {arm: [] for arm in arms}
    for round_ in range(args.rounds):
        order = list(arms) if round_ % 2 == 0 else list(reversed(arms))
        for arm in order:
            with tempfile.TemporaryDirectory() as output_dir:
                times[arm].append(arms[arm](output_dir))
    print(f"The seed's table (3 runs), each side a fresh process, {args.rounds} rounds "
          "(median; per round in brackets):")
    for column, name in ((0, "fit time"), (1, "whole process")):
        ours = [t[column] for t in times["batchlab"]]
        theirs = [t[column] for t in times["plain Keras"]]
        ratios = [a / b for a, b in zip(ours, theirs)]
        target = 0.4 if column == 0 else 0.5
        ratio = statistics.median(ratios)
        print(f"  {name:14s} batchlab {statistics.median(ours):6.2f} s, plain Keras "
              f"{statistics.median(theirs):6.2f} s, ratio {ratio:.2f} "
              f"({', '.join(f'{r:.2f}' for r in ratios)}); target <= {target}: "
              f"{'met' if ratio <= target else 'not met'}")


if __name__ == "__main__":
    main()
