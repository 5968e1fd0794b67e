"""The micro-batch finder: the largest micro-batch b (a divisor of B) that fits, measured.

A user with a virtual batch B asks "how many rows can go through my model at once?". The finder
trains a few updates of B rows of the run's model at each candidate b (the divisors of B), from the
smallest up, each probe in a process of its own (the run's configuration, plus
``find_micro_batch.probe = b``), and measures:

- on a GPU, TensorFlow's peak allocation on the device, stopping at the first b that runs out of
  memory (the probe's process reports it and ends; the finder goes on);
- on CPU, the probe process' peak resident memory during training (what a machine's or a
  scheduler's memory limit counts: TensorFlow, the data, the weights, optimizer slots, the
  accumulated gradients, one micro-batch's activations; the peak is reset to the current size
  just before training, so a start-up spike does not count), stopping at the first b above
  ``budget_mb``. A process of its own per probe: memory freed by one probe stays counted in a
  process's size.

It prints one row per probe (b, k, peak memory, examples/s) and the bindings to paste
(``train.micro_batch_size = b``). Configured in gin (``find_micro_batch.*``); run with
``python main.py --gin_file=<experiment> --gin_file=gin/tools/find_micro_batch.gin``.
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import gin
import numpy as np
import tensorflow as tf

from experiments.common import checks, paths
from experiments.common.memory import peak_memory_mb
from experiments.engine.virtual_batch_model import as_virtual_batch_model
from experiments.run import plan as plan_lib
from experiments.run import seeding


@dataclasses.dataclass(frozen=True)
class Probe:
    micro_batch_size: int
    num_micro_batches: int
    peak_mb: float
    examples_per_sec: float
    fits: bool


def divisors(batch_size):
    """Every b that divides B, ascending."""
    return [b for b in range(1, batch_size + 1) if batch_size % b == 0]


def candidates(batch_size, smallest=1):
    """The divisors of B from ``smallest`` up (tiny b are never the answer and cost time)."""
    return [b for b in divisors(batch_size) if b >= smallest]


def _synthetic_batch(spec, rows, seed=0):
    """B rows shaped like the data (inputs and integer or float targets)."""
    rng = np.random.default_rng(seed)
    shape = tuple(d if d is not None else 16 for d in spec.input_shape)
    if spec.vocabulary_size:
        x = rng.integers(0, spec.vocabulary_size, size=(rows, *shape)).astype("int32")
    else:
        x = rng.normal(size=(rows, *shape)).astype("float32")
    if spec.task in ("regression",):
        y = rng.normal(size=(rows, spec.num_outputs)).astype("float32")
    elif spec.task == "binary":
        y = rng.integers(0, 2, size=(rows, 1)).astype("float32")
    elif spec.task == "language_model":
        y = rng.integers(0, spec.num_outputs, size=(rows, *shape)).astype("int64")
    else:
        y = rng.integers(0, spec.num_outputs, size=(rows,)).astype("int64")
    return x, y


class Prober:
    """Trains a few updates at a given micro-batch and measures memory and speed."""

    def __init__(self, model_fn, spec, optimizer, loss, batch_size, updates=3):
        self.model_fn, self.spec = model_fn, spec
        self.optimizer, self.loss = optimizer, loss
        self.batch_size = batch_size
        self.updates = updates
        self.model = None
        self.gpu = bool(tf.config.list_logical_devices("GPU"))
        self.x, self.y = _synthetic_batch(spec, batch_size)

    def measure(self, micro):
        """The peak memory (MiB) and examples/s of ``updates`` updates at b = ``micro``.

        One model serves every probe (re-configured and re-compiled for each b): a new model per
        probe would add its weights to the process' peak each time.
        """
        if self.model is None:
            self.model = as_virtual_batch_model(self.model_fn(self.spec))
        self.model.configure_virtual_batches(micro if micro < self.batch_size else None,
                                             measure_every_n_updates=0)
        self.model.compile(optimizer=self.optimizer() if callable(self.optimizer)
                           else self.optimizer, loss=self.loss)
        if self.gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
        else:
            _reset_peak_rss()  # what was allocated before training (imports, data) is not counted
        dataset = tf.data.Dataset.from_tensors((self.x, self.y)).repeat(self.updates + 1)
        self.model.fit(dataset.take(1), verbose=0, shuffle=False)  # tracing, first allocation
        started = time.perf_counter()
        self.model.fit(dataset.take(self.updates), verbose=0, shuffle=False)
        seconds = time.perf_counter() - started
        if self.gpu:
            peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2.0 ** 20
        else:
            peak = _peak_rss_mb()
        return peak, self.updates * self.batch_size / max(seconds, 1e-9)


def _reset_peak_rss():
    """Resets the process' peak resident set size to its current size (Linux:
    ``/proc/self/clear_refs``), so that the peak measured next is the training's, over the
    memory the process holds now, and not a spike of its start-up."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_rss_mb():
    """The peak resident set size since the last reset, in MiB (``VmHWM``); elsewhere the
    process' peak (``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_memory_mb()


def find(prober, batch_size, budget_mb=None, smallest=1):
    """Probes b = divisors of B from ``smallest`` up; returns (best Probe or None, all probes).

    Stops at the first b that does not fit: out of memory on a GPU, above ``budget_mb`` on CPU.
    """
    probes, best = [], None
    for micro in candidates(batch_size, smallest):
        try:
            peak, speed = prober.measure(micro)
        except tf.errors.ResourceExhaustedError:
            probes.append(Probe(micro, batch_size // micro, float("nan"), 0.0, False))
            break
        fits = budget_mb is None or peak <= budget_mb
        probes.append(Probe(micro, batch_size // micro, peak, speed, fits))
        if not fits:
            break
        best = probes[-1]
    return best, probes


def choose(prober, batch_size, budget_mb, smallest=1):
    """``find``, and a clear error naming the binding when not even the smallest b fits."""
    best, probes = find(prober, batch_size, budget_mb, smallest)
    if best is None and probes and budget_mb is not None:
        raise ValueError(f"find_micro_batch.budget_mb={budget_mb:g} is below the memory of one "
                         f"micro-batch of {probes[0].micro_batch_size} rows "
                         f"({probes[0].peak_mb:.1f} MiB measured).")
    return best, probes


def format_report(best, probes, batch_size, budget_mb):
    """The table of probes and the bindings to paste."""
    lines = ["| b | k | peak memory (MiB) | examples/s | fits |", "|---|---|---|---|---|"]
    for p in probes:
        lines.append(f"| {p.micro_batch_size} | {p.num_micro_batches} | {p.peak_mb:.1f} | "
                     f"{p.examples_per_sec:.0f} | {'yes' if p.fits else 'no'} |")
    where = "the GPU's memory" if budget_mb is None else f"a budget of {budget_mb:g} MiB"
    if best is None:
        lines.append(f"\nNo micro-batch of B = {batch_size} fits in {where}.")
    else:
        lines.append(f"\nLargest micro-batch within {where}: b = {best.micro_batch_size} "
                     f"(k = {best.num_micro_batches}). Bindings:\n"
                     f"    train.batch_size = {batch_size}\n"
                     f"    train.micro_batch_size = {best.micro_batch_size}")
    return "\n".join(lines)


@gin.configurable("find_micro_batch")
def settings(budget_mb=None, smallest=1, updates=3, probe=None):
    """Args:
      budget_mb: on CPU, the peak resident memory allowed for the training process (MiB);
        required without a GPU. Ignored on a GPU (the device's memory is the budget).
      smallest: the smallest b probed.
      updates: timed updates per probe.
      probe: internal: measure this b only, in this process (what each probe process runs).
    """
    if budget_mb is not None:
        budget_mb = checks.positive_number(budget_mb, "find_micro_batch.budget_mb")
    return (budget_mb, checks.positive_int(smallest, "find_micro_batch.smallest"),
            checks.positive_int(updates, "find_micro_batch.updates"),
            checks.optional_positive_int(probe, "find_micro_batch.probe"))


PROBE_PREFIX = "BATCHLAB-MICRO-BATCH-PROBE "


def run(run_settings, config_text):
    """``train.mode = 'find_micro_batch'``: probes the run's model at its ``train.batch_size``
    (or, with ``find_micro_batch.probe = b``, measures b in this process); prints the table and
    the bindings; returns {'micro_batch_size', 'probes', 'report'}."""
    budget_mb, smallest, updates, probe = settings()
    batch_size = checks.positive_int(run_settings.data.batch_size, "train.batch_size")
    if probe is not None:
        return _probe_here(run_settings, batch_size, probe, updates)
    gpu = bool(tf.config.list_logical_devices("GPU"))
    if not gpu and budget_mb is None:
        raise ValueError("find_micro_batch.budget_mb is required on CPU (the peak resident memory "
                         "allowed, MiB); on a GPU the device's memory is the budget.")
    with tempfile.TemporaryDirectory() as scratch:
        config = os.path.join(scratch, "run.gin")
        with open(config, "w") as handle:
            handle.write(config_text)
        best, probes = choose(ProcessProber(config), batch_size,
                              None if gpu else budget_mb, smallest)
    report = format_report(best, probes, batch_size, None if gpu else budget_mb)
    print(report)
    return {"micro_batch_size": best.micro_batch_size if best else None,
            "probes": [dataclasses.asdict(p) for p in probes], "report": report}


class ProcessProber:
    """Measures each b in a fresh ``python main.py`` with the run's configuration."""

    def __init__(self, config_path):
        self.config_path = config_path

    def measure(self, micro):
        command = [sys.executable, os.path.join(paths.REPO_ROOT, "main.py"),
                   f"--gin_file={self.config_path}",
                   f"--gin_bindings=find_micro_batch.probe = {micro}"]
        process = subprocess.run(command, capture_output=True, text=True, cwd=paths.REPO_ROOT,
                                 env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        lines = [line for line in process.stdout.splitlines() if line.startswith(PROBE_PREFIX)]
        if not lines:
            raise RuntimeError(f"The probe at b = {micro} failed:\n{process.stderr[-2000:]}")
        measured = json.loads(lines[-1][len(PROBE_PREFIX):])
        if measured.get("out_of_memory"):
            raise tf.errors.ResourceExhaustedError(None, None, "out of memory")
        return measured["peak_mb"], measured["examples_per_sec"]


def _probe_here(run_settings, batch_size, micro, updates):
    """One probe in this process; the result goes to stdout for the parent."""
    if batch_size % micro:
        raise ValueError(f"find_micro_batch.probe={micro} does not divide train.batch_size="
                         f"{batch_size}.")
    seeding.seed_everything(run_settings.seed)
    plan_lib.set_dtype_policy(run_settings.model.dtype_policy)
    model = run_settings.model
    prober = Prober(model.model_fn, run_settings.data.data_fn().spec, model.optimizer,
                    model.loss, batch_size, updates)
    try:
        peak, speed = prober.measure(micro)
        out = {"peak_mb": peak, "examples_per_sec": speed}
    except tf.errors.ResourceExhaustedError:
        out = {"out_of_memory": True}
    print(PROBE_PREFIX + json.dumps(out), flush=True)
    return out
