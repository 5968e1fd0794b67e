"""The run directory: created fresh for every run, never reused, and honest about its state.

Layout::

    <output_dir>/<experiment>/<timestamp>[-N]/
        config.gin            every parsed binding, written before training
        operative_config.gin  the values actually used, written after the first update
        status.json           'running', then 'finished' or 'failed' with the error
        result.json           only for a finished run
        tensorboard/          train/ and validation/ event files
        checkpoints/          weights per epoch
"""

import datetime
import json
import os


def check_output_dir(output_dir):
    """Raises a clear error, before anything is loaded or written, when ``output_dir`` cannot hold
    run directories: it is a file, lies under a file, or is not writable."""
    path = os.path.abspath(output_dir)
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        where = "is a file" if probe == path else f"lies under the file {probe}"
        raise ValueError(f"--output_dir={output_dir!r} {where}; give a directory.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--output_dir={output_dir!r}: {probe} is not writable.")
    return path


def create(output_dir, experiment, name=None):
    """Creates and returns a new run directory; an existing one is never touched."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    parent = os.path.join(output_dir, experiment)
    base = os.path.join(parent, name or stamp)
    path, suffix = base, 1
    while True:
        try:
            os.makedirs(path, exist_ok=False)
            break
        except FileExistsError:
            path = f"{base}-{suffix}"
            suffix += 1
    write_json(path, "status.json", {"status": "running"})
    return path


def write_text(run_dir, name, text):
    with open(os.path.join(run_dir, name), "w") as handle:
        handle.write(text)


def write_json(run_dir, name, payload):
    tmp = os.path.join(run_dir, name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=_jsonable)
        handle.write("\n")
    os.replace(tmp, os.path.join(run_dir, name))


def mark_failed(run_dir, error):
    write_json(run_dir, "status.json",
               {"status": "failed", "error": f"{type(error).__name__}: {error}"})


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
