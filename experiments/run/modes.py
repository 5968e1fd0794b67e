"""Run modes (``train.mode``): what a plain training run, an LR range test and the micro-batch
finder do differently, each as one small class chosen once.

The runner has one path. It asks the run's mode, at fixed points, for what differs:

- ``check(settings)``: refuse bindings the mode cannot honour, before anything is loaded;
- ``adjust(settings, layout)``: the settings the run trains with, once the ``BatchLayout`` is
  known and before the ``Plan`` is built (a range test's epochs follow from its ramp), so the
  ``Plan`` never changes after it is built;
- ``guards()`` and ``callbacks(plan, log_dir)``: the callbacks it adds (guards first, the
  others after the measurements and a stateful model's);
- ``summarize(callbacks, run_dir)``: what it adds to ``result.json``, from the callbacks its
  ``callbacks`` returned;
- ``start(settings, output, run)``: how it runs; a training run goes through the runner's own
  ``run``, handed in because the runner imports the modes (not the other way round).

``RUN_MODES`` maps each ``train.mode`` value to its class; ``chosen`` looks it up once.
"""

import dataclasses

from callbacks.nan_guard import FailOnNonFiniteLoss
from experiments.common import checks
from experiments.run import batch_norm_statistics as batch_norm_lib
from experiments.run import micro_batch_finder, noise_probe_run, range_test


class RunMode:
    """What a run mode decides; the defaults are those of a plain training run (``TrainMode``).

    ``resumable``: a relaunched run continues from its newest checkpoint (False: it starts again
    from update 0, for a mode whose callbacks keep state no checkpoint holds).
    ``reads_inference_metrics``: its validation and other inference-mode numbers are read
    (False for a mode that reads training-mode losses only and stops where it stops: it states
    nothing about BatchNormalization's moving averages)."""

    resumable = True
    reads_inference_metrics = True

    @classmethod
    def from_bindings(cls):
        """The mode with its own checked bindings (none for a plain run)."""
        return cls()

    def check(self, settings):
        """A plain run accepts every binding ``RunSettings`` holds."""

    def adjust(self, settings, layout):
        """A plain run trains with its settings as bound."""
        return settings

    def guards(self):
        """A non-finite loss fails a training run (the error names the update)."""
        return [FailOnNonFiniteLoss()]

    def callbacks(self, plan, log_dir):
        """A plain run adds nothing to the runner's callbacks."""
        return []

    def summarize(self, callbacks, run_dir):
        """A plain run adds nothing to ``result.json``."""
        return {}

    def batch_norm_statistics(self, model, plan, warn=True, updates=None):
        """What result.json states of BatchNormalization's moving averages (None without any),
        warning first when they stay stale (``warn``: not on a multi-worker job's other
        workers): a plain run's inference-mode numbers (validation, the gap) use them; None
        for a mode that reads none. ``updates``: the updates the run made (after training: a
        run stopped early made fewer than planned)."""
        if not self.reads_inference_metrics:
            return None
        described = batch_norm_lib.describe(model, plan.layout, plan.settings.epochs,
                                             plan.strategy.num_replicas_in_sync, updates)
        if warn:
            batch_norm_lib.warn_if_stale(described)
        return described

    def start(self, settings, output, run):
        """Trains through the runner's ``run(settings, output, mode)``."""
        return run(settings, output, self)


class TrainMode(RunMode):
    """``train.mode = 'train'``: train, evaluate, write the run directory."""


@dataclasses.dataclass(frozen=True)
class RangeTestMode(RunMode):
    """``train.mode = 'lr_range_test'``: a run whose learning rate grows every update until the
    loss diverges; ``result.json`` gets the suggested rate (``range_test``)."""

    reads_inference_metrics = False

    test: range_test.RangeTestSettings
    # The ramp's position, its losses and their smoothed average live in the callback: a
    # relaunched range test starts its ramp again (seeded, it gives the uninterrupted result).
    resumable = False

    @classmethod
    def from_bindings(cls):
        """Reads ``lr_range_test.*`` (each error names its binding) before any data is loaded."""
        return cls(range_test.range_test_settings())

    def check(self, settings):
        """A range test measures one batch size: a batch-size schedule would mix several."""
        if settings.data.batch_size_schedule is not None:
            raise ValueError("train.batch_size_schedule cannot be used with train.mode = "
                             "'lr_range_test': a range test measures one batch size.")
        if settings.model.learning_rate_scaling is not None:
            raise ValueError("train.learning_rate_scaling cannot be used with train.mode = "
                             "'lr_range_test': the range test sets the learning rate itself.")

    def adjust(self, settings, layout):
        """As many epochs as the ramp needs (its callback stops training after the ramp)."""
        return dataclasses.replace(settings, epochs=range_test.epochs_for(
            self.test, layout.updates_per_epoch))

    def guards(self):
        """None: a range test ends in divergence on purpose, its own callback stops it there."""
        return []

    def callbacks(self, plan, log_dir):
        """The callback that sets each update's learning rate and records its loss."""
        return [range_test.callback(self.test, log_dir)]

    def summarize(self, callbacks, run_dir):
        """``lr_range_test``: the suggestion, its rule, the curve and the plot; and the run's
        ``peak_learning_rate``, the ramp's highest rate (not the optimizer's base rate)."""
        (test,) = callbacks
        summary = range_test.summarize(self.test, test, run_dir)
        out = {"lr_range_test": summary}
        if summary["learning_rates"]:
            out["peak_learning_rate"] = float(max(summary["learning_rates"]))
        return out


@dataclasses.dataclass(frozen=True)
class MicroBatchFinderMode(RunMode):
    """``train.mode = 'find_micro_batch'``: the largest micro-batch of ``train.batch_size`` that
    fits, each candidate probed in a process of its own (``micro_batch_finder``). A probe is a
    short run of this mode through the plan, model and loop of a real run; it writes nothing."""

    reads_inference_metrics = False

    finder: micro_batch_finder.FinderSettings

    @classmethod
    def from_bindings(cls):
        """Reads ``find_micro_batch.*`` (each error names its binding)."""
        return cls(micro_batch_finder.settings())

    def adjust(self, settings, layout):
        """A probe trains at most as many epochs as its warm-up and timed updates need."""
        return dataclasses.replace(settings, epochs=micro_batch_finder.probe_epochs(
            self.finder.updates, layout.updates_per_epoch))

    def guards(self):
        """None: a probe measures memory and speed; its loss is not read."""
        return []

    def callbacks(self, plan, log_dir):
        """The clock that times the loop's calls and ends the probe."""
        return [micro_batch_finder.loop_clock(self.finder.updates, plan.layout)]

    def summarize(self, callbacks, run_dir):
        """The examples/s the clock measured, and the updates it timed."""
        (clock,) = callbacks
        return clock.summary()

    def start(self, settings, output, run):
        """Probes every candidate b (or, in a probe's process, measures one b). A run of a sweep
        or study is refused (the launcher refuses it first, before the group's directory exists;
        this covers a group launched another way)."""
        if output.in_group:
            raise ValueError("train.mode = 'find_micro_batch' cannot run inside a sweep or a "
                             "study: run the finder on one configuration.")
        return micro_batch_finder.run(settings, output.config_text, self)


class NoiseProbeMode(RunMode):
    """``train.mode = 'probe_noise_scale'``: B_simple with its interval at a finished run's
    weights (``noise_probe_run``); trains nothing and writes one new file into that run."""

    reads_inference_metrics = False

    def check(self, settings):
        noise_probe_run.settings()  # its bindings fail before any data is loaded

    def start(self, settings, output, run):
        return noise_probe_run.run(settings, self)


RUN_MODES = {"train": TrainMode, "find_micro_batch": MicroBatchFinderMode,
             "lr_range_test": RangeTestMode, "probe_noise_scale": NoiseProbeMode}


def chosen(name):
    """The mode of ``train.mode = name``, with its own bindings read and checked."""
    checks.one_of(name, tuple(RUN_MODES), "train.mode")
    return RUN_MODES[name].from_bindings()
