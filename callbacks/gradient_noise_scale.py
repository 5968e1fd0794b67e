"""The simple gradient noise scale B_simple (McCandlish et al. 2018), for free from micro-batches.

With virtual batches, the pieces of one update (its k micro-batches, and under a distribution
strategy each replica's share: so k = 1 on two replicas still has two pieces) are gradients at the
same weights, and ``E|G_B|^2 = |G|^2 + tr(Sigma)/B`` gives an unbiased estimate of both parts from
each sampled update (``experiments.engine.noise_scale``: each piece weighted by its rows, exact for
ragged micro-batches; |G|^2 is that of the gradient the optimizer follows, regularizers included).
``B_simple = tr(Sigma) / |G|^2`` is the batch size around which the benefit of a larger batch
starts to fall off.

Logged every ``every_n_updates`` updates and at each epoch's last update, keyed by the update count
(every logged update is sampled, so each point also carries its own raw estimates; a logged
update of a single piece, such as a ragged last batch of one micro-batch, adds no sample and
gets no point):

- ``noise_scale/b_simple``, ``noise_scale/trace_sigma``, ``noise_scale/gradient_sq_norm``: the
  moving averages (horizon ``horizon_examples`` examples, bias-corrected) and their ratio;
  ``noise_scale/gradient_sq_norm_data``: |G|^2 of the data loss alone;
- ``noise_scale/raw/*``: the sampled update's own estimates and the ``batch_size`` and
  ``num_pieces`` that gave them (unsmoothed; ``result.json`` keeps them all as
  ``noise_scale/raw`` rows ``[update, |G|^2, tr(Sigma), B, pieces]`` for the analyses, which
  pool them: ``experiments.analysis.noise_at_target``);
- with Adam, AdamW, Nadam or RMSprop, the preconditioned noise scale ``tr(P Sigma P) / |P G|^2``
  (P the diagonal the optimizer divides its step by, epsilon where Keras puts it:
  ``engine.noise_scale.diagonal_preconditioner``):
  ``noise_scale/b_preconditioned`` and its parts.

A moving average lags a quantity that moves: B_simple grows as the loss falls. Its horizon is in
examples so that large and small batches average over the same data; read the raw points (or a
probe at fixed weights, ``callbacks.noise_scale_probe``) where the value at one moment matters.

The estimates and their averages are computed inside the train step (``VirtualBatchModel``, in
``model.measurements``), so no Python runs per update; this measurement sets the horizon and
sampling when training starts and reads the state only when it logs (inside batchlab's train call;
in Keras' own ``fit``, as a callback like any other). Undefined with a single piece (k = 1 on one
replica): the measurement then says so once, in the log and as the TensorBoard text
``noise_scale/note``, instead of logging noise. B counts rows, so for masked sequence losses it is
in sequences, not tokens. With a stateful (streamed) layout the micro-batches of one update are
consecutive windows of the same streams, hence correlated: the variance is underestimated and
B_simple is biased low.

Needs ``track_gradient_noise=True`` on the model (``measurements.track_gradient_noise`` in a run).
"""

import tensorflow as tf
from absl import logging

from callbacks import summary_writer
from callbacks.base import LoggedMeasurement
from callbacks.gradient_norm import step_measurements
from experiments.common import checks
from experiments.engine import noise_scale
from experiments.engine.schedule import Cadence
from experiments.engine.states import stateful_layers

UNDEFINED_NOTE = (
    "The gradient noise scale needs two or more pieces per update (k >= 2 micro-batches, or two "
    "or more replicas); this run has k = 1 on one replica, so it is not defined and is not "
    "logged. Set train.micro_batch_size to a divisor of train.batch_size to measure it.")

RAW_ROW = ("gradient_sq_norm", "trace_sigma", "batch_size", "num_pieces")
PRECONDITIONED_ROW = ("preconditioned_gradient_sq_norm", "preconditioned_trace_sigma")


class GradientNoiseScale(LoggedMeasurement):
    """Logs B_simple = tr(Sigma)/|G|^2, both parts and the raw per-update estimates (module doc).

    Args:
      log_dir: TensorBoard directory; None keeps values only (``self.history``).
      every_n_updates: logging frequency, in updates; each logged update is sampled.
      horizon_examples: the moving averages' horizon, in examples (a sample m examples after the
        previous one weighs the past by exp(-m / horizon)).
      sample_every_n_updates: also sample every that many updates between logged ones (None:
        the logged updates only). A sample costs k + 1 passes over the gradients inside the step
        (one per micro-batch, one over their sum); more samples lower the averages' variance.

    The averages live on the model (one noise-scale measurement per model): they start afresh
    when this measurement first starts training, and carry on over later ``fit`` calls with it.
    """

    uses_step = True  # the step samples the updates this measurement reads

    def __init__(self, log_dir=None, every_n_updates=10, horizon_examples=4096,
                 sample_every_n_updates=None):
        super().__init__(log_dir)
        self.every_n_updates = checks.positive_int(every_n_updates, "every_n_updates")
        self.cadence = Cadence(self.every_n_updates, at_epoch_end=True)
        self.sample_every_n_updates = checks.optional_positive_int(sample_every_n_updates,
                                                                   "sample_every_n_updates")
        self.horizon_examples = checks.positive_number(horizon_examples, "horizon_examples")
        self.defined = None
        self.preconditioned = False
        self._measurements = None  # the model's StepMeasurements, once started

    def start(self, model):
        self.set_model(model)
        m = step_measurements(model)
        if not getattr(model, "tracks_gradient_noise", False):
            raise ValueError(
                "The gradient noise scale needs the micro-batch gradient norms: build the model "
                "with track_gradient_noise=True (in a run: measurements.track_gradient_noise = "
                "True).")
        replicas = model.distribute_strategy.num_replicas_in_sync
        if getattr(model, "micro_batch_size", None) is None and replicas < 2:
            self._undefined()
            return False
        if stateful_layers(model):
            logging.warning(
                "Gradient noise scale on a stateful model: the micro-batches of one update are "
                "correlated windows, so B_simple is biased low.")
        if self._measurements is not m:
            m.reset_noise_scale(self.horizon_examples, self.sample_every_n_updates or 0)
            self._measurements = m
        self.preconditioned = noise_scale.has_preconditioner(model.optimizer)
        self.shape = tuple(m.noise_scale.shape)
        self.defined = True
        return True

    def _undefined(self):
        self.defined = False
        logging.warning(UNDEFINED_NOTE)
        summary_writer.text(self.log_dir, "noise_scale/note", UNDEFINED_NOTE)

    def read(self, update):
        return tf.convert_to_tensor(self._measurements.noise_scale)

    def _read(self, state=None, update=None):
        """{tag: value} of the averages (empty until a sample with two or more pieces), with the
        raw estimates when ``update`` is the last sampled one. ``state``: the state as read
        inside the train call, else read now."""
        return self._tags(self._measurements.noise_scale_values(state, self.preconditioned),
                          update)

    @staticmethod
    def _tags(state, update=None):
        """``_read``'s {tag: value} of a parsed state (``StepMeasurements.noise_scale_values``)."""
        values = {}
        averages = state["averages"]
        if averages is not None:
            values.update({f"noise_scale/{name}": v for name, v in averages.items()})
            values.update(ratios("noise_scale", averages))
        if state["raw"] is not None and (update is None or state["raw_update"] == update):
            values.update({f"noise_scale/raw/{name}": v for name, v in state["raw"].items()})
        return values

    def measure(self):
        """Current {tag: value}; empty until a sample with two or more pieces."""
        return self._read() if self._measurements is not None else {}

    def values(self, update, state):
        """The averages' values and this update's raw estimates; nothing before the first
        sample with two or more pieces (a batch-size schedule may start at k = 1)."""
        if not self.defined:
            return None
        parsed = self._measurements.noise_scale_values(state, self.preconditioned)
        if parsed["last_fed_update"] != int(update):
            # This logged update fed no sample (it had one piece: a ragged last batch of a single
            # micro-batch): the averages again would read as a new measurement. Decided by the
            # state alone, so a resumed run logs the points the uninterrupted one does.
            return None
        return self._tags(parsed, int(update)) or None

    def raw_rows(self):
        """Every logged raw estimate (this process's and, after a resume, those logged before):
        rows [update, |G|^2, tr(Sigma), B, pieces(, |PG|^2, tr(P Sigma P))]."""
        names = RAW_ROW + (PRECONDITIONED_ROW if self.preconditioned else ())
        columns = []
        for name in names:
            tag = f"noise_scale/raw/{name}"
            columns.append(dict(self.whole_curve(tag, [
                (update, v[tag]) for update, v in self.history if tag in v])))
        updates = sorted(set.intersection(*(set(c) for c in columns))) if columns else []
        return [[u] + [c[u] for c in columns] for u in updates]

    def result(self):
        """The final values, the logged B_simple curve ``noise_scale/b_simple_curve`` ([update,
        value] pairs) and every raw estimate ``noise_scale/raw``: B_simple grows as the loss
        falls, so comparing it with a critical batch size needs its value where the runs reached
        their target (``experiments.analysis.noise_at_target`` pools the raw rows there)."""
        if self.defined is False:
            return {"noise_scale/note": "undefined for k = 1"}
        values = {k: v for k, v in self.measure().items() if "/raw/" not in k}
        curve = self.whole_curve("noise_scale/b_simple", [
            (update, v["noise_scale/b_simple"]) for update, v in self.history
            if "noise_scale/b_simple" in v])
        if curve:
            values["noise_scale/b_simple_curve"] = curve
        raw = self.raw_rows()
        if raw:
            values["noise_scale/raw"] = raw
            values["noise_scale/raw_columns"] = ["update", *RAW_ROW, *(
                PRECONDITIONED_ROW if self.preconditioned else ())]
        return values


def ratios(prefix, parts):
    """B_simple (and the data-only and preconditioned ratios) from the parts; a ratio whose
    |G|^2 estimate is <= 0 (early, or at an optimum) is unknown and left out."""
    out = {}
    for name, g2, trace in (("b_simple", "gradient_sq_norm", "trace_sigma"),
                            ("b_simple_data", "gradient_sq_norm_data", "trace_sigma"),
                            ("b_preconditioned", "preconditioned_gradient_sq_norm",
                             "preconditioned_trace_sigma")):
        if parts.get(g2) is not None and parts[g2] > 0:
            out[f"{prefix}/{name}"] = parts[trace] / parts[g2]
    return out
