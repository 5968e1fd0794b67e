"""Which bindings a run never used: a binding to a configurable that was never called is reported.

gin records a binding in its operative config only when the configurable is called with it, so
the difference between the parsed config (``gin.config_str()``) and the operative config after
training (``gin.operative_config_str()``) is what the run silently ignored: a typo'd scope, a
setting of a model or data source the experiment does not use, a measurement setting whose
measurement is not enabled. The runner logs them and writes them to ``result.json``.
"""

import re

# "selector.parameter = value" at the start of a line; macros ("NAME = value") have no dot.
_BINDING = re.compile(r"^((?:[\w.]+/)*[\w.]+\.\w+)\s*=", re.MULTILINE)


def bound_keys(config_text):
    """The ``selector.parameter`` keys bound in a gin config string."""
    return set(_BINDING.findall(config_text))


def unused_bindings(config_text, operative_text):
    """Sorted keys bound in ``config_text`` that the run never used (absent from the operative
    config)."""
    return sorted(bound_keys(config_text) - bound_keys(operative_text))
