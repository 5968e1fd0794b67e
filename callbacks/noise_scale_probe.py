"""A gradient-noise-scale probe at fixed weights: B_simple with a 95% interval, at chosen updates.

The train step's noise scale (``callbacks.gradient_noise_scale``) is free but noisy per update
and, smoothed, lags a value that moves. A probe stops at an update and measures where the weights
are: ``num_draws`` batches at each of ``sizes`` (rows drawn with replacement from the training
arrays), the squared norm of the gradient the optimizer would follow for each, a line fitted to
the means against 1/B (``E|G_B|^2 = |G|^2 + tr(Sigma)/B``) and a bias-corrected bootstrap over the
draws for the interval (``experiments.engine.noise_probe``, ``experiments.common
.noise_statistics``). With three sizes it also checks that the means lie on that line
(``noise_probe/linearity_p``). With Adam, AdamW, Nadam or RMSprop the preconditioned noise scale
(P the diagonal the optimizer divides its step by, ``engine.noise_scale.diagonal_preconditioner``)
is probed from the same draws.

Logged (TensorBoard ``train``, keyed by the update): ``noise_probe/b_simple`` with
``noise_probe/b_simple_low`` and ``_high``, ``noise_probe/gradient_sq_norm`` and
``noise_probe/trace_sigma`` (each with ``_low``/``_high``), ``noise_probe/linearity_p``, and the
preconditioned ``noise_probe/b_preconditioned`` (with ``_low``/``_high``). ``result.json`` keeps
every probe (``noise_probe/probes``). The weights do not move and the model's non-trainable state
is put back: training after a probe is the training without it, only later.

Cost: ``num_draws x sum(sizes)`` rows through a forward and backward pass per probe (with the
defaults at b = 32: 100 x 672 rows), so probe at a few updates, not every few.
"""

from absl import logging

from callbacks.base import MeasurementCallback
from experiments.common import noise_statistics
from experiments.common import checks
from experiments.engine import noise_probe, noise_scale
from experiments.engine.schedule import Cadence


# Fewer draws per size than this and the interval's coverage falls well below its level.
FEW_DRAWS = 20


def probe(model, data, sizes, num_draws, seed=0, level=0.95, preconditioner="optimizer"):
    """One probe of ``model`` at its current weights: a flat {tag: value} dict (module doc)."""
    if preconditioner == "optimizer" and not noise_scale.has_preconditioner(model.optimizer):
        preconditioner = None  # SGD: nothing to precondition by
    draws = noise_probe.draw_squared_norms(model, data, sizes, num_draws, seed=seed,
                                           preconditioner=preconditioner)
    plain = noise_statistics.estimate(sizes, list(draws.followed), level=level, seed=seed)
    values = {}
    for name in ("b_simple", "gradient_sq_norm", "trace_sigma"):
        if plain[name] is not None:
            values[f"noise_probe/{name}"] = plain[name]
        values[f"noise_probe/{name}_low"], values[f"noise_probe/{name}_high"] = \
            plain[f"{name}_interval"]
    data_only = noise_statistics.estimate(sizes, list(draws.data_only), level=level, seed=seed)
    if data_only["b_simple"] is not None:
        values["noise_probe/b_simple_data"] = data_only["b_simple"]
    if plain["linearity_p"] is not None:
        values["noise_probe/linearity_p"] = plain["linearity_p"]
    if draws.preconditioned is not None:
        pre = noise_statistics.estimate(sizes, list(draws.preconditioned), level=level, seed=seed)
        if pre["b_simple"] is not None:
            values["noise_probe/b_preconditioned"] = pre["b_simple"]
        values["noise_probe/b_preconditioned_low"], values["noise_probe/b_preconditioned_high"] \
            = pre["b_simple_interval"]
    if len(set(sizes)) == 2:
        logging.warning(
            "Noise-scale probe at two batch sizes %s: its interval covers less than its level "
            "says (90%% at a stated 95%% over 200 seeds of the closed form, against 93-96.5%% "
            "with three sizes; docs/measurement.md), and linearity in 1/B cannot be tested. "
            "Give three sizes.", list(sizes))
    if num_draws < FEW_DRAWS:
        logging.warning(
            "Noise-scale probe with %d draws per size: below %d the interval covers less than "
            "its level says (about 91%% at a stated 95%% with 10 draws, on the closed form; "
            "docs/measurement.md).", num_draws, FEW_DRAWS)
    if not plain["linear"]:
        logging.warning(
            "Noise-scale probe: the mean squared gradient norms at B = %s are not linear in 1/B "
            "(p = %.3g); B_simple's model does not hold here (correlated rows?).",
            sizes, plain["linearity_p"])
    return values


def checked_settings(sizes, num_draws, level, prefix):
    """(sizes as a tuple, num_draws, level) of a probe, checked: two or more distinct positive
    sizes given as a list, at least 2 draws (a spread needs two), a level strictly between 0 and
    1; a ValueError naming ``<prefix>.<name>`` otherwise. ``sizes`` None stays None (the
    caller's default)."""
    if sizes is not None:
        if not isinstance(sizes, (list, tuple)):
            raise ValueError(f"{prefix}.sizes must be a list of two or three batch sizes, got "
                             f"{sizes!r}.")
        sizes = tuple(checks.positive_int(b, f"{prefix}.sizes") for b in sizes)
        if len(set(sizes)) < 2:
            raise ValueError(f"{prefix}.sizes needs two or more distinct batch sizes, got "
                             f"{list(sizes)}.")
    num_draws = checks.positive_int(num_draws, f"{prefix}.num_draws")
    if num_draws < 2:
        raise ValueError(f"{prefix}.num_draws must be at least 2 (a spread needs two).")
    return sizes, num_draws, checks.confidence_level(level, f"{prefix}.level")


class NoiseScaleProbe(MeasurementCallback):
    """Probes B_simple at fixed weights every ``every_n_updates`` updates and/or at the end.

    Args:
      data: (x, y) training arrays to draw rows from with replacement (or a function
        ``draw(num_rows, rng) -> (x, y)``).
      sizes: two or three batch sizes (distinct); spread them around the expected B_simple.
      num_draws: batches per size.
      every_n_updates: probe at every multiple (None: only at the end).
      at_end: also probe after the last update.
      level: the intervals' confidence level.
      seed: the draws' seed (each probe adds its update to it).
      log_dir: TensorBoard directory; None keeps values only.
    """

    def __init__(self, data, sizes=(32, 128, 512), num_draws=100, every_n_updates=None,
                 at_end=True, level=0.95, seed=0, log_dir=None):
        super().__init__(log_dir)
        self.data = data
        self.sizes, self.num_draws, self.level = checked_settings(
            sizes, num_draws, level, "noise_scale_probe")
        # The loop ends its calls on the multiples (``schedule.UpdateSchedule``).
        self.every_n_updates = checks.optional_positive_int(every_n_updates,
                                                            "noise_scale_probe.every_n_updates")
        self._cadence = Cadence(self.every_n_updates)
        self.at_end = bool(at_end)
        self.seed = int(seed)
        self._last = None
        self._seen = 0  # the update count at the last batch hook

    def _probe(self, update):
        self._last = update
        values = probe(self.model, self.data, self.sizes, self.num_draws,
                       seed=self.seed + update, level=self.level)
        low, high = values["noise_probe/b_simple_low"], values["noise_probe/b_simple_high"]
        logging.info("Noise-scale probe at update %d: B_simple = %s, %.3g%% interval [%.4g, %.4g] "
                     "(%d draws at each of B = %s).", update,
                     "undefined" if values.get("noise_probe/b_simple") is None
                     else f"{values['noise_probe/b_simple']:.4g}", 100 * self.level, low, high,
                     self.num_draws, ", ".join(str(b) for b in self.sizes))
        self.publish(update, values)

    def on_train_begin(self, logs=None):
        self._seen = int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        # Again here: a resumed run restores its update count after ``on_train_begin``, which
        # would otherwise see update 0 and probe at the first call's end, off the cadence.
        self._seen = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        # A call of several updates (``steps_per_execution`` > 1 in Keras' fit) may step over a
        # multiple: the probe then runs at the call's end, the first update after it.
        update = int(self.model.optimizer.iterations.numpy())
        previous, self._seen = self._seen, update
        if self._cadence.crossed(previous, update) and update != self._last:
            self._probe(update)

    def on_train_end(self, logs=None):
        update = int(self.model.optimizer.iterations.numpy())
        if self.at_end and update != self._last:
            self._probe(update)
        self.flush()

    def result(self):
        """The last probe's values and every probe (``noise_probe/probes``: [{update, ...}]),
        those a resumed run logged before its kill included (read back from its event files)."""
        out = super().result()
        if self.history:
            tags = sorted({tag for _, values in self.history for tag in values})
            probes = {}
            for tag in tags:
                points = [(u, v[tag]) for u, v in self.history if tag in v]
                for update, value in self.whole_curve(tag, points):
                    probes.setdefault(update, {})[tag] = value
            out["noise_probe/probes"] = [{"update": u, **probes[u]} for u in sorted(probes)]
            # What every probe drew, and the level of its intervals (the seed of the probe at
            # update u is seed + u).
            out["noise_probe/settings"] = {"sizes": list(self.sizes), "num_draws": self.num_draws,
                                           "level": self.level, "seed": self.seed}
        return out
