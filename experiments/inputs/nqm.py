"""The noisy quadratic model (Zhang et al. 2019) as a data source: a testbed with a known answer.

Loss per row: 1/2 sum_i h_i (w_i - z_i)^2 with per-row noise z_i ~ N(0, c_i / h_i^2), so a row's
gradient h_i (w_i - z_i) has mean h_i w_i (the full-batch gradient of the risk 1/2 sum h_i w_i^2)
and covariance C = diag(c_i); the mean over B rows has covariance C / B. Plain SGD with rate eps
then follows, per coordinate and in expectation,

    E w_i'^2 = (1 - eps h_i)^2 E w_i^2 + eps^2 c_i / B,

so the steps a batch size needs to bring the expected risk to a target are known exactly
(``expected_risk_curve``, ``exact_steps``); a study on this source must find them.

Expected, not one run's: a single SGD run's risk fluctuates by tens of percent around its
expectation near the target. The model therefore trains ``replicas`` independent copies of w at
once (an (R, d) weight, each copy with its own noise, each row holding R independent draws of z),
and the loss sums the copies' losses, so each copy's gradient is exactly its own NQM gradient:
R seeds in one Keras run, on one shared update counter. The validation rows hold z = 0, and the
metric ``nqm_risk`` is the mean over the copies of 1/2 sum h_i w_i^2: the expected risk estimated
by R seeds (its relative error is about sqrt(2 / (R d_eff))). Steps to result on
``val_nqm_risk`` are then updates until the expected risk reaches the target.

Noise is fresh as long as a run sees each row once: ``num_train`` rows cover B x steps for every
(B, steps) that reaches the target inside its first epoch (the known-answer study's
max(2048, 20 x 4096) = 81920 rows: 20 steps at B = 4096).
"""

import gin
import keras
import numpy as np

from experiments.inputs.dataset import Data, DataSpec


def curvatures(dimension=20, power=1.0):
    """h_i = c_i = 1 / i^power for i = 1..dimension (the issue's NQM: power 1)."""
    return 1.0 / np.arange(1, dimension + 1, dtype=np.float64) ** power


def expected_risk_curve(learning_rate, batch_size, h, c, w0=1.0, num_steps=2000):
    """E[1/2 sum h_i w_i^2] after 0..num_steps SGD updates at ``learning_rate`` (exact
    recursion on the second moments; float64)."""
    m = np.full(h.shape, float(w0) ** 2)
    risks = [0.5 * np.sum(h * m)]
    for _ in range(num_steps):
        m = (1.0 - learning_rate * h) ** 2 * m + learning_rate ** 2 * c / batch_size
        risks.append(0.5 * np.sum(h * m))
    return np.array(risks)


def steps_to_risk(learning_rate, batch_size, h, c, target, w0=1.0, num_steps=5000):
    """The first update at which the expected risk is at most ``target``, or None."""
    below = np.nonzero(expected_risk_curve(learning_rate, batch_size, h, c, w0,
                                           num_steps) <= target)[0]
    return int(below[0]) if below.size else None


def _rates(learning_rates, h):
    """The learning rates as a column (default: a fine geometric grid up to the stability limit
    2 / max h)."""
    if learning_rates is None:
        learning_rates = np.geomspace(1e-3, 2.0 / h.max(), 1200)
    return np.asarray(learning_rates, dtype=np.float64)[:, None]


def _risks(lr, batch_size, h, c, w0, num_steps):
    """(step, the expected risk at every rate of ``lr``) for steps 0..num_steps: the exact
    recursion run for every learning rate at once."""
    m = np.full((lr.shape[0], h.size), float(w0) ** 2)
    decay, noise = (1.0 - lr * h) ** 2, lr ** 2 * c / batch_size
    yield 0, 0.5 * (m @ h)
    for step in range(1, num_steps + 1):
        m = decay * m + noise
        yield step, 0.5 * (m @ h)


def exact_steps(batch_size, h, c, target, w0=1.0, learning_rates=None, num_steps=5000):
    """(fewest steps, the learning rate that gives them) over ``learning_rates`` (default: a
    fine geometric grid up to the stability limit 2 / max h), from the exact recursion run for
    every learning rate at once; None when no rate reaches ``target`` within ``num_steps``."""
    lr = _rates(learning_rates, h)
    for step, risk in _risks(lr, batch_size, h, c, w0, num_steps):
        below = np.nonzero(risk <= target)[0]
        if step and below.size:
            return step, float(lr[below[0], 0])
    return None


def exact_crossing(batch_size, h, c, target, w0=1.0, learning_rates=None, num_steps=5000):
    """(fewest steps, the learning rate that gives them) as a study reads its curves: the
    expected risk's crossing of ``target`` interpolated linearly between updates (from the risk
    at update 0), over ``learning_rates`` (default as ``exact_steps``); None when no rate reaches
    it. ``exact_steps`` gives the first whole update; this is what a measured S(B) estimates,
    0.09 to 0.82 update lower (7% of the 11 updates at B = 1024)."""
    lr = _rates(learning_rates, h)
    previous = None
    for step, risk in _risks(lr, batch_size, h, c, w0, num_steps):
        below = np.nonzero(risk <= target)[0]
        if step and below.size:  # a rate crossing later crosses after step: it cannot be fewer
            before, after = previous[below], risk[below]
            crossing = step - 1 + (before - target) / np.maximum(before - after, 1e-300)
            best = int(np.argmin(crossing))
            return float(crossing[best]), float(lr[below[best], 0])
        previous = risk
    return None


@gin.configurable
def nqm(dimension=20, power=1.0, replicas=None, num_train=None, batch_size=None,
        examples=2048, min_updates=20, num_validation=4, seed=0, max_floats=2 ** 24):
    """The noisy quadratic model's rows: x = z, an (replicas, dimension) draw per row with
    z_i ~ N(0, c_i / h_i^2) (h_i = c_i = 1 / i^power), and validation rows z = 0 (so the
    validation loss and ``nqm_risk`` measure the risk itself). y is an unused zero column.

    Rows: ``num_train``, or (when None) max(``examples``, ``min_updates`` x ``batch_size``):
    one epoch then gives every batch size fresh noise at every update and at least
    ``min_updates`` updates (a study binds ``batch_size`` per run through the macro
    ``study.batch_size_macro``).

    ``replicas`` None: as many copies as fit ``max_floats`` training values (a power of two
    between 16 and 256): small batch sizes, whose single-run risk is noisiest near the target,
    get the most copies.
    """
    if num_train is None:
        if batch_size is None:
            raise ValueError("nqm needs num_train, or batch_size (with examples and min_updates)")
        num_train = max(int(examples), int(min_updates) * int(batch_size))
    if replicas is None:
        fit = max_floats // (num_train * dimension)
        replicas = int(min(256, max(16, 2 ** int(np.log2(max(fit, 1))))))
    h = curvatures(dimension, power)
    rng = np.random.default_rng(seed)
    scale = np.sqrt(h / h ** 2).astype("float32")  # sqrt(c_i) / h_i with c = h
    x_train = rng.standard_normal((num_train, replicas, dimension), dtype=np.float32) * scale
    x_validation = np.zeros((num_validation, replicas, dimension), dtype="float32")
    spec = DataSpec(input_shape=(replicas, dimension), num_outputs=dimension, task="regression")
    return Data(spec, x_train, np.zeros((num_train, 1), "float32"), x_validation,
                np.zeros((num_validation, 1), "float32"), name="nqm")


class NQMWeights(keras.layers.Layer):
    """w (replicas x dimension, all ``w0`` at the start); outputs w - z for each row's z."""

    def __init__(self, w0=1.0, **kwargs):
        super().__init__(**kwargs)
        self.w0 = float(w0)

    def build(self, input_shape):
        self.w = self.add_weight(shape=tuple(input_shape[1:]), name="w",
                                 initializer=keras.initializers.Constant(self.w0))

    def call(self, z):
        return self.w[None] - z

    def get_config(self):
        return {**super().get_config(), "w0": self.w0}


@gin.configurable
def nqm_model(spec, w0=1.0):
    """The NQM's "model": R copies of w (see the module docstring), predicting w - z."""
    inputs = keras.Input(spec.input_shape)
    return keras.Model(inputs, NQMWeights(w0, name="nqm_w")(inputs), name="nqm")


def _risk_terms(y_pred, dimension, power):
    h = keras.ops.convert_to_tensor(curvatures(dimension, power).astype("float32"))
    return 0.5 * keras.ops.sum(h * keras.ops.square(y_pred), axis=-1)  # (batch, replicas)


@gin.register(module="nqm")
class NQMLoss(keras.losses.Loss):
    """Per row: the sum over the R copies of 1/2 sum h_i (w_i - z_i)^2 (y_true is unused). The
    sum, not the mean, over copies keeps each copy's gradient its own NQM gradient."""

    def __init__(self, dimension=20, power=1.0, name="nqm_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.dimension, self.power = dimension, power

    def call(self, y_true, y_pred):
        return keras.ops.sum(_risk_terms(y_pred, self.dimension, self.power), axis=-1)

    def get_config(self):
        return {**super().get_config(), "dimension": self.dimension, "power": self.power}


@gin.register(module="nqm")
class NQMRisk(keras.metrics.MeanMetricWrapper):
    """The mean over the R copies of 1/2 sum h_i (w_i - z_i)^2: on the validation rows (z = 0)
    the expected risk estimated by R seeds."""

    def __init__(self, dimension=20, power=1.0, name="nqm_risk", dtype=None):
        def risk(y_true, y_pred):
            return keras.ops.mean(_risk_terms(y_pred, dimension, power), axis=-1)

        super().__init__(risk, name=name, dtype=dtype)
        self.dimension, self.power = dimension, power

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "dimension": self.dimension,
                "power": self.power}
