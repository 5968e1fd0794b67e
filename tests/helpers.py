"""Test helpers: read run directories and TensorBoard event files back."""

import glob
import json
import os

import tensorflow as tf


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def write_run_dir(directory, status, result=None):
    """A run directory as a run leaves it: its status.json and, given, its result.json."""
    os.makedirs(directory)
    with open(os.path.join(directory, "status.json"), "w") as handle:
        json.dump(status, handle)
    if result is not None:
        with open(os.path.join(directory, "result.json"), "w") as handle:
            json.dump(result, handle)


def event_tags(log_dir):
    """Every scalar/text tag written under ``log_dir`` (all subdirectories)."""
    tags = set()
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.add(value.tag)
    return tags


def event_values(log_dir, tag):
    """[(step, value)] of a scalar tag (written as tensors by tf.summary)."""
    out = []
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    out.append((event.step, float(tf.make_ndarray(value.tensor))))
    return sorted(out)


def run_dirs(output_dir):
    """Directories holding a status.json under ``output_dir``."""
    return sorted(os.path.dirname(p) for p in
                  glob.glob(os.path.join(output_dir, "**", "status.json"), recursive=True))


def saved_at_least(checkpoints, update):
    """Whether the directory ``checkpoints`` holds a checkpoint of ``update`` or later. A run keeps
    only its newest two, so a fast run may have replaced the exact one already when a test looks;
    a test that stops a run once this holds must accept a later resume point."""
    for path in glob.glob(os.path.join(checkpoints, "state-*.npz")):
        if int(os.path.basename(path)[len("state-"):-len(".npz")]) >= update:
            return True
    return False


def session_groups(logdir, statuses):
    """The session groups TensorBoard's own HParams backend lists for ``logdir`` (what the
    dashboard shows), with their metrics; ``statuses``: the ``api_pb2`` statuses to include."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, logdir)
    backend = backend_context.Context(base_plugin.TBContext(
        logdir=logdir, data_provider=provider, multiplexer=multiplexer))
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=10, include_metrics=True,
                                               allowed_statuses=list(statuses))
    return list_session_groups.Handler(context.RequestContext(), backend, "",
                                       request).run().session_groups


def linear_model(dim, kernel, regularizer=None):
    """y = x.w with no bias, its kernel set to ``kernel``: the model whose gradient statistics
    the noise-scale tests know in closed form."""
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((dim,)),
                              keras.layers.Dense(1, use_bias=False,
                                                 kernel_regularizer=regularizer)])
    model.layers[-1].kernel.assign(np.reshape(kernel, (dim, 1)).astype(np.float32))
    return model
