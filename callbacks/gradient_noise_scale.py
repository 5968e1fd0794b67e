"""The simple gradient noise scale B_simple (McCandlish et al. 2018), for free from micro-batches.

With virtual batches, the k micro-batch gradients of one update are taken at the same weights, so
each update yields two batch sizes at once: ``B_small = b`` (a micro-batch) and ``B_big = k*b``
(the virtual batch). Since ``E|G_B|^2 = |G|^2 + tr(Sigma)/B``, with ``|G_small|^2`` the mean of
the squared micro-batch gradient norms and ``|G_big|^2`` the squared norm of their mean:

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)

Each estimate is unbiased but very noisy, so both are smoothed with an exponential moving average
(bias-corrected, as in Adam) before taking ``B_simple = tr(Sigma) / |G|^2``, the batch size
around which the benefit of a larger batch starts to fall off. Logged every ``every_n_updates``
updates and at each epoch's last update, keyed by the update count: ``noise_scale/b_simple``,
``noise_scale/trace_sigma``, ``noise_scale/gradient_sq_norm``.

The estimates and their EMAs are computed inside the train step (``VirtualBatchModel``, in
``model.measurements``), so no Python runs per update; this measurement
(``experiments.engine.measurement``) sets the decay and sampling when training starts and reads
the averages only when it logs (inside batchlab's train call; in Keras' own ``fit``, as a
callback like any other). Undefined for k = 1
(B_big = B_small): the measurement then says so once, in the log and as the TensorBoard text
``noise_scale/note``, instead of logging noise. Only the data
loss enters (no regularizer): the noise scale is about the sampled data. B counts rows, so for
masked sequence losses it is in sequences, not tokens. With a stateful (streamed) layout the
micro-batches of one update are consecutive windows of the same streams, hence correlated: the
variance is underestimated and B_simple is biased low.

Needs ``track_gradient_noise=True`` on the model (``measurements.track_gradient_noise`` in a run).
"""

import tensorflow as tf
from absl import logging

from callbacks import summary_writer
from callbacks.base import LoggedMeasurement
from callbacks.gradient_norm import step_measurements
from experiments.common import checks
from experiments.engine.schedule import Cadence
from experiments.engine.states import stateful_layers

UNDEFINED_NOTE = (
    "The gradient noise scale needs k >= 2 micro-batches per update (B_big > B_small); this run "
    "has k = 1, so it is not defined and is not logged. Set train.micro_batch_size to a divisor "
    "of train.batch_size to measure it.")


class GradientNoiseScale(LoggedMeasurement):
    """Logs B_simple = tr(Sigma)/|G|^2 and both parts, from the train step's moving averages.

    Args:
      log_dir: TensorBoard directory; None keeps values only (``self.history``).
      every_n_updates: logging frequency, in updates (the averages see every sampled update).
      decay: EMA decay per sampled update (the average spans about 1/(1 - decay) samples).
      sample_every_n_updates: feed the averages every that many updates only (1: every update).
        A sample costs k + 1 passes over the gradients inside the step (one per micro-batch, one
        over their sum); sampling less often trades estimator variance for speed.

    The averages live on the model (one noise-scale measurement per model): they start afresh
    when this measurement first starts training, and carry on over later ``fit`` calls with it.
    """

    def __init__(self, log_dir=None, every_n_updates=10, decay=0.99, sample_every_n_updates=1):
        super().__init__(log_dir)
        self.every_n_updates = checks.positive_int(every_n_updates, "every_n_updates")
        self.cadence = Cadence(self.every_n_updates, at_epoch_end=True)
        self.sample_every_n_updates = checks.positive_int(sample_every_n_updates,
                                                          "sample_every_n_updates")
        self.decay = checks.fraction(decay, "decay")
        self.defined = None
        self._measurements = None  # the model's StepMeasurements, once started

    def start(self, model):
        self.set_model(model)
        m = step_measurements(model)
        if not getattr(model, "tracks_gradient_noise", False):
            raise ValueError(
                "The gradient noise scale needs the micro-batch gradient norms: build the model "
                "with track_gradient_noise=True (in a run: measurements.track_gradient_noise = "
                "True).")
        if getattr(model, "micro_batch_size", None) is None:
            self._undefined()
            return False
        if stateful_layers(model):
            logging.warning(
                "Gradient noise scale on a stateful model: the micro-batches of one update are "
                "correlated windows, so B_simple is biased low.")
        if self._measurements is not m:
            m.reset_noise_scale(self.decay, self.sample_every_n_updates)
            self._measurements = m
        self.shape = tuple(m.noise_scale.shape)
        self.defined = True
        return True

    def _undefined(self):
        self.defined = False
        logging.warning(UNDEFINED_NOTE)
        summary_writer.text(self.log_dir, "noise_scale/note", UNDEFINED_NOTE)

    def read(self, update):
        return tf.convert_to_tensor(self._measurements.noise_scale)

    def _read(self, state=None):
        """({tag: value}, updates sampled so far); values empty until an update with k >= 2.
        ``state``: the averages as read inside the train call, else read now."""
        state = self._measurements.noise_scale_values(state)
        if state["gradient_sq_norm"] is None:
            return {}, state["sampled"]
        gradient_sq, trace = state["gradient_sq_norm"], state["trace_sigma"]
        values = {"noise_scale/gradient_sq_norm": gradient_sq, "noise_scale/trace_sigma": trace}
        if gradient_sq > 0:  # early on the |G|^2 estimate can be <= 0: B_simple is then unknown
            values["noise_scale/b_simple"] = trace / gradient_sq
        return values, state["sampled"]

    def measure(self):
        """Current {tag: value}; empty until an update with k >= 2 has been seen."""
        return self._read()[0] if self._measurements is not None else {}

    def values(self, update, state):
        """The averages' values; nothing before the first update with k >= 2 fed them (a
        batch-size schedule may start at k = 1 and split its later, larger batches)."""
        if not self.defined:
            return None
        values, _ = self._read(state)
        return values or None

    def result(self):
        """The final values, and the logged B_simple curve ``noise_scale/b_simple_curve``
        ([update, value] pairs): B_simple grows as the loss falls, so comparing it with a
        critical batch size needs its value where the runs reached their target."""
        if self.defined is False:
            return {"noise_scale/note": "undefined for k = 1"}
        values = self.measure()
        curve = self.whole_curve("noise_scale/b_simple", [
            (update, v["noise_scale/b_simple"]) for update, v in self.history
            if "noise_scale/b_simple" in v])
        if curve:
            values["noise_scale/b_simple_curve"] = curve
        return values
