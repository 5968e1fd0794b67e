"""Reading a small JSON file that may be missing or half-written (a run's status.json or
result.json while another process writes it, a study's state): None instead of an error."""

import json


def read_json(path):
    """The parsed file, or None when it does not exist or is not (yet) valid JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None
