"""The gradient noise scale's statistics inside the train step (McCandlish et al. 2018, App. A).

The pieces of one update (the k micro-batches of each replica, or each replica's batch at k = 1
under a distribution strategy) are gradients at the same weights, so every update gives an
unbiased estimate of both parts of ``E|G_B|^2 = |G|^2 + tr(Sigma)/B``. With ``B_j`` the rows of
piece j (``B = sum_j B_j``, n pieces), ``G_j`` its mean gradient and ``G_B`` the whole batch's:

    S         = sum_j B_j |G_j|^2 / B                 (E S = |G|^2 + n tr(Sigma) / B)
    tr(Sigma) ~ B (S - |G_B|^2) / (n - 1)             (exact for ragged pieces: [32, 1] as [16, 17])
    |G|^2     ~ |F_B|^2 - tr(Sigma) / B

where ``F_B`` is the gradient the optimizer follows (the data gradient plus the regularizers'
gradient, which is not sampled: tr(Sigma) is unchanged by it). The data-only ``|G_B|^2 - tr/B``
is kept beside it. With a diagonal preconditioner P (what the optimizer divides its step by,
``diagonal_preconditioner``) the same estimates of ``tr(P Sigma P)`` and ``|P G|^2`` give the preconditioned noise scale.

Each sampled update's raw estimates are kept (logged by the callback, pooled by the analysis), and
averaged with an exponential moving average whose horizon is counted in examples: a sample
``m`` examples after the previous one decays the average by ``exp(-m / horizon)``, so B = 512 and
B = 8 average over the same number of examples. The average is bias-corrected (the sum of the
weights is kept, as Adam does). The callback ``callbacks.gradient_noise_scale`` reads them.
"""

import tensorflow as tf

from experiments.engine import keras_internals

# Layout of the state vector (float64).
# Moving averages (numerators; divide by WEIGHT): followed |G|^2, tr(Sigma), data-only |G|^2,
# preconditioned |PG|^2 and tr(P Sigma P).
EMA_G2, EMA_TRACE, EMA_G2_DATA, EMA_G2_P, EMA_TRACE_P = range(5)
WEIGHT = 5  # sum of the EMA weights (bias correction)
COUNT = 6  # samples that fed the averages (two or more pieces)
LAST_UPDATE = 7  # the update of the last sample that fed the averages (0: none)
SAMPLED = 8  # sampled updates (including those with one piece, which cannot feed them)
# The raw estimates of the last sample (any sampled update; RAW_UPDATE 0: none yet).
RAW_G2, RAW_TRACE, RAW_G2_DATA, RAW_G2_P, RAW_TRACE_P = range(9, 14)
RAW_ROWS, RAW_PIECES, RAW_UPDATE = 14, 15, 16
STATE_SIZE = 17

EMA_FIELDS = {"gradient_sq_norm": EMA_G2, "trace_sigma": EMA_TRACE,
              "gradient_sq_norm_data": EMA_G2_DATA, "preconditioned_gradient_sq_norm": EMA_G2_P,
              "preconditioned_trace_sigma": EMA_TRACE_P}
RAW_FIELDS = {"gradient_sq_norm": RAW_G2, "trace_sigma": RAW_TRACE,
              "gradient_sq_norm_data": RAW_G2_DATA, "preconditioned_gradient_sq_norm": RAW_G2_P,
              "preconditioned_trace_sigma": RAW_TRACE_P, "batch_size": RAW_ROWS,
              "num_pieces": RAW_PIECES}


def read_state(state, preconditioned=False):
    """The bias-corrected averages and the last raw sample of a state vector (NumPy), as
    {'count', 'sampled', 'averages': {...} or None, 'raw': {...} or None, 'raw_update',
    'last_fed_update' (the update of the last sample that fed the averages, 0: none)}.
    Preconditioned fields only when ``preconditioned``."""
    keep = (lambda name: preconditioned or "preconditioned" not in name)
    count, weight = int(state[COUNT]), float(state[WEIGHT])
    values = {"count": count, "sampled": int(state[SAMPLED]), "averages": None, "raw": None,
              "raw_update": int(state[RAW_UPDATE]), "last_fed_update": int(state[LAST_UPDATE])}
    if count and weight > 0:
        values["averages"] = {name: float(state[i] / weight)
                              for name, i in EMA_FIELDS.items() if keep(name)}
    if state[RAW_UPDATE] > 0 and state[RAW_PIECES] >= 2:
        values["raw"] = {name: float(state[i]) for name, i in RAW_FIELDS.items() if keep(name)}
    return values


def squared_norm(grads):
    """sum_i |g_i|^2 in float32, one fused pass per tensor."""
    return 2.0 * tf.add_n([tf.nn.l2_loss(tf.cast(g, tf.float32)) for g in grads])


def preconditioned_squared_norm(grads, preconditioner):
    """sum_i |P_i g_i|^2 for a diagonal preconditioner (one tensor per gradient)."""
    return 2.0 * tf.add_n([tf.nn.l2_loss(tf.cast(g, tf.float32) * p)
                           for g, p in zip(grads, preconditioner)])



def has_preconditioner(optimizer):
    """Whether the optimizer divides by second moments (Adam, AdamW, Nadam, RMSprop): the
    preconditioned noise scale is then measured."""
    return keras_internals.has_second_moments(optimizer)


def diagonal_preconditioner(optimizer, variables):
    """A function of no arguments giving the diagonal P the optimizer divides its step by, per
    variable (graph code: call it where it is needed, so that updates that are not sampled skip
    it), or None for an optimizer without second moments. P is Keras' own, epsilon where Keras
    puts it, from the moments as they stand before this update (t updates done):
    Adam, AdamW: sqrt(1 - beta_2^t) / (sqrt(v) + eps) (AMSGrad: v its running maximum);
    Nadam: 1 / (sqrt(v / (1 - beta_2^t)) + eps); RMSprop: 1 / sqrt(v + eps), centred
    1 / sqrt(v - mean(g)^2 + eps). The identity before the first update."""
    moments = keras_internals.second_moments(optimizer, variables)
    if moments is None:
        return None

    def preconditioner():
        correction = 1.0
        if moments.beta_2 is not None:
            done = tf.maximum(tf.cast(optimizer.iterations, tf.float32), 1.0)
            correction = 1.0 - tf.pow(tf.constant(moments.beta_2, tf.float32), done)
        out = []
        for i, v in enumerate(moments.velocities):
            v = tf.cast(v, tf.float32)
            if moments.averages is not None:
                v = v - tf.square(tf.cast(moments.averages[i], tf.float32))
            v = tf.maximum(v, 0.0)
            if moments.form == "adam":
                p = tf.sqrt(correction) / (tf.sqrt(v) + moments.epsilon)
            elif moments.form == "nadam":
                p = 1.0 / (tf.sqrt(v / correction) + moments.epsilon)
            else:  # rmsprop
                p = 1.0 / tf.sqrt(v + moments.epsilon)
            out.append(p)
        # Before the first update there is no second moment yet (P would be 1/epsilon):
        # identity, so the averages do not start on a scale 1e14 away from the rest.
        first = tf.equal(optimizer.iterations, 0)
        return [tf.where(first, tf.ones_like(p), p) for p in out]

    return preconditioner


def estimates(rows_sq, big_sq, followed_sq, rows, pieces):
    """(tr(Sigma), |G|^2 of the followed gradient, |G|^2 of the data gradient, defined).

    ``rows_sq`` = sum_j B_j |G_j|^2 over the pieces, ``big_sq`` = |G_B|^2 (data gradient),
    ``followed_sq`` = |F_B|^2 (what the optimizer follows), ``rows`` = B, ``pieces`` = n.
    ``defined`` is False with a single piece."""
    rows_sq, big_sq, followed_sq, rows, pieces = (
        tf.cast(t, tf.float64) for t in (rows_sq, big_sq, followed_sq, rows, pieces))
    defined = pieces >= 2.0
    safe_rows = tf.maximum(rows, 1e-12)
    trace = safe_rows * (rows_sq / safe_rows - big_sq) / tf.where(defined, pieces - 1.0,
                                                                 tf.ones_like(pieces))
    return trace, followed_sq - trace / safe_rows, big_sq - trace / safe_rows, defined


def decay_for(examples, horizon):
    """(decay, 1 - decay) of a sample ``examples`` after the previous one; 1 - decay computed
    as -expm1 so that small steps keep their precision."""
    x = tf.cast(examples, tf.float64) / tf.maximum(tf.cast(horizon, tf.float64), 1e-12)
    return tf.exp(-x), -tf.math.expm1(-x)


def next_state(state, horizon, update, raw, rows, pieces, defined, sampled):
    """The next state vector: ``raw`` (5 estimates, layout of the EMA fields) feeds the averages
    when ``sampled`` and ``defined``; a sampled update always becomes the last raw sample."""
    update = tf.cast(update, tf.float64)
    rows, pieces = tf.cast(rows, tf.float64), tf.cast(pieces, tf.float64)
    raw = tf.cast(tf.stack(raw), tf.float64)
    # The first sample stands for every example since the start (or the reset): LAST_UPDATE 0.
    gap = tf.maximum(update - state[LAST_UPDATE], 1.0)
    decay, weight = decay_for(gap * rows, horizon)
    # A non-finite sample (overflowing squared norms) is kept as the last raw one but feeds no
    # average: once in an average it would stay there for the rest of the run.
    feed = tf.logical_and(tf.logical_and(sampled, defined),
                          tf.reduce_all(tf.math.is_finite(raw)))
    averages = tf.where(feed, decay * state[:5] + weight * raw, state[:5])
    bookkeeping = tf.where(feed, tf.stack([decay * state[WEIGHT] + weight, state[COUNT] + 1.0,
                                           update]),
                           tf.stack([state[WEIGHT], state[COUNT], state[LAST_UPDATE]]))
    sampled_count = state[SAMPLED] + tf.cast(sampled, tf.float64)  # (layout: WEIGHT, COUNT,
    # LAST_UPDATE, SAMPLED, then the raw fields)
    last_raw = tf.where(sampled, tf.concat([raw, tf.stack([rows, pieces, update])], axis=0),
                        state[RAW_G2:])
    return tf.concat([averages, bookkeeping, [sampled_count], last_raw], axis=0)


def record(measurements, step, pieces_sq, followed_grads, data_grads, num_pieces, num_rows):
    """This update's estimates and the moving averages; nothing changes unless ``step.sampled``.

    ``pieces_sq``: this replica's [sum_j B_j |G_j|^2, sum_j B_j |P G_j|^2] over its pieces;
    ``followed_grads`` / ``data_grads``: its share of the followed and the data gradient (their
    sum over replicas is the global one); ``num_pieces``, ``num_rows``: its pieces and rows.
    """
    m = measurements
    followed, data = list(followed_grads), list(data_grads)
    # A replica handed no rows (a ragged last batch: 9 rows over 4 replicas are 3, 3, 3, 0)
    # holds no piece of the batch: counted, it would bias tr(Sigma) by n / (n - 1).
    num_rows = tf.cast(num_rows, tf.float32)
    num_pieces = tf.where(num_rows > 0, tf.cast(num_pieces, tf.float32), 0.0)
    counts = tf.concat([tf.cast(pieces_sq, tf.float32), tf.stack([num_pieces, num_rows])], axis=0)
    if step.distributed:
        followed = step.replica.all_reduce("sum", followed)
        data = step.replica.all_reduce("sum", data)
        counts = step.replica.all_reduce("sum", counts)
    rows_sq, rows_sq_p, pieces, rows = counts[0], counts[1], counts[2], counts[3]
    scale = 1.0
    if step.sums_only:  # 'sum' losses: the gradient of the mean over rows
        scale = 1.0 / tf.square(tf.maximum(rows, 1.0))
    big_sq = squared_norm(data) * scale
    followed_sq = squared_norm(followed) * scale
    trace, g2, g2_data, defined = estimates(rows_sq, big_sq, followed_sq, rows, pieces)
    trace_p = g2_p = tf.zeros((), tf.float64)
    if step.preconditioner is not None:
        p = step.preconditioner()
        big_p = preconditioned_squared_norm(data, p) * scale
        followed_p = preconditioned_squared_norm(followed, p) * scale
        trace_p, g2_p, _, _ = estimates(rows_sq_p, big_p, followed_p, rows, pieces)
    for variable, value in ((m.micro_gradient_sq_norm, rows_sq / tf.maximum(rows, 1.0)),
                            (m.batch_gradient_sq_norm, big_sq),
                            (m.num_micro_batches, pieces), (m.batch_size, rows),
                            (m.micro_batch_size, rows / tf.maximum(pieces, 1.0))):
        variable.assign(tf.where(step.sampled, tf.cast(value, variable.dtype), variable))
    state = tf.convert_to_tensor(m.noise_scale)
    m.noise_scale.assign(next_state(
        state, tf.convert_to_tensor(m.noise_horizon), step.coming_update,
        [g2, trace, g2_data, g2_p, trace_p], rows, pieces, defined, step.sampled))
