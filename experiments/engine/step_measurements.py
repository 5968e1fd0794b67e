"""What the train step measures about each update, kept in variables that callbacks read.

``StepMeasurements`` holds the gradient norms of the applied update and the gradient noise scale's
moving averages. The step fills them (``record``) without any Python call per update; the
measurements (``measurement.Measurement``) read them only on the updates they log. Every value is identical on all replicas (computed after
the all-reduce). The noise-scale arithmetic itself is in ``noise_scale``.
"""

import contextlib

import tensorflow as tf

from experiments.engine import noise_scale

EVERY_UPDATE = -1  # ``StepMeasurements.measured_update`` value: measure every update


class StepMeasurements:
    """Variables the train step fills in each update, read by measurement callbacks.

    Kept out of the logs so that progress bars stay readable and reading them costs nothing unless a
    callback asks. The gradient noise scale's exponential moving averages live here too, so that
    measuring it needs no Python call per update: a callback only sets the decay and sampling
    (``reset_noise_scale``) and reads ``noise_scale_values`` when it logs.
    """

    def __init__(self, num_variables):
        def variable(value, name, dtype=tf.float32):
            return tf.Variable(
                value, dtype=dtype, trainable=False, name=name,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

        def scalar(name):
            return variable(0.0, name)

        self.gradient_norm = scalar("gradient_norm")
        self.variable_gradient_norms = variable(tf.zeros([num_variables], tf.float32),
                                                "variable_gradient_norms")
        # The next update (1-based count) the loop measures: the step fills the norms and runs
        # ``before_update_hooks`` on it (``schedule.UpdateSchedule`` decides which; 0: none;
        # ``EVERY_UPDATE``: every update, ``measure_every_update``).
        self.measured_update = variable(0, "measured_update", tf.int64)
        # Gradient noise scale ingredients (McCandlish et al. 2018); zero when not tracked.
        self.micro_gradient_sq_norm = scalar("micro_gradient_sq_norm")  # mean_j |G_j|^2
        self.batch_gradient_sq_norm = scalar("batch_gradient_sq_norm")  # |mean_j G_j|^2
        self.micro_batch_size = scalar("micro_batch_size")  # mean rows per micro-batch
        self.batch_size = scalar("batch_size")  # rows in the whole (global) virtual batch
        self.num_micro_batches = scalar("num_micro_batches")  # over all replicas
        # ... the last raw estimates and their moving averages (layout: ``noise_scale``); the
        # averages' horizon in examples; sampled: every ``noise_sample_every`` updates (0: none
        # besides) and every update the loop measures (``measured_update``).
        self.noise_scale = variable(tf.zeros([noise_scale.STATE_SIZE], tf.float64), "noise_scale",
                                    tf.float64)
        self.noise_horizon = variable(4096.0, "noise_horizon", tf.float64)
        self.noise_sample_every = variable(0, "noise_sample_every", tf.int64)
        # Graph functions of no arguments the step runs right before a measured update is
        # applied (``Measurement.before_update``); read when the step is traced.
        self.before_update_hooks = []
        # Sample the noise scale on every update (set before the step is traced): what acts on
        # it while training (AdaScale's gain, the adaptive batch) reads fresh averages.
        self.sample_every_update = False
        # The averages' horizon (examples) set by what acts on them while training (the adaptive
        # batch, AdaScale): it then holds whatever horizon a measurement asks for.
        self.horizon_override = None
        # Whether updates besides the measured ones are sampled (``noise_sample_every`` > 0),
        # known when the step is traced: a step traced for the updates that are not measured
        # then keeps the periodic test (``is_sampled``), else it has no noise-scale work at all.
        self.samples_periodically = False
        # What the step being traced is for (``tracing``): None, any update (it tests in the
        # graph whether this one is measured); True, the measured update of a segment; False,
        # an update that is not measured.
        self.traced_kind = None

    @contextlib.contextmanager
    def tracing(self, measured):
        """While a step is traced for measured updates only (``measured`` True) or for the
        others only (False): that step has no test of ``measured_update`` and, on an update
        that records nothing, none of the recording ops (``graph_calls.chunk_function``)."""
        previous, self.traced_kind = self.traced_kind, measured
        try:
            yield
        finally:
            self.traced_kind = previous

    def trace_key(self):
        """What a step traced for a kind of update depends on besides the model: functions
        traced with another key are traced again."""
        return (self.sample_every_update, self.samples_periodically)

    def measure_every_update(self):
        """Has the step fill the norms on every update (a loop reading them after each one
        without a schedule, as a plain ``model.fit`` callback might)."""
        self.measured_update.assign(EVERY_UPDATE)

    def variables(self):
        """Every variable, in a fixed order (what a checkpoint saves: the noise-scale averages
        must survive a resume)."""
        return [self.gradient_norm, self.variable_gradient_norms, self.measured_update,
                self.micro_gradient_sq_norm, self.batch_gradient_sq_norm, self.micro_batch_size,
                self.batch_size, self.num_micro_batches, self.noise_scale, self.noise_horizon,
                self.noise_sample_every]

    def reset_noise_scale(self, horizon_examples, sample_every=0):
        """Starts the noise-scale averages afresh with this horizon (in examples; the
        ``horizon_override`` instead when one is set) and sampling (every ``sample_every``
        updates besides the measured ones; 0: the measured ones only)."""
        self.noise_scale.assign(tf.zeros([noise_scale.STATE_SIZE], tf.float64))
        if self.horizon_override is not None:
            horizon_examples = self.horizon_override
        self.noise_horizon.assign(float(horizon_examples))
        self.noise_sample_every.assign(int(sample_every))
        self.samples_periodically = int(sample_every) > 0

    def noise_scale_values(self, state=None, preconditioned=False):
        """``noise_scale.read_state`` of the state: the bias-corrected averages and the last raw
        sample (None until a sample with two or more pieces). ``state``: the value of
        ``noise_scale`` read earlier (inside a train chunk), else read now."""
        return noise_scale.read_state(self.noise_scale.numpy() if state is None else state,
                                      preconditioned)


def record_gradient_norms(measurements, grads, replica, distributed):
    """Fills the global and per-variable norms of the applied (all-reduced) gradient."""
    full = list(grads)
    if distributed:
        full = replica.all_reduce("sum", full)
    # sqrt(2 * l2_loss): one fused pass per gradient (tf.norm writes the squares to a temporary); the
    # doubling and the square root once on the stacked sums (the same values: elementwise ops,
    # one op each instead of one per variable).
    norms = tf.sqrt(2.0 * tf.stack([tf.nn.l2_loss(tf.cast(g, tf.float32)) for g in full])) \
        if full else tf.zeros([0])
    measurements.variable_gradient_norms.assign(norms)
    measurements.gradient_norm.assign(tf.norm(norms))


def is_sampled(measurements, coming_update, measured=None):
    """Whether update ``coming_update`` feeds the noise scale: every ``noise_sample_every``
    updates, and every update the loop measures (so that each logged noise-scale point has the
    raw estimates of its own update). A bool tensor, or a Python bool where the step's kind
    decides it when traced (``measured``: ``StepMeasurements.traced_kind``): True on a
    measured update, on every update with ``sample_every_update``, and False on an update that
    is not measured when only measured updates are sampled."""
    m = measurements
    if m.sample_every_update or measured:
        return True
    if measured is False and not m.samples_periodically:
        return False
    every = m.noise_sample_every
    periodic = tf.logical_and(every > 0, tf.equal(coming_update % tf.maximum(every, 1), 0))
    if measured is False:
        return periodic
    wanted = m.measured_update
    return tf.logical_or(periodic, tf.logical_or(tf.equal(coming_update, wanted),
                                                 tf.equal(wanted, EVERY_UPDATE)))


def when(condition, branch, otherwise):
    """``branch()`` if ``condition`` is True, ``otherwise()`` if False, else (a bool tensor)
    ``tf.cond``: a step whose kind decides (``is_sampled``) has no conditional at all."""
    if condition is True or condition is False:
        return branch() if condition else otherwise()
    return tf.cond(condition, branch, otherwise)


def record(measurements, step, grads, data_grads, pieces_sq, num_pieces, num_rows):
    """Fills ``measurements`` for this update: the noise scale on sampled updates, the gradient
    norms (and the ``before_update_hooks``) on the update the loop measures.

    A step traced for one kind of update (``step.measured`` True or False) records what that
    kind records, with no test. A step for any update (``step.measured`` None) tests in the
    graph: on one device each part sits in a ``tf.cond``, whose untaken branch still costs its
    ops' dispatch on every update (BUILD.md, "Stop 33"); under a distribution strategy every
    update records (the values of the noise scale still change on sampled updates only):
    all-reduces and the cross-replica writes of ``ONLY_FIRST_REPLICA`` variables cannot run
    inside a ``tf.cond`` there.
    """
    gated = not tf.distribute.has_strategy()
    if step.track_noise and step.sampled is not False:
        def noise():
            noise_scale.record(measurements, step, pieces_sq, grads, data_grads, num_pieces,
                               num_rows)
            return tf.constant(True)

        if gated:
            when(step.sampled, noise, lambda: tf.constant(False))
        else:
            noise()
    if not step.records_norms or step.measured is False:
        return

    def measured():
        for hook in measurements.before_update_hooks:
            hook()
        record_gradient_norms(measurements, grads, step.replica, step.distributed)
        return tf.constant(True)

    if gated and step.measured is None:
        wanted = measurements.measured_update
        tf.cond(tf.logical_or(tf.equal(step.coming_update, wanted),
                              tf.equal(wanted, EVERY_UPDATE)), measured,
                lambda: tf.constant(False))
    else:
        measured()
