"""One place for the checks that bindings share, each error naming the binding it is about.

Every integer a user binds (epochs, seeds, intervals, sizes) goes through ``positive_int`` or
``non_negative_int``: ``True``, ``2.5`` and ``-1`` are refused with the binding's name instead of
being silently truncated or producing nonsense later (negative examples/s, an empty run).
"""

import math
import numbers


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value, binding):
    """``value`` as an int; a ValueError naming ``binding`` unless it is an integer >= 1."""
    if not _is_integer(value) or value < 1:
        raise ValueError(f"{binding} must be a positive integer, got {value!r}.")
    return int(value)


def non_negative_int(value, binding):
    """``value`` as an int; a ValueError naming ``binding`` unless it is an integer >= 0."""
    if not _is_integer(value) or value < 0:
        raise ValueError(f"{binding} must be an integer >= 0, got {value!r}.")
    return int(value)


def optional_positive_int(value, binding):
    """None, or ``positive_int(value, binding)``."""
    return None if value is None else positive_int(value, binding)


def positive_number(value, binding):
    """``value`` as a float; a ValueError naming ``binding`` unless it is finite and > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{binding} must be a positive number, got {value!r}.")
    return float(value)


def fraction(value, binding, include_one=False):
    """``value`` as a float in [0, 1) (or [0, 1]); a ValueError naming ``binding`` otherwise."""
    upper_ok = (value <= 1) if include_one else (value < 1)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value < 0 or not upper_ok:
        interval = "[0, 1]" if include_one else "[0, 1)"
        raise ValueError(f"{binding} must be in {interval}, got {value!r}.")
    return float(value)


def confidence_level(value, binding):
    """A confidence level strictly between 0 and 1 (at 0 an interval shrinks to a point that
    may exclude the estimate itself); a ValueError naming ``binding`` otherwise."""
    value = fraction(value, binding)
    if value <= 0:
        raise ValueError(f"{binding} must be above 0 and below 1 (e.g. 0.95), got {value!r}.")
    return value


def one_of(value, allowed, binding):
    """``value`` if it is in ``allowed``; a ValueError naming ``binding`` and the choices."""
    if value not in allowed:
        raise ValueError(f"{binding} must be one of {tuple(allowed)}, got {value!r}.")
    return value
