"""The noise-scale probe on a finished run's weights, from the command line.

``train.mode = 'probe_noise_scale'`` (``gin/tools/probe_noise_scale.gin``) rebuilds a run's model
and data from its own saved configuration, loads its weights, and probes B_simple at those fixed
weights (``callbacks.noise_scale_probe``: draws at two or three batch sizes, a line in 1/B, a
bootstrap interval, the linearity check):

    python main.py --gin_file=RUN/config.gin --gin_file=gin/tools/probe_noise_scale.gin \\
        --gin_bindings="probe_noise_scale.run_dir = 'RUN'"

It trains nothing and changes nothing in RUN except one new file, ``RUN/noise_probes/<name>.json``
(never an existing one). The final weights file, an epoch's weights file
(``checkpoints.every_epoch``: ``probe_noise_scale.checkpoint = 'epoch-3'``; Keras' ``save_weights``
keeps the optimizer's variables in both) and a training checkpoint (``'latest'`` or an update
number) restore the optimizer's state with the weights, so an Adam or RMSprop run's
preconditioned value is probed from any of them.
"""

import dataclasses
import math
import os
import re
from typing import Optional

import gin

from callbacks.noise_scale_probe import checked_settings, probe
from experiments.common import checks, json_files
from experiments.engine import keras_internals
from experiments.run import checkpoints as checkpoints_lib
from experiments.run import plan as plan_lib


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """``probe_noise_scale.*``, checked."""

    run_dir: str
    checkpoint: object  # 'final', 'latest', 'epoch-N' or an update number
    sizes: Optional[tuple]
    num_draws: int
    level: float
    seed: int


@gin.configurable("probe_noise_scale")
def settings(run_dir=gin.REQUIRED, checkpoint="final", sizes=None, num_draws=100, level=0.95,
             seed=0):
    """Args:
      run_dir: the finished (or interrupted) run to probe.
      checkpoint: 'final' (``checkpoints/final.weights.h5``), 'epoch-N' (the weights saved
        after epoch N, ``checkpoints/epoch-NNN.weights.h5``, with ``checkpoints.every_epoch``),
        'latest' (the newest training checkpoint ``checkpoints/state-*.npz``, optimizer state
        included) or an update number (the kept training checkpoint saved at that update:
        ``checkpoints.keep`` of them stay).
      sizes: batch sizes to draw at (None: b, 4b, 16b with b the run's micro-batch, or B/4).
      num_draws: batches per size. level: the interval's level. seed: the draws' seed.
    """
    if not isinstance(run_dir, str) or not os.path.isdir(run_dir):
        raise ValueError(f"probe_noise_scale.run_dir = {run_dir!r} is not a run directory.")
    if not (checkpoint in ("final", "latest") or _epoch_of(checkpoint) is not None
            or (isinstance(checkpoint, int) and not isinstance(checkpoint, bool)
                and checkpoint > 0)):
        raise ValueError(f"probe_noise_scale.checkpoint must be 'final', 'latest', 'epoch-N' "
                         f"(N >= 1) or the update number of a kept training checkpoint, got "
                         f"{checkpoint!r}.")
    # Checked here, before the run's data and weights are loaded (sizes None: the run's
    # default, known once its layout is).
    sizes, num_draws, level = checked_settings(sizes, num_draws, level, "probe_noise_scale")
    return ProbeSettings(run_dir, checkpoint, sizes, num_draws, level,
                         checks.non_negative_int(seed, "probe_noise_scale.seed"))


def default_sizes(layout):
    base = layout.micro_batch_size if layout.num_micro_batches > 1 \
        else max(1, layout.batch_size // 4)
    return (base, 4 * base, 16 * base)


def _epoch_of(checkpoint):
    """N of 'epoch-N' (N >= 1), else None."""
    match = re.fullmatch(r"epoch-([0-9]+)", checkpoint) if isinstance(checkpoint, str) else None
    return int(match.group(1)) if match and int(match.group(1)) >= 1 else None


def _weights_file(directory, checkpoint):
    """The weights file of 'final' or 'epoch-N', refused when absent with what there is."""
    epoch = _epoch_of(checkpoint)
    if epoch is None:
        path = os.path.join(directory, "final.weights.h5")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} does not exist (the run has not finished); use "
                "probe_noise_scale.checkpoint = 'latest' for its newest training checkpoint.")
        return path
    path = os.path.join(directory, f"epoch-{epoch:03d}.weights.h5")
    if not os.path.exists(path):
        kept = sorted(int(name[6:9]) for name in os.listdir(directory)
                      if re.fullmatch(r"epoch-[0-9]{3}\.weights\.h5", name)) \
            if os.path.isdir(directory) else []
        raise FileNotFoundError(
            f"{path} does not exist (epochs saved: {', '.join(map(str, kept)) or 'none'}; "
            "checkpoints.every_epoch = True saves one after every epoch).")
    return path


def _load(model, plan, probe_settings):
    """Loads the chosen weights and the optimizer's state with them; returns (the file loaded,
    the update it was saved at)."""
    directory = os.path.join(probe_settings.run_dir, "checkpoints")
    if probe_settings.checkpoint == "final" or _epoch_of(probe_settings.checkpoint):
        path = _weights_file(directory, probe_settings.checkpoint)
        # Built first, the optimizer's variables (momenta, Adam's moments) are restored too.
        keras_internals.symbolic_build(model, plan.pipelines.train.element_spec)
        model.load_weights(path)
        return path, int(model.optimizer.iterations.numpy())
    store = checkpoints_lib.CheckpointStore(directory)
    if probe_settings.checkpoint == "latest":
        latest = store.latest_meta()
        if latest is None:
            raise FileNotFoundError(f"No training checkpoint (state-*.npz) in {directory}.")
        path, position, _ = latest
        update = position.update
    else:
        update = probe_settings.checkpoint
        path = store.path_at(update)
        if not os.path.exists(path):
            kept = sorted(store.update_of(p) for p in store.paths())
            raise FileNotFoundError(
                f"No training checkpoint at update {update} in {directory} (kept: "
                f"{', '.join(map(str, kept)) or 'none'}; checkpoints.keep sets how many stay).")
    keras_internals.symbolic_build(model, plan.pipelines.train.element_spec)
    checkpoints_lib.Resume(store, path, model).restore_training_state()
    return path, update


# An infinite upper end of B_simple's bootstrap interval: more than the tail's share of the
# bootstrap replicates put |G|^2 at or below 0 (|G|^2's own interval may still exclude 0).
OPEN_END = "unbounded (|G|^2 <= 0 in some bootstrap replicates)"


def describe(values, level, sizes=None, num_draws=None):
    """One line: B_simple to four significant figures with its interval, or why it is
    undefined (the |G|^2 estimate at or below zero: the noise swamps the mean gradient), then
    the preconditioned value with its interval, and (given ``sizes`` and ``num_draws``) what the
    probe drew and its linearity test. An infinite upper end reads ``OPEN_END`` (the interval is
    then written "low to OPEN_END")."""
    line = _b_simple_text(values, level)
    if sizes is not None and num_draws is not None:
        line += f"; {num_draws} draws at each of B = {', '.join(str(b) for b in sizes)}"
        if values.get("noise_probe/linearity_p") is not None:
            line += f", linearity p = {values['noise_probe/linearity_p']:.2g}"
    return line


def _b_simple_text(values, level):
    low, high = values["noise_probe/b_simple_low"], values["noise_probe/b_simple_high"]
    label = f"{100 * level:.3g}% interval"
    interval = _interval(low, high, label)
    b_simple = values.get("noise_probe/b_simple")
    if b_simple is None:
        return f"B_simple undefined (|G|^2 estimated <= 0)  {interval}"
    line = f"B_simple = {b_simple:.4g}  {interval}"
    if b_simple == 0:
        line += ("  (tr(Sigma) estimated <= 0: the noise is not seen at these sizes, B_simple "
                 "lies below them; probe smaller sizes)")
    if "noise_probe/b_preconditioned" in values:
        line += (f"; preconditioned {values['noise_probe/b_preconditioned']:.4g}  "
                 + _interval(values["noise_probe/b_preconditioned_low"],
                             values["noise_probe/b_preconditioned_high"], label))
    return line


def _interval(low, high, label=""):
    """"label [low, high]" to four figures; "label: low to OPEN_END" for an infinite (or None)
    upper end."""
    if high is None or not math.isfinite(high):
        return f"{label}: {low:.4g} to {OPEN_END}" if label else f"({low:.4g} to {OPEN_END})"
    return f"{label} [{low:.4g}, {high:.4g}]" if label else f"[{low:.4g}, {high:.4g}]"


def _output_path(run_dir, name):
    """(a new file ``noise_probes/<name>.json`` or ``<name>-<k>.json``, created empty, its index
    k: 0 for the first). Only this name's own files count (``update-90.json`` is not one of
    ``update-9``'s)."""
    directory = os.path.join(run_dir, "noise_probes")
    os.makedirs(directory, exist_ok=True)
    own = re.compile(rf"^{re.escape(name)}(-(\d+))?\.json$")
    taken = [own.match(entry) for entry in os.listdir(directory)]
    index = max((int(m.group(2) or 0) + 1 for m in taken if m), default=0)
    while True:
        path = os.path.join(directory, f"{name}{'' if index == 0 else f'-{index}'}.json")
        try:
            with open(path, "x"):
                return path, index
        except FileExistsError:
            index += 1


def run(settings_, run_mode):
    """Probes the run's weights; returns the result dict (also written, and printed)."""
    probe_settings = settings()
    plan = plan_lib.build(settings_, run_mode)
    model, _ = plan_lib.build_model(plan)
    loaded, update = _load(model, plan, probe_settings)
    data = plan.measurement_context.train_arrays
    if data is None:
        raise ValueError("The noise-scale probe draws rows from training arrays; this run's data "
                         "source has none (stream data).")
    sizes = probe_settings.sizes or default_sizes(plan.layout)
    name = probe_settings.checkpoint if probe_settings.checkpoint == "final" \
        or _epoch_of(probe_settings.checkpoint) else f"update-{update}"
    path, index = _output_path(probe_settings.run_dir, name)
    # A repeat of the same probe draws other rows (seed + k for its k-th file), so that its
    # files are independent repeats, not copies; each file records its seed.
    seed = probe_settings.seed + index
    try:
        values = probe(model, data, sizes, probe_settings.num_draws, seed=seed,
                       level=probe_settings.level)
    except BaseException:
        os.remove(path)  # no empty file left for a probe that did not happen
        raise
    result = {"run_dir": probe_settings.run_dir, "weights": loaded, "update": update,
              "sizes": list(sizes), "num_draws": probe_settings.num_draws,
              "level": probe_settings.level, "seed": seed, **values}
    with open(path, "w", encoding="utf-8") as handle:
        json_files.dump(result, handle, indent=2)  # standard JSON: an open end is null
    # Printed once, as a plain line (not also as a log line); the file has the rest.
    print(f"{describe(values, probe_settings.level, sizes, probe_settings.num_draws)}"
          f"  -> {path}")
    return result
