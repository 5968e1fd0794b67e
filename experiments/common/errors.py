"""An error's own message, as users should read it.

gin re-raises an error from inside a configurable with its call chain appended ("In call to
configurable 'train' (<function train at 0x...>)"): useful in a traceback, noise in a one-line
summary, a status file or a study's progress line.
"""

import os

from experiments.common import json_files

GIN_CALL_CHAIN = "\n  In call to configurable"


def own_message(error):
    """The message of ``error`` (an exception or its text) without gin's call chain."""
    return str(error).split(GIN_CALL_CHAIN)[0].strip()


def summary(error):
    """``Type: message`` of an exception, the message its own (``own_message``)."""
    return f"{type(error).__name__}: {own_message(error)}"


# Errors that are the user's input or the run's numbers, not a bug: shown as one message.
_USER_ERRORS = (ValueError, LookupError, OSError, FloatingPointError, RecursionError)
REQUIRED = "Required bindings for `"


# What an operating system says of a file it cannot write or read, as TensorFlow's own file
# errors (e.g. ResourceExhaustedError from a summary writer on a full disk) carry it.
_FILE_SYSTEM_TEXTS = ("No space left on device", "Permission denied", "Read-only file system",
                      "Disk quota exceeded", "No such file or directory")


def _file_system_error(error):
    """A TensorFlow op error (``tf.errors.OpError``, recognised without importing TensorFlow)
    whose message is the file system's: the user's disk, not a bug."""
    tensorflow_op_error = any(c.__name__ == "OpError" and c.__module__.startswith("tensorflow")
                              for c in type(error).__mro__)
    return tensorflow_op_error and any(t in str(error) for t in _FILE_SYSTEM_TEXTS)


def user_message(error):
    """The one or two lines ``main.py`` prints for ``error``, or None for an error that is a bug
    (its traceback is then kept). The run directory a failed run was marked in
    (``error.batchlab_run_dir``) is named."""
    text = own_message(error)
    if isinstance(error, RuntimeError) and REQUIRED in text:  # gin.REQUIRED left unbound
        configurable = text.split(REQUIRED, 1)[1].split("`", 1)[0]
        names = text.rsplit("[", 1)[-1].rstrip("]").replace("'", "").split(", ")
        shown = ", ".join(f"{configurable}.{n}" for n in names)
        return (f"{shown} must be set: bind it in a gin file or with "
                f"--gin_bindings='{configurable}.{names[0]} = ...'.")
    if isinstance(error, RecursionError):
        text = ("a binding refers to itself (e.g. X.param = @X()), so building it never ends; "
                "check the references (@...) in the bindings.")
    elif _file_system_error(error):
        text = next(line for line in text.splitlines() if line.strip())
    elif not isinstance(error, _USER_ERRORS):
        return None
    elif isinstance(error, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) \
            and getattr(error, "filename", None):
        text = f"{error.filename}: {error.strerror or text}"
    run_dir = getattr(error, "batchlab_run_dir", None)
    if run_dir:
        text += f"\n({failed_run_note(run_dir)})"
    return text


def failed_run_note(run_dir):
    """"run DIR is marked failed; ..." naming only the files of ``run_dir`` that exist: its
    status.json (the error), and its log.txt (the whole output), which only a run launched with
    ``--jobs`` > 1 has (a single run's output is the console's)."""
    def has(name):
        return os.path.exists(os.path.join(run_dir, name))

    if _status_of(run_dir) != "failed":  # the status could not be written (a full disk)
        return f"run {run_dir} failed" + ("; its log.txt says more" if has("log.txt") else "")
    if has("log.txt"):
        return f"run {run_dir} is marked failed; its log.txt and status.json say more"
    return f"run {run_dir} is marked failed in its status.json"


def _status_of(run_dir):
    """The status status.json records, or None where it cannot be read."""
    status = json_files.read_json(os.path.join(run_dir, "status.json"))
    return status.get("status") if isinstance(status, dict) else None
