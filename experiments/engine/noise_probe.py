"""Squared gradient norms at fixed weights, at several batch sizes: what a noise-scale probe reads.

The train step's noise scale (``noise_scale``) comes for free from the pieces of each update, but
one update gives one noisy estimate at weights that then move. A probe stops and measures: at the
current weights it draws ``num_draws`` batches at each of two or three sizes B_i, and for each
draw computes the squared norm of the gradient the optimizer would follow, |G_B + R|^2 (R the
regularizers' gradient, not sampled), and of its preconditioned version |P (G_B + R)|^2. Since
``E |G_B + R|^2 = |G + R|^2 + tr(Sigma) / B``, the means over draws are linear in 1/B
(``experiments.common.noise_statistics`` fits the line and gives the interval).

Rows are drawn with replacement from the training arrays: the estimate is then exact for the
training set's own distribution (no finite-population correction needed, whatever B is against
N). A function ``draw(num_rows, rng) -> (x, y)`` may supply fresh rows instead (a generator with
a known distribution, as the closed-form tests use). Nothing about the model changes: no update,
and its non-trainable state (BatchNormalization's moving averages, which a training-mode forward
pass would update) is put back afterwards.
"""

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from experiments.engine import loss_terms, noise_scale


@dataclasses.dataclass
class Draws:
    """The squared norms of every draw: arrays [sizes, draws] (``preconditioned`` None without a
    preconditioner); ``data_only``: |G_B|^2 without the regularizers."""

    sizes: tuple
    followed: np.ndarray
    data_only: np.ndarray
    preconditioned: Optional[np.ndarray]


def regularizer_gradients(variables):
    """The weight regularizers' gradient per variable at the current weights (zeros where none)."""
    regularized = [v for v in variables if getattr(v, "regularizer", None) is not None]
    grads = {}
    if regularized:
        with tf.GradientTape() as tape:
            penalty = tf.add_n([tf.cast(v.regularizer(v), tf.float32) for v in regularized])
        for v, g in zip(regularized, tape.gradient(penalty, regularized)):
            if g is not None:
                grads[id(v)] = tf.cast(g, tf.float32)
    return [grads.get(id(v), tf.zeros(v.shape, tf.float32)) for v in variables]


def _squared_norms_function(model, terms, preconditioner):
    """A graph function of (x, y, indices [draws, rows], R, P) giving [draws, 3] squared norms:
    followed, data only, preconditioned followed."""
    variables = model.trainable_variables

    @tf.function(autograph=False, reduce_retracing=True)
    def squared_norms(x, y, indices, regularizer, scales):
        def one(row_indices):
            xb = tf.nest.map_structure(lambda t: tf.gather(t, row_indices), x)
            yb = tf.gather(y, row_indices)
            with tf.GradientTape() as tape:
                numerator, denominator = terms(yb, model(xb, training=True))
                per = tf.cast(tf.shape(row_indices)[0], numerator.dtype) if terms.sums_only \
                    else tf.maximum(denominator, tf.ones_like(denominator) * 1e-12)
                loss = numerator / per
            grads = [tf.zeros(v.shape, tf.float32) if g is None else
                     tf.cast(tf.convert_to_tensor(g), tf.float32)
                     for g, v in zip(tape.gradient(loss, variables), variables)]
            followed = [g + r for g, r in zip(grads, regularizer)]
            p_sq = noise_scale.preconditioned_squared_norm(followed, scales) \
                if preconditioner is not None else tf.zeros((), tf.float32)
            return tf.stack([noise_scale.squared_norm(followed),
                             noise_scale.squared_norm(grads), p_sq])

        return tf.map_fn(one, indices, fn_output_signature=tf.TensorSpec([3], tf.float32),
                         parallel_iterations=1)

    return squared_norms


def draw_squared_norms(model, data, sizes, num_draws, seed=0, preconditioner=None):
    """The squared norms of ``num_draws`` batches at each size in ``sizes`` at the model's current
    weights (``Draws``).

    Args:
      model: a compiled Keras model (its compiled loss is the one differentiated).
      data: (x, y) arrays to draw rows from with replacement, or a function
        ``draw(num_rows, rng) -> (x, y)`` giving fresh rows.
      sizes: two or more batch sizes.
      num_draws: batches per size.
      seed: the draws' seed.
      preconditioner: None, ``'optimizer'`` (the diagonal the model's optimizer divides its step
        by, ``noise_scale.diagonal_preconditioner``, when it has second moments) or a list of
        arrays (a fixed diagonal P per trainable variable).
    """
    sizes = tuple(int(b) for b in sizes)
    if len(sizes) < 2 or len(set(sizes)) < 2 or min(sizes) < 1:
        raise ValueError(f"A noise-scale probe needs two or more distinct batch sizes >= 1; got "
                         f"{list(sizes)}.")
    if int(num_draws) < 2:
        raise ValueError(f"A noise-scale probe needs num_draws >= 2, got {num_draws}.")
    variables = model.trainable_variables
    scales = _preconditioner_values(model, variables, preconditioner)
    terms = loss_terms.of_model(model)
    function = _squared_norms_function(model, terms, scales)
    regularizer = regularizer_gradients(variables)
    scales_in = scales if scales is not None else [tf.ones((), tf.float32)]
    rng = np.random.default_rng(seed)
    state = [v.numpy() for v in model.non_trainable_variables]
    out = np.zeros((3, len(sizes), int(num_draws)))
    try:
        for i, size in enumerate(sizes):
            if callable(data):
                x, y = data(size * int(num_draws), rng)
                indices = np.arange(size * int(num_draws)).reshape(int(num_draws), size)
            else:
                x, y = data
                rows = len(tf.nest.flatten(x)[0])
                indices = rng.integers(0, rows, size=(int(num_draws), size))
            values = function(x, y, tf.constant(indices, tf.int32), regularizer,
                              scales_in).numpy()
            out[:, i, :] = values.T
    finally:
        for variable, value in zip(model.non_trainable_variables, state):
            variable.assign(value)
    return Draws(sizes, out[0], out[1], out[2] if scales is not None else None)


def _preconditioner_values(model, variables, preconditioner):
    if preconditioner is None:
        return None
    if isinstance(preconditioner, str):
        if preconditioner != "optimizer":
            raise ValueError(f"preconditioner must be None, 'optimizer' or a list of arrays, got "
                             f"{preconditioner!r}.")
        make = noise_scale.diagonal_preconditioner(model.optimizer, variables)
        return None if make is None else [tf.constant(p) for p in make()]
    values = [tf.constant(np.asarray(p, np.float32)) for p in preconditioner]
    if len(values) != len(variables) or any(
            tuple(p.shape) not in ((), tuple(v.shape)) for p, v in zip(values, variables)):
        raise ValueError("A fixed preconditioner needs one array per trainable variable, each a "
                         "scalar or of the variable's shape.")
    return values
