"""An error's own message, as users should read it.

gin re-raises an error from inside a configurable with its call chain appended ("In call to
configurable 'train' (<function train at 0x...>)"): useful in a traceback, noise in a one-line
summary, a status file or a study's progress line.
"""

GIN_CALL_CHAIN = "\n  In call to configurable"


def own_message(error):
    """The message of ``error`` (an exception or its text) without gin's call chain."""
    return str(error).split(GIN_CALL_CHAIN)[0].strip()


def summary(error):
    """``Type: message`` of an exception, the message its own (``own_message``)."""
    return f"{type(error).__name__}: {own_message(error)}"
