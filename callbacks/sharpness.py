"""Keskar sharpness at the end of training (Keskar et al. 2016, "On large-batch training ...").

    phi(eps, A) = 100 * (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x)),
    C_eps = {z : |z_i| <= eps * (|(A^+ x)_i| + 1)}

x are all trainable weights (flattened), f the training loss in inference mode on a fixed training
subset (the compiled loss with its exact reduction, plus weight-regularizer penalties; activity
regularizers are left out), A the identity (full space) or a random n x p matrix with standard
normal entries (a random p-dimensional subspace; A^+ its pseudo-inverse). The inner maximisation
is a few L-BFGS-B iterations (``scipy.optimize.minimize`` on -f with box bounds), gradients by
``tf.GradientTape``, started at the box corner along the gradient (the first-order maximiser).
Large-batch minima come out sharper: a larger phi.

Beside phi, the first-order term: the same maximisation with f replaced by its linear model at x,

    phi_1(eps, A) = 100 * (max_{y in C_eps} g^T A y) / (1 + f(x))
                  = 100 * sum_i |(A^T g)_i| r_i / (1 + f(x)),

g = grad f(x), r_i = eps * (|(A^+ x)_i| + 1) the box's half-widths (the maximiser is the box corner
along the gradient's signs). It is what phi would be if the loss had no curvature at all: phi
much larger than phi_1 means the box reaches curvature (a sharp minimum); phi close to phi_1 means
phi mostly measures the slope of a point that is not a minimum (an under-trained run).

It runs once, at ``on_train_end``, and puts the weights back exactly as they were. Logged (keyed
by the update count): ``<tag>/phi``, ``<tag>/loss`` (f(x)) and ``<tag>/max_loss``; ``tag`` is
``sharpness`` unless set; ``<tag>/phi_first_order`` (phi_1 above) beside them. Costs about
``2 * max_iterations`` forward+backward passes over the subset; a random subspace also holds the
n x p matrix A in memory (4 * n * p bytes in float32).
"""

import time

import numpy as np
import tensorflow as tf
from absl import logging

from callbacks.base import MeasurementCallback
from experiments.common import checks
from experiments.engine import loss_terms


class SharpnessObjective:
    """f(w): the training loss of ``model`` on (x, y) in inference mode, and its gradient.

    The loss is reduced exactly like the compiled loss on the whole subset (sum of per-chunk
    numerators over the sum of denominators, via ``loss_terms``), evaluated in chunks of
    ``batch_size`` rows so that memory stays that of one chunk.
    """

    def __init__(self, model, x, y, batch_size=256):
        self.model = model
        self.variables = list(model.trainable_variables)
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.terms = loss_terms.of_model(model)
        self.dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(int(batch_size)).cache()
        regularized = [v for v in self.variables if getattr(v, "regularizer", None) is not None]
        variables, terms = self.variables, self.terms

        @tf.function(reduce_retracing=True)
        def chunk(xb, yb):
            with tf.GradientTape() as tape:
                numerator, denominator = terms(yb, model(xb, training=False))
            grads = tape.gradient(numerator, variables)
            grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
            return numerator, denominator, grads

        @tf.function
        def penalty():
            with tf.GradientTape() as tape:
                total = tf.add_n([tf.cast(v.regularizer(v), tf.float64) for v in regularized])
            return total, tape.gradient(total, regularized)

        self._chunk = chunk
        self._penalty = penalty if regularized else None
        regularized_ids = {id(v) for v in regularized}
        self._regularized_index = [i for i, v in enumerate(self.variables)
                                   if id(v) in regularized_ids]

    def get(self):
        return np.concatenate([np.ravel(v.numpy()).astype(np.float64) for v in self.variables])

    def set(self, flat):
        offset = 0
        for v, shape, size in zip(self.variables, self.shapes, self.sizes):
            v.assign(np.reshape(flat[offset:offset + size], shape).astype(v.dtype))
            offset += size

    def __call__(self, flat=None):
        """Returns (f, gradient as a flat float64 vector) at ``flat`` (or the current weights)."""
        if flat is not None:
            self.set(flat)
        numerator, denominator = 0.0, 0.0
        grads = [np.zeros(s, np.float64) for s in self.sizes]
        for xb, yb in self.dataset:
            num, den, chunk_grads = self._chunk(xb, yb)
            numerator += float(num)
            denominator += float(den)
            for i, g in enumerate(chunk_grads):
                grads[i] += np.ravel(g.numpy())
        if self.terms.sums_only or denominator <= 0:
            denominator = 1.0
        value = numerator / denominator
        grads = [g / denominator for g in grads]
        if self._penalty is not None:
            total, penalty_grads = self._penalty()
            value += float(total)
            for i, g in zip(self._regularized_index, penalty_grads):
                grads[i] += np.ravel(g.numpy())
        return value, np.concatenate(grads)


def keskar_sharpness(objective, epsilon=1e-3, projection_dim=None, max_iterations=10, seed=0):
    """Computes phi(epsilon, A) and restores the weights; returns a dict of the parts.

    ``projection_dim`` None: A = identity; an integer p: A is a random n x p matrix.
    """
    x0 = objective.get()
    n = x0.size
    try:
        f0, g0 = objective(x0)
        if projection_dim is None:
            A = None
            center = x0
        else:
            rng = np.random.default_rng(seed)
            A = rng.standard_normal((n, int(projection_dim)))
            center = np.linalg.pinv(A) @ x0
        radius = epsilon * (np.abs(center) + 1.0)

        def negative(y):
            value, grad = objective(x0 + (y if A is None else A @ y))
            return -value, -(grad if A is None else A.T @ grad)

        # Start at the corner of the box that maximises the first-order change (random signs
        # where the gradient is exactly zero): near a minimum the gradient is tiny and L-BFGS-B,
        # starting from 0 with unit curvature, would need many iterations to reach the boundary.
        slope = g0 if A is None else A.T @ g0
        first_order = float(np.sum(np.abs(slope) * radius))  # the linear model's box maximum
        signs = np.sign(slope)
        still = signs == 0
        signs[still] = np.random.default_rng(seed).choice([-1.0, 1.0], size=int(still.sum()))
        start = signs * radius
        import scipy.optimize  # noqa: PLC0415  (opt-in, at the end of training)

        solution = scipy.optimize.minimize(
            negative, start, jac=True, method="L-BFGS-B",
            bounds=scipy.optimize.Bounds(-radius, radius),
            options={"maxiter": int(max_iterations), "gtol": 0.0})
        max_loss = max(-float(solution.fun), f0)
    finally:
        objective.set(x0)
    return {"phi": 100.0 * (max_loss - f0) / (1.0 + f0),
            "phi_first_order": 100.0 * first_order / (1.0 + f0), "loss": f0, "max_loss": max_loss,
            "iterations": int(solution.nit), "evaluations": int(solution.nfev) + 1,
            "solution": solution.x, "radius": radius}


class Sharpness(MeasurementCallback):
    """Args:
      subset: (x, y) arrays: a fixed sample of the training set.
      log_dir: TensorBoard directory; None keeps the value only (``self.value``).
      epsilon: box size (Keskar et al. use 1e-3 and 5e-4).
      projection_dim: None for the full space (A = identity), p for a random n x p subspace.
      max_iterations: L-BFGS-B iterations.
      batch_size: rows per evaluation chunk.
      seed: seed of the random subspace.
      tag: TensorBoard prefix (distinct tags for several settings in one run).
    """

    def __init__(self, subset, log_dir=None, epsilon=1e-3, projection_dim=None,
                 max_iterations=10, batch_size=256, seed=0, tag="sharpness"):
        super().__init__(log_dir)
        if subset is None or len(subset) < 2:
            raise ValueError("Sharpness needs subset=(x, y).")
        self.subset = subset
        self.epsilon = checks.positive_number(epsilon, "epsilon")
        self.projection_dim = checks.optional_positive_int(projection_dim, "projection_dim")
        self.max_iterations = checks.positive_int(max_iterations, "max_iterations")
        self.batch_size = int(batch_size)
        self.seed = seed
        self.tag = tag
        self.value = None

    def measure(self):
        objective = SharpnessObjective(self.model, self.subset[0], self.subset[1],
                                       self.batch_size)
        return keskar_sharpness(objective, self.epsilon, self.projection_dim,
                                self.max_iterations, self.seed)

    def on_train_end(self, logs=None):
        started = time.perf_counter()
        result = self.measure()
        result["seconds"] = time.perf_counter() - started
        self.value = result
        logging.info("Sharpness (epsilon=%g, %s): phi = %.4g, first-order term %.4g (loss %.4g -> "
                     "%.4g, %d iterations, "
                     "%d loss evaluations, %.2f s)",
                     self.epsilon, "full space" if self.projection_dim is None else
                     f"random {self.projection_dim}-dim subspace", result["phi"],
                     result["phi_first_order"], result["loss"],
                     result["max_loss"], result["iterations"], result["evaluations"],
                     result["seconds"])
        values = {f"{self.tag}/{k}": result[k]
                  for k in ("phi", "phi_first_order", "loss", "max_loss")}
        self.publish(int(self.model.optimizer.iterations.numpy()), values)
        super().on_train_end(logs)

    def result(self):
        if self.value is None:
            return {}
        return {f"{self.tag}/{k}": float(self.value[k])
                for k in ("phi", "phi_first_order", "loss", "max_loss", "seconds")
                if k in self.value}
