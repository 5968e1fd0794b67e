"""Command-line bindings win: they apply after a sweep variant's or a study run's own bindings.

The order of a run's configuration is: gin files, then the run's variant or axis bindings, then
``--gin_bindings``. A run's bindings (a ``grid.RunSpec``) are parsed after the command-line ones
wherever a run is started (in process, in a worker, in the checks of every point), so
``with_command_line_last`` appends the command-line bindings that set a parameter the run sets
itself once more after them: the last one parsed is the user's.

Each override is announced. In a sweep, it applies whatever the variants' values. In a study, a
value the grid gives every run alike (``study.epochs = [10]``) may be overridden (the runs'
recorded hyperparameters follow); a value that differs between runs (an axis with several values,
or the epochs ``study.update_budget`` gives each batch size) is refused: every run would get the
same value, and the study would compare runs that do not differ along that axis.

Pure functions over binding strings: no gin state is read here.
"""

import ast
import dataclasses
import re

_KEY = re.compile(r"^\s*((?:[\w.]+/)*)([\w.]+)\.(\w+)\s*=")
_MACRO = re.compile(r"^\s*([A-Za-z_]\w*)\s*=")
_STATEMENT = re.compile(r"^\s*(?:(?:[\w.]+/)*[\w.]+\s*=|import\s|include\s|from\s)")
MACRO = "%"  # the "configurable" of a macro's key: ('', '%', name)
_MEASURED = "measurements.hparams.values"

# The study axis behind each parameter a study run binds (for the refusal's advice).
_AXES = {"train.batch_size": "study.batch_sizes",
         "train.epochs": "study.epochs (or study.update_budget)",
         "train.seed": "study.seeds",
         "train.micro_batch_size": "study.micro_batch_sizes",
         "learning_rate": "study.learning_rates (or study.rules)",
         "peak_learning_rate": "study.learning_rates (or study.rules)",
         "warmup_steps": "study.warmup_updates"}
_HPARAMS = {"train.batch_size": "batch_size", "train.epochs": "epochs", "train.seed": "seed",
            "train.micro_batch_size": "micro_batch_size", "learning_rate": "learning_rate",
            "peak_learning_rate": "learning_rate"}


class OverrideRefused(ValueError):
    """A command-line binding would erase a study axis."""


def binding_key(binding):
    """``(scope, configurable's last name, parameter)`` a binding sets, ``('', '%', NAME)`` for a
    macro ``NAME = ...``, or None (an import, an include). ``keras.optimizers.SGD.learning_rate``
    and ``SGD.learning_rate`` both give ``('', 'SGD', 'learning_rate')``: gin binds the same
    parameter for both."""
    match = _KEY.match(binding)
    if not match:
        macro = _MACRO.match(binding)
        return None if macro is None else ("", MACRO, macro.group(1))
    scope, selector, parameter = match.groups()
    return scope.rstrip("/"), selector.rsplit(".", 1)[-1], parameter


def statements(gin_bindings):
    """Each binding string split into the statements it holds: one ``--gin_bindings`` value may
    carry several lines (``'train.seed = 1\ntrain.batch_size = 64'``), each a binding of its
    own; a line that starts no statement (a multi-line value's continuation) stays with the one
    before it."""
    out = []
    for text in gin_bindings:
        lines = [line for line in str(text).splitlines() if line.strip()]
        current = []
        for line in lines:
            if current and _STATEMENT.match(line) and not line[:1].isspace():
                out.append("\n".join(current))
                current = []
            current.append(line)
        if current:
            out.append("\n".join(current))
    return out


def _value(binding):
    return binding.split("=", 1)[1].strip()


def _name(key):
    scope, configurable, parameter = key
    if configurable == MACRO:
        return f"{parameter} (a macro)"
    return f"{scope + '/' if scope else ''}{configurable}.{parameter}"


@dataclasses.dataclass(frozen=True)
class Override:
    """One command-line binding and the runs' own values of the parameter it sets."""

    binding: str
    values: dict  # run name -> the run's own value (text)

    def describe(self, label):
        shown = ", ".join(f"{name} ({value})" for name, value in list(self.values.items())[:6])
        more = len(self.values) - 6
        return (f"Command-line binding {self.binding!r} overrides the {label} value"
                f"{'s' if len(self.values) > 1 else ''} of {shown}"
                f"{f' and {more} more' if more > 0 else ''}.")


def overrides(runs, gin_bindings):
    """The command-line bindings that set a parameter some of ``runs`` set to another value."""
    found = []
    for binding in statements(gin_bindings):
        key = binding_key(binding)
        if key is None:
            continue
        values = {}
        for run in runs:
            for own in run.bindings:
                if binding_key(own) == key:
                    values[run.name] = _value(own)
        # a run whose own value is the command line's is not overridden (nothing to announce)
        values = {name: value for name, value in values.items()
                  if not _same_value(value, _value(binding))}
        if values:
            found.append(Override(binding, values))
    return found


def _same_value(ours, theirs):
    """Whether two binding values are the same (as Python literals where they are ones)."""
    try:
        return ast.literal_eval(ours) == ast.literal_eval(theirs)
    except (ValueError, SyntaxError):
        return ours.strip() == theirs.strip()


def with_command_line_last(runs, gin_bindings, label="sweep variant", study=False,
                           print_fn=print):
    """``runs`` with the command-line bindings that override their own appended to their
    bindings (so that they are parsed last), each override announced with ``print_fn``. For a
    study (``study=True``), ``OverrideRefused`` when one would erase an axis."""
    found = overrides(runs, gin_bindings)
    if study:
        for override in found:
            _check_study_override(override, runs)
    for override in found:
        print_fn(override.describe(label))
    if not found:
        return list(runs)
    return [_with(run, [o for o in found if run.name in o.values]) for run in runs]


def _check_study_override(override, runs):
    key = binding_key(override.binding)
    distinct = sorted(set(override.values.values()))
    if len(distinct) > 1 or len(override.values) < len(runs):
        parameter = _name(key)
        axis = _AXES.get(parameter) or _AXES.get(key[2]) or "its axes"
        raise OverrideRefused(
            f"--gin_bindings={override.binding!r} would give every run of the study the same "
            f"{parameter}, which the study varies ({', '.join(distinct[:6])}, from {axis}): "
            "the grid would compare runs that do not differ along that axis. Change the axis "
            "in the study's gin file instead (or run the base experiment without the study).")


def _with(run, found):
    if not found:
        return run
    bindings = list(run.bindings) + [o.binding for o in found]
    hparams = dict(getattr(run, "hparams", None) or {})
    if hparams:
        for override in found:
            key = binding_key(override.binding)
            name = _HPARAMS.get(_name(key)) or _HPARAMS.get(key[2])
            if name in hparams:
                try:
                    hparams[name] = ast.literal_eval(_value(override.binding))
                except (ValueError, SyntaxError):
                    continue
        bindings = [f"{_MEASURED} = {hparams!r}" if b.startswith(_MEASURED) else b
                    for b in bindings]
    return dataclasses.replace(run, bindings=tuple(bindings), hparams=hparams)
