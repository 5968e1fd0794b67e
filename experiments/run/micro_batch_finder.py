"""The micro-batch finder: the largest micro-batch b (a divisor of B) that fits, measured.

A user with a virtual batch B asks "how many rows can go through my model at once?". The finder
(``train.mode = 'find_micro_batch'``, ``modes.MicroBatchFinderMode``) probes each candidate b (the
divisors of B), from the smallest up. A probe is a short run of the user's own configuration with
``train.micro_batch_size = b``: the same ``plan.build``, ``plan.build_model`` and training loop
(``engine.distribute.fit``, batchlab's ``CustomLoop`` unless ``fit.loop`` says otherwise) as a real
run, on the run's own data, for a few updates and without validation, checkpoints, a run
directory, the run's measurements, AdaScale or the user's extra callbacks; so its memory and
examples/s are those of the user's training updates (a run's evaluation at
``train.eval_batch_size`` and its measurements can add to the peak: leave some headroom). It
measures:

- on a GPU, TensorFlow's peak allocation on the device, stopping at the first b that runs out of
  memory (the probe reports it and ends; the finder goes on);
- on CPU, the probe process' peak resident memory during training (what a machine's or a
  scheduler's memory limit counts: TensorFlow, the data, the weights, optimizer slots, the
  accumulated gradients, one micro-batch's activations; the peak is reset to the current size
  just before training, so a start-up spike does not count), stopping at the first b above
  ``budget_mb``;
- examples/s over the loop's graph calls after the first (which traces the train step), timed by
  ``LoopClock``.

Each probe runs in a process of its own (memory freed by one probe stays counted in a process's
size, and an out-of-memory leaves a process unusable). The interface between the finder and a
probe's process (``ProcessProber``) is ``python main.py`` with the run's configuration and two
bindings, ``find_micro_batch.probe = b`` and ``find_micro_batch.result_file = '<path>'``; the
probe writes one ``ProbeResult`` there as JSON (``ProbeResult.write``, read back with
``ProbeResult.read``). No file means the probe failed; its stderr is shown. A probe sees the
user's run as the user's own process does: it starts in the user's working directory, with the
directories of the user's gin files searched for files (``find_micro_batch.search_dirs``) and
for the modules they ``import`` (``PYTHONPATH``), and its ``--output_dir`` is a scratch
directory deleted after it (a probe writes nothing, and never into the repository).

Before any probe, one process of the same interface (``find_micro_batch.check = (b, ...)``)
builds the run's own plan at each candidate b, as the run would with ``train.micro_batch_size =
b`` (its schedule, AdaScale and epochs as bound; ``check_here``): a configuration the run refuses
ends the finder with the run's own message, and a b the run alone refuses (k = 1 where AdaScale
needs the noise scale, ``steering``) is left out and named in the report. A probe then measures
at the largest B the run reaches, without the schedule.

The finder cannot run inside a sweep or a study (each run would probe, and the printed bindings
would not say for which): ``train.mode = 'find_micro_batch'`` with ``sweep.variants`` or
``study.batch_sizes`` is refused by the launcher once the configuration is parsed, before anything
is written. Ctrl-C or SIGTERM prints the rows measured so far and ends
with 130 or 143; nothing was written, so there is nothing to resume.

The finder prints one row per probe (b, k, peak memory, examples/s) and the bindings to paste
(``train.micro_batch_size = b``). Configured in gin (``find_micro_batch.*``); run with
``python main.py --gin_file=<experiment> --gin_file=gin/tools/find_micro_batch.gin``.
"""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

import gin
import keras
import tensorflow as tf

from experiments.common import checks, json_files, paths
from experiments.common.errors import own_message
from experiments.common.memory import peak_memory_mb
from experiments.engine import distribute
from experiments.run import plan as plan_lib


@dataclasses.dataclass(frozen=True)
class Probe:
    """One row of the finder's table: what b measured and whether it fits."""

    micro_batch_size: int
    num_micro_batches: int
    peak_mb: float
    examples_per_sec: float
    fits: bool


@dataclasses.dataclass(frozen=True)
class FinderSettings:
    """``find_micro_batch.*``, checked (see ``settings``)."""

    budget_mb: Optional[float]
    smallest: int
    updates: int
    probe: Optional[int]
    result_file: Optional[str]
    check: Optional[tuple] = None
    search_dirs: Optional[tuple] = None


@gin.configurable("find_micro_batch")
def settings(budget_mb=None, smallest=1, updates=3, probe=None, result_file=None, check=None,
             search_dirs=None):
    """Args:
      budget_mb: on CPU, the peak resident memory allowed for the training process (MiB);
        required without a GPU. Ignored on a GPU (the device's memory is the budget).
      smallest: the smallest b probed.
      updates: timed updates per probe (at least; the loop's calls hold at most this many).
      probe: internal: measure this b only, in this process (what each probe process runs).
      result_file: internal: where that probe writes its ``ProbeResult`` (JSON), or the check
        its refusals.
      check: internal: build the run's plan at each of these b, in this process (``check_here``).
      search_dirs: internal: the user's gin files' directories, searched for data files in a
        probe's process as in the user's run (its own gin file is a scratch copy).
    """
    if budget_mb is not None:
        budget_mb = checks.positive_number(budget_mb, "find_micro_batch.budget_mb")
    if check is not None:
        check = tuple(checks.positive_int(b, "find_micro_batch.check") for b in check)
    return FinderSettings(
        budget_mb=budget_mb, smallest=checks.positive_int(smallest, "find_micro_batch.smallest"),
        updates=checks.positive_int(updates, "find_micro_batch.updates"),
        probe=checks.optional_positive_int(probe, "find_micro_batch.probe"),
        result_file=None if result_file is None else str(result_file), check=check,
        search_dirs=None if search_dirs is None else tuple(str(d) for d in search_dirs))


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What one probe measured: the record a probe's process hands to the finder.

    ``out_of_memory``: the probe ran out of device memory (then nothing else was measured).
    ``peak_mb``: peak memory while training (MiB; see the module docstring for which).
    ``examples_per_sec``: rows trained per second over ``timed_updates`` updates that took
    ``train_seconds`` in the loop, after its first call.
    """

    micro_batch_size: int
    num_micro_batches: int
    out_of_memory: bool = False
    peak_mb: Optional[float] = None
    examples_per_sec: Optional[float] = None
    timed_updates: int = 0
    train_seconds: float = 0.0

    def write(self, path):
        """Writes the record as one JSON object; complete or absent (written, then renamed)."""
        _write_json(path, dataclasses.asdict(self))

    @classmethod
    def read(cls, path):
        """The record a probe wrote with ``write``."""
        with open(path, encoding="utf-8") as handle:
            return cls(**json.load(handle))


def _write_json(path, value):
    """``value`` as JSON at ``path``, complete or absent: a process killed while writing leaves
    no half file for the finder to read."""
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json_files.dump(value, handle)
    os.replace(partial, path)


def divisors(batch_size):
    """Every b that divides B, ascending."""
    return [b for b in range(1, batch_size + 1) if batch_size % b == 0]


def candidates(batch_size, smallest=1, sizes=(), two_pieces=False):
    """The divisors of B from ``smallest`` up (tiny b are never the answer and cost time) that
    also divide every other B in ``sizes`` (a schedule's stages, an adaptive batch's B_max: a
    schedule changes k, not b); ``two_pieces``: with at least two micro-batches at B (an
    adaptive batch measures its noise from the first update)."""
    return [b for b in divisors(batch_size) if b >= smallest
            and all(size % b == 0 for size in sizes) and not (two_pieces and b * 2 > batch_size)]


def reachable_batch_sizes(data_settings):
    """(every B the run trains at or may reach besides its first, whether it needs k >= 2 at
    the start): a schedule's stages, or an adaptive batch's B_max (``train.batch_size_schedule``);
    read from the bindings, before any data is loaded."""
    schedule, batch_size = data_settings.batch_size_schedule, data_settings.batch_size
    if schedule is None:
        return (), False
    if hasattr(schedule, "max_batch_size"):  # @adaptive_batch_size()
        return (int(schedule.max_batch_size),), True
    return tuple(int(size) for size in schedule.stage_sizes(batch_size)[1:]), False


def largest_batch_size(data_settings):
    """The largest B the run trains at: its ``train.batch_size`` or what its schedule reaches."""
    return max((data_settings.batch_size,) + reachable_batch_sizes(data_settings)[0])


def find(prober, batch_size, budget_mb=None, smallest=1, sizes=(), two_pieces=False,
         refused=None, measured=None):
    """Probes the ``candidates`` from ``smallest`` up at the largest B (``batch_size`` and
    ``sizes``), but those in ``refused`` (b: the run's refusal); returns (best Probe or None, all
    probes). ``measured``: a list each probe is appended to as it is measured (what a stopped
    finder still shows).

    ``prober.measure(b)`` gives (peak MiB, examples/s) or raises ``ResourceExhaustedError``.
    Stops at the first b that does not fit: out of memory on a GPU, above ``budget_mb`` on CPU.
    """
    probes, best = ([] if measured is None else measured), None
    largest = max((batch_size,) + tuple(sizes))
    for micro in candidates(batch_size, smallest, sizes, two_pieces):
        if micro in (refused or {}):
            continue
        try:
            peak, speed = prober.measure(micro)
        except tf.errors.ResourceExhaustedError:
            probes.append(Probe(micro, largest // micro, float("nan"), 0.0, False))
            break
        fits = budget_mb is None or peak <= budget_mb
        probes.append(Probe(micro, largest // micro, peak, speed, fits))
        if not fits:
            break
        best = probes[-1]
    return best, probes


def choose(prober, batch_size, budget_mb, smallest=1, sizes=(), two_pieces=False,
           refused=None, measured=None):
    """``find``, and a clear error naming the binding when there is nothing to probe or not even
    the smallest b fits; when the run refuses every candidate (``refused``), the run's own
    message."""
    wanted = candidates(batch_size, smallest, sizes, two_pieces)
    if not wanted:
        valid = candidates(batch_size, 1, sizes, two_pieces)
        if not valid:
            raise ValueError(
                f"No micro-batch b suits train.batch_size={batch_size} and the batch sizes the "
                f"schedule reaches ({', '.join(map(str, sizes))}): b must divide each of them"
                + (" and leave k >= 2 at the start (@adaptive_batch_size())"
                   if two_pieces else "") + ".")
        if not sizes:
            raise ValueError(f"find_micro_batch.smallest={smallest} is above train.batch_size="
                             f"{batch_size}: no divisor of B to probe (they are "
                             f"{', '.join(map(str, valid))}).")
        raise ValueError(f"find_micro_batch.smallest={smallest} is above every micro-batch "
                         f"that suits train.batch_size={batch_size} and the schedule's "
                         f"{', '.join(map(str, sizes))}: none to probe (they are "
                         f"{', '.join(map(str, valid))}).")
    refused = refused or {}
    if all(micro in refused for micro in wanted):
        raise ValueError(refused[wanted[0]])  # the run's own words (``check_here``)
    best, probes = find(prober, batch_size, budget_mb, smallest, sizes, two_pieces, refused,
                        measured)
    if best is None and probes and budget_mb is not None:
        raise ValueError(f"find_micro_batch.budget_mb={budget_mb:g} is below what the probe at "
                         f"b = {probes[0].micro_batch_size} peaked at: {probes[0].peak_mb:.1f} MiB "
                         "(the whole process: TensorFlow and the data included).")
    return best, probes


def format_report(best, probes, batch_size, budget_mb, largest=None, refused=None,
                  stopped=False):
    """The table of probes and the bindings to paste; ``largest``: the largest B the run
    reaches (its schedule's), where the probes measured; ``refused``: {b: the run's refusal}
    of the candidates left out; ``stopped``: probing was interrupted (no binding is offered)."""
    lines = []
    if largest is not None and largest != batch_size:
        lines.append(f"Measured at B = {largest}, the largest batch the schedule reaches (the "
                     "peak grows with B); k is the micro-batches of that B.\n")
    lines += ["| b | k | peak memory (MiB) | examples/s | fits |", "|---|---|---|---|---|"]
    for p in probes:
        lines.append(f"| {p.micro_batch_size} | {p.num_micro_batches} | {p.peak_mb:.1f} | "
                     f"{p.examples_per_sec:.0f} | {'yes' if p.fits else 'no'} |")
    for micro, message in sorted((refused or {}).items()):
        lines.append(f"\nNot probed: b = {micro}, which the run refuses: {message}")
    where = "the GPU's memory" if budget_mb is None else f"a budget of {budget_mb:g} MiB"
    fitting = [p for p in probes if p.fits]
    if stopped:
        lines.append("\nStopped before the probing ended"
                     + (f": b = {fitting[-1].micro_batch_size} fits in {where}, larger b were "
                        "not measured." if fitting else "."))
    elif best is None:
        lines.append(f"\nNo micro-batch of B = {batch_size} fits in {where}.")
    else:
        lines.append(f"\nLargest micro-batch within {where}: b = {best.micro_batch_size} "
                     f"(k = {best.num_micro_batches}). Bindings:\n"
                     f"    train.batch_size = {batch_size}\n"
                     f"    train.micro_batch_size = {best.micro_batch_size}")
    return "\n".join(lines)


def run(run_settings, config_text, run_mode):
    """``train.mode = 'find_micro_batch'``: checks the run's plan at each candidate b in one
    process (``check_here``), then probes the run's model at its ``train.batch_size``, each b in
    a process of its own; prints the table and the bindings; returns {'micro_batch_size',
    'probes', 'report'}. In a probe's process (``find_micro_batch.probe = b``) it measures that b
    instead (``probe_here``), in the check's (``find_micro_batch.check``) it checks.

    Stopped (Ctrl-C, SIGTERM), it prints the rows measured so far and exits with 128 + the
    signal: nothing was written, so there is nothing to resume."""
    finder = run_mode.finder
    batch_size = checks.positive_int(run_settings.data.batch_size, "train.batch_size")
    if finder.search_dirs is not None:
        _search_beside(finder.search_dirs)
    if finder.check is not None:
        return check_here(run_settings, run_mode)
    if finder.probe is not None:
        return probe_here(run_settings, run_mode)
    gpu = _has_gpu()
    if not gpu and finder.budget_mb is None:
        raise ValueError("find_micro_batch.budget_mb is required on CPU (the peak resident memory "
                         "allowed, MiB); on a GPU the device's memory is the budget.")
    budget_mb = None if gpu else finder.budget_mb
    sizes, two_pieces = reachable_batch_sizes(run_settings.data)
    largest = largest_batch_size(run_settings.data)
    measured, refused = [], {}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            config = os.path.join(scratch, "run.gin")
            with open(config, "w", encoding="utf-8") as handle:
                handle.write(config_text)
            prober = ProcessProber(config)
            wanted = candidates(batch_size, finder.smallest, sizes, two_pieces)
            if wanted:  # (none: ``choose`` says why, naming the binding)
                refused = prober.check(wanted)
            best, probes = choose(prober, batch_size, budget_mb, finder.smallest, sizes,
                                  two_pieces, refused, measured)
    except KeyboardInterrupt as stopped:
        if measured:
            print(format_report(None, measured, batch_size, budget_mb, largest, refused,
                                stopped=True), flush=True)
        print("batchlab: stopped; nothing was written (the finder has nothing to resume: run "
              "it again to probe again).", file=sys.stderr, flush=True)
        raise SystemExit(128 + getattr(stopped, "signum", signal.SIGINT)) from None
    report = format_report(best, probes, batch_size, budget_mb, largest, refused)
    print(report)
    return {"micro_batch_size": best.micro_batch_size if best else None,
            "probes": [dataclasses.asdict(p) for p in probes], "report": report}


def _has_gpu():
    """Whether a GPU is present, asked without starting TensorFlow's runtime in the finder's own
    process (which would take device memory the probes' processes need)."""
    return bool(tf.config.list_physical_devices("GPU"))


def _search_beside(search_dirs):
    """Data files are looked up beside the user's gin files (``paths.search_dirs``), as in the
    user's run, not beside the probe's scratch copy of the configuration. ``set_gin_files``
    puts the last file's directory first: the directories go in reversed, each as a file in
    it."""
    paths.set_gin_files([os.path.join(d, "config.gin") for d in reversed(search_dirs)])


class ProcessProber:
    """Measures each b in a fresh ``python main.py`` with the run's configuration (the interface
    is in the module docstring), started as the user's own run: in ``cwd`` (default: this
    process's working directory), with ``search_dirs`` (default: this run's,
    ``paths.search_dirs``) searched for data files and, where this process imports from them,
    for modules."""

    def __init__(self, config_path, cwd=None, search_dirs=None):
        self.config_path = config_path
        self.cwd = os.getcwd() if cwd is None else cwd
        if search_dirs is None:
            search_dirs = [d for d in paths.search_dirs() if d != paths.REPO_ROOT]
        self.search_dirs = tuple(search_dirs)

    def _run(self, bindings, scratch):
        """``main.py`` with the configuration and ``bindings``, its ``--output_dir`` in
        ``scratch``; the completed process."""
        command = [sys.executable, os.path.join(paths.REPO_ROOT, "main.py"),
                   f"--gin_file={self.config_path}",
                   f"--gin_bindings=find_micro_batch.search_dirs = {self.search_dirs!r}",
                   *[f"--gin_bindings={binding}" for binding in bindings],
                   f"--output_dir={os.path.join(scratch, 'runs')}"]
        # The user's modules (``import my_models`` beside their gin file): importable from the
        # directories this process searched (``gin_config._importable_beside``).
        importable = [d for d in self.search_dirs if d in sys.path]
        python_path = os.pathsep.join(importable + [p for p in [os.environ.get("PYTHONPATH")]
                                                    if p])
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        if python_path:
            env["PYTHONPATH"] = python_path
        return subprocess.run(command, capture_output=True, text=True, cwd=self.cwd,
                              check=False, env=env)

    def check(self, micros):
        """{b: the run's refusal} of the ``micros`` a run with ``train.micro_batch_size = b``
        refuses (``check_here``); ``ValueError`` with the run's message when the run refuses
        the configuration whatever b is."""
        with tempfile.TemporaryDirectory() as scratch:
            result_file = os.path.join(scratch, "check.json")
            process = self._run([f"find_micro_batch.check = {tuple(micros)!r}",
                                 f"find_micro_batch.result_file = {result_file!r}"], scratch)
            if not os.path.exists(result_file):
                _raise_failure(process, "the check of the run's plan")
            with open(result_file, encoding="utf-8") as handle:
                refusals = json.load(handle)
        return {int(micro): message for micro, message in refusals.items()}

    def measure(self, micro):
        """(peak MiB, examples/s) of b = ``micro``; ``ResourceExhaustedError`` when it ran out of
        memory or was killed (SIGKILL: the out-of-memory killer); ``ValueError`` with the run's
        message when the run's configuration was refused; ``RuntimeError`` with the probe's
        stderr when it wrote no result otherwise."""
        with tempfile.TemporaryDirectory() as scratch:
            result_file = os.path.join(scratch, "probe.json")
            process = self._run([f"find_micro_batch.probe = {micro}",
                                 f"find_micro_batch.result_file = {result_file!r}"], scratch)
            if not os.path.exists(result_file) and process.returncode == -signal.SIGKILL:
                # Killed outright: the kernel's out-of-memory killer (or a cgroup's limit) ends
                # a process that outgrows the machine without any Python error.
                raise tf.errors.ResourceExhaustedError(
                    None, None, f"b = {micro}: the probe was killed (out of memory?)")
            if not os.path.exists(result_file):
                _raise_failure(process, f"the probe at b = {micro}")
            result = ProbeResult.read(result_file)
        if result.out_of_memory:
            raise tf.errors.ResourceExhaustedError(None, None, f"b = {micro}: out of memory")
        return result.peak_mb, result.examples_per_sec


def _raise_failure(process, what):
    """A probe's or check's process that wrote no result: ``ValueError`` with the run's own
    one-line refusal where it printed one, else ``RuntimeError`` with its stderr."""
    refused = [line for line in process.stderr.splitlines()
               if line.startswith("batchlab: ") and "error: " in line]
    if refused:  # the run's configuration, refused as a run would refuse it
        raise ValueError(f"{what} was refused: {refused[-1].split('error: ', 1)[1]}")
    raise RuntimeError(f"{what[0].upper()}{what[1:]} failed (exit status "
                       f"{process.returncode}):\n{process.stderr[-2000:]}")


def check_here(run_settings, run_mode):
    """Builds the run's own plan (``plan.build`` as a training run builds it: its schedule,
    AdaScale, epochs and measurements as bound) at ``train.micro_batch_size = b`` for each b of
    ``find_micro_batch.check``; {b: the run's refusal} of those it refuses goes to
    ``find_micro_batch.result_file`` (when given) and is returned. The data is loaded once."""
    from experiments.run import modes  # pylint: disable=import-outside-toplevel (a cycle)

    loaded = []

    def data_fn():
        if not loaded:
            loaded.append(run_settings.data.data_fn())
        return loaded[0]

    as_run = modes.TrainMode()
    refused = {}
    for micro in run_mode.finder.check:
        data = dataclasses.replace(run_settings.data, micro_batch_size=micro, data_fn=data_fn)
        try:
            plan_lib.build(dataclasses.replace(run_settings, data=data), as_run)
        except ValueError as error:
            refused[micro] = own_message(error)
    if run_mode.finder.result_file is not None:
        _write_json(run_mode.finder.result_file, {str(b): m for b, m in refused.items()})
    return {"refused": refused}


def probe_here(run_settings, run_mode):
    """One probe in this process, at b = ``find_micro_batch.probe``; its ``ProbeResult`` goes to
    ``find_micro_batch.result_file`` when given, and is returned as a dict."""
    finder = run_mode.finder
    micro = finder.probe
    batch_size = largest_batch_size(run_settings.data)
    if batch_size % micro:
        raise ValueError(f"find_micro_batch.probe={micro} does not divide train.batch_size="
                         f"{batch_size}.")
    try:
        result = measure(probe_settings(run_settings, micro), run_mode)
    except tf.errors.ResourceExhaustedError:
        result = ProbeResult(micro, batch_size // micro, out_of_memory=True)
    if finder.result_file is not None:
        result.write(finder.result_file)
    return dataclasses.asdict(result)


def probe_settings(run_settings, micro):
    """The run's settings at b = ``micro``: at the largest B the run reaches (a batch-size
    schedule's last stage, an adaptive batch's B_max: the input pipeline holds B rows, and the
    memory with them), nothing printed, no callbacks of the user's (they may write files)."""
    data = dataclasses.replace(run_settings.data, micro_batch_size=micro,
                               batch_size=largest_batch_size(run_settings.data),
                               batch_size_schedule=None)
    model = dataclasses.replace(run_settings.model, learning_rate_scaling=None)
    return dataclasses.replace(run_settings, data=data, model=model, extra_callbacks=(),
                               verbose=0)


def measure(settings, run_mode):
    """Trains a probe as a run trains: the plan of ``settings`` (adjusted by ``run_mode``), the
    model ``plan.build_model`` builds, the loop ``distribute.fit`` runs, with ``run_mode``'s
    callbacks (the ``LoopClock``, which ends it) and a stateful model's; without validation
    (a probe measures training; ``train.eval_batch_size`` is set apart). Returns the
    ``ProbeResult``."""
    plan = plan_lib.build(settings, run_mode)
    model, state_callbacks = plan_lib.build_model(plan)
    own = run_mode.callbacks(plan, None)
    training_only = dataclasses.replace(plan.pipelines, validation=None, validation_steps=None)
    gpu = bool(tf.config.list_logical_devices("GPU"))
    _reset_peak(gpu)  # what was allocated before training (imports, data) is not a peak
    callbacks = own + run_mode.guards() + list(state_callbacks)  # the clock first: it times
    distribute.fit(model, training_only, plan.settings.epochs, callbacks, plan.strategy,
                   verbose=0)
    peak = _peak_mb(gpu)
    return ProbeResult(plan.layout.micro_batch_size, plan.layout.num_micro_batches,
                       peak_mb=peak, **run_mode.summarize(own, None))


def probe_epochs(updates, updates_per_epoch):
    """Epochs enough for a probe: its first call (at most ``updates`` updates) and at least
    ``updates`` timed ones, in calls of at most ``updates``; the clock stops it sooner."""
    return max(1, math.ceil(3 * updates / updates_per_epoch))


def loop_clock(updates, layout):
    """A ``LoopClock`` counting the rows of ``layout``'s updates (an epoch's last one may hold
    fewer than B)."""
    last = layout.batch_size
    if layout.examples_per_epoch is not None:
        last = layout.examples_per_epoch - (layout.updates_per_epoch - 1) * layout.batch_size
    return LoopClock(updates, layout.batch_size, last)


class LoopClock(keras.callbacks.Callback):
    """Times the training loop in a probe: each graph call from the end of the call before it
    (or from its epoch's start) to its own end, from the second call on (the first traces the
    train step); stops training once ``updates`` updates are timed.

    Its ``every_n_updates`` is ``updates``: batchlab's loop ends a call on each multiple of a
    callback's ``every_n_updates``, so a probe trains a few times ``updates`` updates whatever
    ``fit.steps_per_execution`` is (calls of at most ``updates``: with a smaller ``updates`` than
    a run's calls hold, the probe pays their fixed cost more often). It acts after calls only (no
    ``on_train_batch_begin``), so it makes the loop split no update off.

    Args:
      updates: updates to time.
      batch_size: rows of an update.
      last_batch_size: rows of an epoch's last update.
    """

    def __init__(self, updates, batch_size, last_batch_size):
        super().__init__()
        self.updates = self.every_n_updates = updates
        self.batch_size, self.last_batch_size = batch_size, last_batch_size
        self.timed_updates, self.timed_rows, self.train_seconds = 0, 0, 0.0
        self._warm = False
        self._since, self._previous = None, -1

    def on_epoch_begin(self, epoch, logs=None):
        self._since, self._previous = time.perf_counter(), -1

    def on_train_batch_end(self, batch, logs=None):
        # Keras' CallbackList turns the call's logs into numbers before any hook runs (this
        # callback is not async-safe, so hooks run in line): the call has finished by now.
        now = time.perf_counter()
        if self._warm:
            self.train_seconds += now - self._since
            self.timed_updates += batch - self._previous
            self.timed_rows += self._rows(self._previous + 1, batch)
        self._warm = True
        self._since, self._previous = now, batch
        if self.timed_updates >= self.updates:
            self.model.stop_training = True

    def _rows(self, first, last):
        """Rows of the epoch's updates ``first`` .. ``last``."""
        rows = (last - first + 1) * self.batch_size
        if last + 1 == (self.params or {}).get("steps"):
            rows -= self.batch_size - self.last_batch_size
        return rows

    def summary(self):
        """Examples/s over the timed calls, with the updates and seconds it comes from."""
        return {"examples_per_sec": self.timed_rows / max(self.train_seconds, 1e-9),
                "timed_updates": self.timed_updates, "train_seconds": self.train_seconds}


def _reset_peak(gpu):
    """Resets the peak measured next to the memory in use now."""
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    else:
        _reset_peak_rss()


def _peak_mb(gpu):
    """The peak since ``_reset_peak``: TensorFlow's on the first GPU, else the process' RSS."""
    if gpu:
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2.0 ** 20
    return _peak_rss_mb()


def _reset_peak_rss():
    """Resets the process' peak resident set size to its current size (Linux:
    ``/proc/self/clear_refs``), so that the peak measured next is the training's, over the
    memory the process holds now, and not a spike of its start-up."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_rss_mb():
    """The peak resident set size since the last reset, in MiB (``VmHWM``); elsewhere the
    process' peak (``ru_maxrss``)."""
    try:
        with open("/proc/self/status", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_memory_mb()
