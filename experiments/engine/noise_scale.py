"""The gradient noise scale's statistics inside the train step (McCandlish et al. 2018).

The k micro-batch gradients of one update are taken at the same weights, so each update gives two
batch sizes at once: B_small = b and B_big = k*b. With |G_small|^2 the mean squared micro-batch
gradient norm and |G_big|^2 the squared norm of their mean:

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)

each averaged with an exponential moving average (bias-corrected, as in Adam). The callback
``callbacks.gradient_noise_scale`` reads the averages and logs B_simple = tr(Sigma) / |G|^2.
"""

import tensorflow as tf

# Layout of the state vector: EMA of the |G|^2 estimate, EMA of the tr(Sigma) estimate, sum of
# the EMA weights (bias correction), updates that fed the EMAs (k >= 2), sampled updates
# (including those with a single micro-batch, which cannot feed them).
GRADIENT_SQ, TRACE, WEIGHT, COUNT, SAMPLED = range(5)
STATE_SIZE = 5


def read_state(state):
    """The bias-corrected averages of a state vector (NumPy) as a dict; see StepMeasurements."""
    count = int(state[COUNT])
    weight = state[WEIGHT]
    values = {"count": count, "sampled": int(state[SAMPLED]),
              "gradient_sq_norm": None, "trace_sigma": None}
    if count and weight > 0:
        values["gradient_sq_norm"] = float(state[GRADIENT_SQ] / weight)
        values["trace_sigma"] = float(state[TRACE] / weight)
    return values


def squared_norm(grads):
    """sum_i |g_i|^2 in float32, one fused pass per tensor."""
    return 2.0 * tf.add_n([tf.nn.l2_loss(tf.cast(g, tf.float32)) for g in grads])


def estimates(small_sq, big_sq, b_small, b_big):
    """(|G|^2 estimate, tr(Sigma) estimate, defined) from two batch sizes at the same weights;
    ``defined`` is False when B_big = B_small (one micro-batch)."""
    small_sq, big_sq = tf.cast(small_sq, tf.float64), tf.cast(big_sq, tf.float64)
    b_small, b_big = tf.cast(b_small, tf.float64), tf.cast(b_big, tf.float64)
    defined = b_big > b_small * (1.0 + 1e-6)
    gradient_sq = (b_big * big_sq - b_small * small_sq) / tf.where(
        defined, b_big - b_small, tf.ones_like(b_big))
    inverse_gap = tf.where(defined, 1.0 / tf.maximum(b_small, 1e-12)
                           - 1.0 / tf.maximum(b_big, 1e-12), tf.ones_like(b_big))
    trace = (small_sq - big_sq) / inverse_gap
    return gradient_sq, trace, defined


def ema_update(state, decay, gradient_sq, trace, feed, sampled):
    """The next state vector: fed with the estimates where ``feed``, else only counted."""
    fed = tf.stack([decay * state[0] + (1.0 - decay) * gradient_sq,
                    decay * state[1] + (1.0 - decay) * trace,
                    decay * state[2] + (1.0 - decay),
                    state[3] + 1.0, state[4] + 1.0])
    kept = tf.concat([state[:4], state[4:] + tf.cast(sampled, tf.float64)], axis=0)
    return tf.where(feed, fed, kept)


def record(measurements, data_grads, micro_sq, num_micro, num_rows, replica, distributed,
           sampled, sums_only):
    """This update's ingredients and the moving averages; nothing changes unless ``sampled``.

    ``micro_sq`` is this replica's sum of squared micro-batch gradient norms, ``data_grads`` its
    normalised data-loss gradient. An update with a single micro-batch is counted as sampled but
    does not feed the averages.
    """
    m = measurements
    data = list(data_grads)
    counts = tf.stack([micro_sq, tf.cast(num_micro, tf.float32), tf.cast(num_rows, tf.float32)])
    if distributed:
        data = replica.all_reduce("sum", data)
        counts = replica.all_reduce("sum", counts)
    micro_sq_total, micro_count, rows = counts[0], counts[1], counts[2]
    micro_sq_mean = micro_sq_total / tf.maximum(micro_count, 1.0)
    batch_sq = squared_norm(data)
    if sums_only:  # 'sum' losses: the gradient of the mean over rows
        batch_sq = batch_sq / tf.square(tf.maximum(rows, 1.0))
    micro_rows = rows / tf.maximum(micro_count, 1.0)
    for variable, value in ((m.micro_gradient_sq_norm, micro_sq_mean),
                            (m.batch_gradient_sq_norm, batch_sq),
                            (m.num_micro_batches, micro_count), (m.batch_size, rows),
                            (m.micro_batch_size, micro_rows)):
        variable.assign(tf.where(sampled, value, variable))
    gradient_sq, trace, defined = estimates(micro_sq_mean, batch_sq, micro_rows, rows)
    state = tf.convert_to_tensor(m.noise_scale)
    decay = tf.convert_to_tensor(m.noise_decay)
    m.noise_scale.assign(ema_update(state, decay, gradient_sq, trace,
                                    tf.logical_and(defined, sampled), sampled))
