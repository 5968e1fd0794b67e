"""The graph functions batchlab's loop (``custom_loop.CustomLoop``) calls, built once each:

- ``chunk_function``: several updates in one call, reading the batches from the iterator in the
  graph (``fit.steps_per_execution``); with measurement probes (``step_measurements.UpdateProbe``)
  the chunk runs in segments that end on the updates they log, and reads them there
  (``run_probed`` is the host side).
- ``read_and_keep``: a small finite evaluation set read once and kept as tensors, with a function
  evaluating all of it in one call (for (x, y) batches: the forward pass per batch, the loss and
  metrics once over all rows, ``inference.evaluate_rows``; with sample weights ``test_step`` per
  batch).

Each is returned as a concrete function: a ``tf.function`` call first matches its arguments
against its traces, which for an iterator costs ~0.8 ms per call here (as much as a small update).
"""

import tensorflow as tf

from experiments.engine import inference


def chunk_function(model, strategy, step, iterator, probes=()):
    """A concrete function running updates of ``step`` on every replica.

    Without probes: ``run(iterator, n)`` runs ``n`` updates (a tensor, so one trace serves every
    chunk length) and returns the metrics after the last. With probes: ``run(iterator, lengths,
    masks)`` runs segments of ``lengths[s]`` updates, each ending on a logged update, and there
    each probe's ``after`` where ``masks[s]`` says so (one ``tf.cond`` per probe and segment, none
    per update); returns (metrics, one [segments, *shape] tensor of rows per probe).
    """
    if not probes:
        @tf.function
        def run(iterator, n):
            for _ in tf.range(n):
                strategy.run(step, args=(next(iterator),))
            return model.get_metrics_result()

        return run.get_concrete_function(iterator, tf.TensorSpec((), tf.int64))

    @tf.function
    def run_probed(iterator, lengths, masks):
        count = tf.shape(lengths)[0]
        rows = [tf.TensorArray(tf.float64, size=count, element_shape=p.shape) for p in probes]

        def one_update(i):
            strategy.run(step, args=(next(iterator),))
            return (i + 1,)

        def segment(s, rows):
            tf.while_loop(lambda i: i < lengths[s], one_update, [tf.constant(0, tf.int64)])
            update = tf.cast(model.optimizer.iterations, tf.int64)
            mask = masks[s]
            rows = [r.write(s, tf.cond(mask[p], lambda probe=probe: probe.after(update),
                                       probe.zeros))
                    for p, (probe, r) in enumerate(zip(probes, rows))]
            return s + 1, rows

        _, rows = tf.while_loop(lambda s, _: s < count, segment, [tf.constant(0), rows])
        return model.get_metrics_result(), [r.stack() for r in rows]

    return run_probed.get_concrete_function(iterator, tf.TensorSpec([None], tf.int64),
                                            tf.TensorSpec([None, len(probes)], tf.bool))


def run_probed(train, iterator, probes, segments):
    """Calls a probed chunk function on ``segments`` (``ChunkPlan.segments``: lengths, masks,
    and (segment, probe, update) of each logged point); each probe's ``prepare`` runs before the
    call, its ``receive`` gets its rows after it. Returns the metrics."""
    lengths, masks, logged = segments
    for _, p, update in logged:
        if probes[p].prepare is not None:
            probes[p].prepare(update)
    logs, rows = train(iterator, tf.constant(lengths, tf.int64), tf.constant(masks, tf.bool))
    values = {}
    for s, p, update in logged:
        if p not in values:
            values[p] = rows[p].numpy()
        probes[p].receive(update, values[p][s])
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

    @tf.function
    def run(data):
        if isinstance(data, tuple) and len(data) == 2:  # (x, y): forward per batch, then
            return inference.evaluate_rows(model, data[0], data[1], size)  # loss and metrics once
        return inference.by_batch(model, data, size)

    return run.get_concrete_function(tensors), tensors
