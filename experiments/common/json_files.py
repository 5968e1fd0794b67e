"""JSON files of batchlab: reading a small file that may be missing or half-written (a run's
status.json or result.json while another process writes it, a study's state): None instead of
an error; and writing standard JSON.

A JSON file batchlab writes is standard JSON, which strict parsers (JavaScript's
``JSON.parse``) accept (a run's files go through here: result.json, status.json,
noise_probes/*.json): ``plain`` turns NumPy scalars and arrays into numbers and lists
and a non-finite float (inf, -inf, nan) into ``null``, and ``dump``/``dumps`` refuse anything
left over (``allow_nan=False``), so a value that slips past raises instead of writing
``Infinity``. ``null`` at an interval's end (``noise_probe/b_simple_high``) means that end is
unbounded, as in a study's report.json.
"""

import json
import math


def read_json(path):
    """The parsed file, or None when it does not exist or is not (yet) valid JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def read_result(path):
    """A run's result.json (None when missing or not yet valid) with its final metrics as
    written: a NaN or infinite metric is null in the file (JSON has no NaN) and reads back as
    NaN in ``final_epoch`` and ``final_validation``, so a run that finished diverged keeps its
    diverged metric instead of losing it on a relaunch that reads the file."""
    result = read_json(path)
    if isinstance(result, dict):
        for key in ("final_epoch", "final_validation"):
            if isinstance(result.get(key), dict):
                result[key] = {name: math.nan if value is None else value
                               for name, value in result[key].items()}
    return result


def plain(value, default=str):
    """``value`` as plain JSON values: dicts, lists, numbers, strings, bools
    and None; NumPy scalars and arrays as numbers and lists; inf, -inf and nan as None. Other
    objects become ``default(value)`` (``str``), converted in turn."""
    if isinstance(value, dict):
        return {_key(k): plain(v, default) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, default) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):  # NumPy's float64 too
        return float(value) if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # NumPy arrays and scalars (and tf's numpy() results)
        return plain(value.tolist(), default)
    if hasattr(value, "item"):
        return plain(value.item(), default)
    return plain(default(value), default)


def _key(key):
    """A dict key as ``json`` writes it (str, int, float, bool, None as they are; NumPy scalars as
    their Python value; anything else as its string)."""
    if key is None or isinstance(key, (str, int, float, bool)):
        return key
    if hasattr(key, "item"):
        return key.item()
    return str(key)


def dumps(value, **kwargs):
    """``json.dumps`` of ``plain(value)``, standard JSON only."""
    return json.dumps(plain(value), allow_nan=False, **kwargs)


def dump(value, handle, **kwargs):
    """``json.dump`` of ``plain(value)`` to ``handle``, standard JSON only."""
    json.dump(plain(value), handle, allow_nan=False, **kwargs)

