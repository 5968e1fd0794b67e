"""The graph functions batchlab's loop (``custom_loop.CustomLoop``) calls, built once each:

- ``chunk_function``: several updates in one call, reading the batches from the iterator in the
  graph (``fit.steps_per_execution``); with measurements (``measurement.Measurement``) the chunk
  runs in segments that end on the updates they read, and reads them there (``run_measured`` is
  the host side).
- ``read_and_keep``: a small finite evaluation set read once and kept as tensors, with a function
  evaluating all of it in one call (``evaluation.in_graph``: for (x, y) batches the forward pass
  per batch, the loss and metrics once over all rows; with sample weights ``test_step`` per
  batch).

Each is traced without AutoGraph (``autograph=False``: the loops are written as
``tf.while_loop`` and ``tf.cond``): AutoGraph converts every Python function a traced function
calls (the train step's Keras and batchlab code), which was most of a small run's fixed cost
(BUILD.md, "The measurement architecture, before and after"). Each is returned as a concrete
function: a ``tf.function`` call first matches its arguments against its traces, which for an
iterator costs as much as a small update (BUILD.md, "Fast small runs").
"""

import tensorflow as tf

from experiments.engine import evaluation


def chunk_function(model, strategy, step, iterator, measurements=(), measured_step=None):
    """A concrete function running updates of ``step`` on every replica.

    Without measurements: ``run(iterator, n)`` runs ``n`` updates (a tensor, so one trace serves
    every chunk length) and returns the metrics after the last. With measurements
    (``measurement.Measurement``, read inside the call): ``run(iterator, lengths, masks)`` runs
    segments of ``lengths[s]`` updates, each ending on a measured update (``masks[s][m]``: read
    measurement ``m`` there). Before a segment that ends on a measured update the step is told
    which update that is (``StepMeasurements.measured_update``: its gradient norms and
    ``before_update`` hooks run on it); after it, each measurement's ``read`` runs where its mask
    says so (one ``tf.cond`` per measurement and segment, none per update). Returns (metrics, one
    [segments, *shape] tensor of rows per measurement).

    With ``measured_step`` (the same update, traced for measured updates: ``StepMeasurements.
    tracing``), ``step`` is the one traced for the others: a segment runs ``step`` on all its
    updates but a measured last one, which runs ``measured_step`` in a ``tf.cond`` (one per
    segment). The updates are the same; the updates that are not measured carry none of the
    measuring ops, whose untaken branches cost their dispatch on every update of a step that
    tests in the graph (BUILD.md, "Stop 33" and "Stop 35").
    """
    def update_from(iterator):
        """One update on the next batch of ``iterator``: the function's own argument, so that
        a call with another iterator (an adaptive batch starts one where its sizes change)
        reads that one, not the iterator it was traced with."""
        def one_update(i):
            strategy.run(step, args=(next(iterator),))
            return (i + 1,)

        return one_update

    if not measurements:
        @tf.function(autograph=False)
        def run(iterator, n):
            tf.while_loop(lambda i: i < n, update_from(iterator), [tf.constant(0, tf.int64)])
            return model.get_metrics_result()

        return run.get_concrete_function(iterator, tf.TensorSpec((), tf.int64))

    step_state = getattr(model, "measurements", None)

    @tf.function(autograph=False)
    def run_measured(iterator, lengths, masks):
        one_update = update_from(iterator)
        count = tf.shape(lengths)[0]
        rows = [tf.TensorArray(tf.float64, size=count, element_shape=m.shape)
                for m in measurements]

        def measure_last():
            strategy.run(measured_step, args=(next(iterator),))
            return tf.constant(True)

        def segment(s, rows):
            mask = masks[s]
            measured = tf.reduce_any(mask)
            if step_state is not None:
                end = tf.cast(model.optimizer.iterations, tf.int64) + lengths[s]
                step_state.measured_update.assign(tf.where(measured, end, tf.zeros_like(end)))
            unmeasured = lengths[s]
            if measured_step is not None:
                unmeasured -= tf.cast(measured, tf.int64)
            tf.while_loop(lambda i: i < unmeasured, one_update, [tf.constant(0, tf.int64)])
            if measured_step is not None:
                tf.cond(measured, measure_last, lambda: tf.constant(False))
            update = tf.cast(model.optimizer.iterations, tf.int64)
            rows = [r.write(s, tf.cond(mask[m], lambda read=read: read.read(update),
                                       read.zeros))
                    for m, (read, r) in enumerate(zip(measurements, rows))]
            return s + 1, rows

        _, rows = tf.while_loop(lambda s, _: s < count, segment, [tf.constant(0), rows])
        return model.get_metrics_result(), [r.stack() for r in rows]

    return run_measured.get_concrete_function(iterator, tf.TensorSpec([None], tf.int64),
                                              tf.TensorSpec([None, len(measurements)], tf.bool))


def run_measured(train, iterator, measurements, segments):
    """Calls a measured chunk function on ``segments`` (``UpdateSchedule.segments``: lengths,
    masks, and (segment, measurement, update) of each measured point); each measurement's
    ``publish`` gets its rows after the call, in update order. Returns the metrics."""
    lengths, masks, logged = segments
    logs, rows = train(iterator, tf.constant(lengths, tf.int64), tf.constant(masks, tf.bool))
    values = {}
    for s, m, update in logged:
        if m not in values:
            values[m] = rows[m].numpy()
        measurements[m].publish(update, values[m][s])
    return logs


def read_and_keep(model, dataset, max_bytes):
    """Reads an evaluation ``dataset`` once: (concrete function evaluating ``model`` over its
    rows, the rows); (None, None) when empty; None when its batches cannot be kept (a part
    without a batch axis, parts of different lengths, batches other than equal ones and a
    shorter last one, more than ``max_bytes``)."""
    batches, sizes, total = [], [], 0
    for batch in dataset:
        leaves = tf.nest.flatten(batch)
        rows = {int(t.shape[0]) if t.shape.rank else None for t in leaves}
        if len(rows) != 1 or None in rows:
            return None
        (size,) = rows
        if sizes and (sizes[-1] != sizes[0] or size > sizes[0]):
            return None  # only the last batch may be shorter
        total += sum(t.numpy().nbytes for t in leaves)
        if total > max_bytes:
            return None
        sizes.append(size)
        batches.append(batch)
    if not batches:
        return (None, None)
    tensors = tf.nest.map_structure(lambda *parts: tf.concat(parts, 0), *batches)
    size = sizes[0]

    @tf.function(autograph=False)
    def run(data):  # (x, y): forward per batch, then loss and metrics once (``evaluation``)
        return evaluation.in_graph(model, data, size)

    return run.get_concrete_function(tensors), tensors
