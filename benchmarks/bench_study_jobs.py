"""--jobs=1 against --jobs=2 on the same small study: does running two runs at once pay?

The study is 8 runs of the digits MLP (B in 16..128 x two learning rates, 10 epochs each, a few
seconds apiece), launched through ``main.py`` exactly as a user would, once sequentially in one
process and once with two worker processes. Prints both wall times and their ratio; the target
is a ratio <= 0.65 on a 2-core machine (perfect scaling would be 0.5).

    python benchmarks/bench_study_jobs.py [--repeats=1]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 0.65
STUDY = """include 'gin/experiments/digits_mlp.gin'
train.verbose = 0
train.eval_batch_size = 512
study.batch_sizes = [16, 32, 64, 128]
study.learning_rates = [0.05, 0.1]
study.epochs = [10]
study.eval_every_n_updates = 20
study.target = 0.9
"""


def launch(gin_file, output, jobs):
    """Wall seconds of one study launch with ``--jobs=jobs`` (a fresh study directory)."""
    started = time.time()
    process = subprocess.run(
        [sys.executable, "main.py", f"--gin_file={gin_file}", f"--output_dir={output}",
         f"--jobs={jobs}", f"--run_name=jobs{jobs}"], cwd=REPO, capture_output=True, text=True)
    seconds = time.time() - started
    if process.returncode != 0:
        sys.exit(f"--jobs={jobs} failed:\n{process.stdout[-2000:]}\n{process.stderr[-2000:]}")
    return seconds


SPIN = "import time\nt = time.time()\nfor i in range(20_000_000): pass\nprint(time.time() - t)"


def machine_parallelism():
    """Seconds of one busy Python loop alone, and of two at once (each): on two free cores the
    two take as long as one; when other processes hold a core they take about twice as long,
    and no --jobs can beat that."""
    alone = float(subprocess.run([sys.executable, "-c", SPIN], capture_output=True,
                                 text=True).stdout)
    pair = [subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    together = max(float(p.communicate()[0]) for p in pair)
    return alone, together


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    load = os.getloadavg()
    alone, together = machine_parallelism()
    with tempfile.TemporaryDirectory() as tmp:
        gin_file = os.path.join(tmp, "bench_study.gin")
        with open(gin_file, "w") as handle:
            handle.write(STUDY)
        times = {1: [], 2: []}
        for repeat in range(args.repeats):
            for jobs in (1, 2):
                times[jobs].append(launch(gin_file, os.path.join(tmp, f"r{repeat}"), jobs))
    one, two = min(times[1]), min(times[2])
    ratio = two / one
    print(f"cores: {os.cpu_count()}, runs: 8, repeats: {args.repeats} (best of), load average "
          f"before {load[0]:.2f}, after {os.getloadavg()[0]:.2f} (other processes compete)")
    print(f"machine: one busy loop {alone:.2f}s alone, {together:.2f}s with a second at once "
          f"({together / alone:.2f}x; 1.0 = two free cores)")
    print(f"{'jobs':>6} {'wall s':>8}")
    print(f"{1:>6} {one:>8.1f}")
    print(f"{2:>6} {two:>8.1f}")
    print(f"ratio jobs=2 / jobs=1: {ratio:.2f} (target <= {TARGET}: "
          f"{'met' if ratio <= TARGET else 'not met'})")


if __name__ == "__main__":
    main()
