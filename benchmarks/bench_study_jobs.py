"""--jobs=1 against --jobs=2 on the same small study: does running two runs at once pay?

The study is 8 runs of the digits MLP (B in 16..128 x two learning rates, 10 epochs each, a few
seconds apiece), launched through ``main.py`` exactly as a user would, once sequentially in one
process and once with two worker processes. Prints both wall times and their ratio; the target
is a ratio <= 0.65 on a 2-core machine (perfect scaling would be 0.5).

Other processes on the machine make either number meaningless, so each launch also reports the
CPU time the rest of the machine used meanwhile (all CPUs' busy time from /proc/stat, less this
launch's own processes): a launch is quiet when that is under 0.1 core on average. Repeats
alternate jobs=1 and jobs=2; each pair's ratio is printed, and the best of the quiet launches
of each.

    python benchmarks/bench_study_jobs.py [--repeats=1]
"""

import argparse
import os
import resource
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


QUIET_CORES = 0.1


def busy_seconds():
    """CPU seconds all CPUs of the machine have been busy since boot (/proc/stat), or None."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def launch(gin_file, output, jobs):
    """(wall seconds, other processes' cores on average) of one study launch with
    ``--jobs=jobs`` (a fresh study directory)."""
    busy, own, started = busy_seconds(), own_seconds(), time.time()
    process = subprocess.run(
        [sys.executable, "main.py", f"--gin_file={gin_file}", f"--output_dir={output}",
         f"--jobs={jobs}", f"--run_name=jobs{jobs}"], cwd=REPO, capture_output=True, text=True)
    seconds = time.time() - started
    if process.returncode != 0:
        sys.exit(f"--jobs={jobs} failed:\n{process.stdout[-2000:]}\n{process.stderr[-2000:]}")
    others = None
    if busy is not None:
        others = max(0.0, (busy_seconds() - busy) - (own_seconds() - own)) / seconds
    return seconds, others


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    load = os.getloadavg()
    alone, together = machine_parallelism()
    print(f"cores: {os.cpu_count()}, runs: 8, repeats: {args.repeats}, load average before "
          f"{load[0]:.2f}")
    print(f"machine: one busy loop {alone:.2f}s alone, {together:.2f}s with a second at once "
          f"({together / alone:.2f}x; 1.0 = two free cores)")
    print(f"{'repeat':>6} {'jobs':>4} {'wall s':>7} {'others':>7}  (others: cores other "
          f"processes used meanwhile; quiet < {QUIET_CORES})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        gin_file = os.path.join(tmp, "bench_study.gin")
        with open(gin_file, "w") as handle:
            handle.write(STUDY)
        launches = {1: [], 2: []}
        for repeat in range(args.repeats):
            for jobs in (1, 2):
                seconds, others = launch(gin_file, os.path.join(tmp, f"r{repeat}"), jobs)
                launches[jobs].append((seconds, others))
                shown = "?" if others is None else f"{others:.2f}"
                print(f"{repeat:>6} {jobs:>4} {seconds:>7.1f} {shown:>7}", flush=True)
            pair = launches[2][-1][0] / launches[1][-1][0]
            print(f"{repeat:>6} ratio {pair:.2f}", flush=True)
    best = {}
    for jobs, runs in launches.items():
        quiet = [s for s, others in runs if others is not None and others < QUIET_CORES]
        best[jobs] = (min(quiet), True) if quiet else (min(s for s, _ in runs), False)
    ratio = best[2][0] / best[1][0]
    quiet = best[1][1] and best[2][1]
    print(f"best{' quiet' if quiet else ' (NOT quiet: other processes competed)'}: "
          f"jobs=1 {best[1][0]:.1f}s, jobs=2 {best[2][0]:.1f}s, load average after "
          f"{os.getloadavg()[0]:.2f}")
    print(f"ratio jobs=2 / jobs=1: {ratio:.2f} (target <= {TARGET}: "
          f"{'met' if ratio <= TARGET else 'not met'})")


if __name__ == "__main__":
    main()
