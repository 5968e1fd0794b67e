"""Gin configuration from files and bindings, with errors that say what and where.

Everything that can be wrong with the configuration is found here, before any run directory is
made: missing gin files, syntax errors, unknown configurables or parameters (with the nearest valid
names). ``registry`` is imported first: every configurable exists before any file is parsed.
"""

import difflib
import importlib.util  # noqa: F401  (gin reports missing files through importlib.util)
import inspect
import logging
import os
import re
import sys

import gin

from experiments.common import errors, paths
from experiments.engine import keras_internals
from experiments.launch import registry  # noqa: F401  (register before parsing)
from experiments.models import schedules

REPO_ROOT = paths.REPO_ROOT


class ConfigError(ValueError):
    """A configuration problem, explained for the user."""


def _registered_names():
    names = set()
    for selector in keras_internals.gin_selectors():
        names.add(selector)
        names.add(selector.rsplit(".", 1)[-1])
    return sorted(names)


def _suggest(word, candidates):
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


# Parameters gin refuses to bind (a configurable's denylist), and what sets them instead.
_NOT_BINDABLE_HINTS = {
    "output_dir": "use the --output_dir flag",
    "run_name": "use the --run_name flag",
    "experiment": "a run is named after its gin file",
}


def _bindable(name, parameter):
    """Whether gin accepts a binding of ``name.parameter`` (not in the configurable's
    denylist: those are set by the launcher, and listing them as parameters would invite a
    binding that is refused)."""
    try:
        gin.config.ParsedBindingKey.parse(f"{name}.{parameter}")
    except ValueError:
        return False
    return True


def _macro_names():
    """The macros bound so far (``NAME = value`` lines of gin's config: no dot, no scope)."""
    return sorted(set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*) = ", gin.config_str(),
                                 flags=re.MULTILINE)))


def _gin_location(text):
    """Where gin says a parse error is: ``in FILE, line N`` (the innermost file; the file that
    includes it named too), or None for a binding string (the caller names the binding)."""
    places = re.findall(r'In file "([^"]+)", line (\d+)', text)
    if not places:
        return None
    (path, line), top = places[0], places[-1][0]
    return f"in {path}, line {line}" + (f", included in {top}" if top != path else "")


def explain(error, where=None):
    """Turns a gin parse error into a ConfigError that names the closest valid names, and for an
    unknown name where it is (the file and line gin gives, else ``where``), on one line: gin's
    own text, which repeats the name and the binding, is left out (``BATCHLAB_TRACEBACK=1``
    shows it, chained)."""
    text = str(error)
    location = _gin_location(text) or where
    place = f" ({location})" if location else ""
    unknown = re.search(r"No configurable matching '([^']+)'", text)
    if unknown:
        name = unknown.group(1)
        return ConfigError(f"Unknown configurable '{name}'{place}."
                           f"{_suggest(name, _registered_names())}")
    reference = re.search(r"No configurable matching reference '@([^'(]+)", text)
    if reference:
        name = reference.group(1)
        return ConfigError(f"Unknown configurable '@{name}'{place}."
                           f"{_suggest(name, _registered_names())}")
    macro = re.search(r"No bindings specified for '([^']+)/gin\.macro'", text)
    if macro:
        name = macro.group(1)
        users = re.findall(rf"^(\S+) = .*%{re.escape(name)}\b", gin.config_str(), re.MULTILINE)
        used = f"{', '.join(users)} {'uses' if len(users) == 1 else 'use'} it, but " \
            if users else ""
        return ConfigError(f"Unknown macro '%{name}'{place}: {used}no '{name} = ...' is bound "
                           f"in the gin files or bindings.{_suggest(name, _macro_names())}")
    parameter = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", text)
    if parameter:
        name, param = parameter.groups()
        try:
            target = gin.get_configurable(name)
            target = target.__init__ if inspect.isclass(target) else target
            params = [p for p in inspect.signature(target).parameters
                      if p != "self" and _bindable(name, p)]
        except (KeyError, AttributeError, TypeError, ValueError):
            params = []
        return ConfigError(f"'{name}' has no parameter '{param}'{place}."
                           f"{_suggest(param, params)} Its parameters: {', '.join(params)}.")
    refused = re.search(r"Configurable '([^']+)' has denylisted kwarg '([^']+)'", text)
    if refused:
        name, param = refused.groups()
        hint = _NOT_BINDABLE_HINTS.get(param, "batchlab sets it for each run")
        return ConfigError(f"'{name}.{param}' cannot be bound in gin{place}: {hint}.")
    missing = re.search(r"No module named '([^']+)'", text)
    if isinstance(error, ImportError) and missing:
        module = missing.group(1)
        return ConfigError(
            f"`import {module}` failed: no module named {module!r}{place}. Put "
            f"{module.split('.')[0]}.py in the directory of the gin file that imports it (that "
            "directory is searched, as Python searches a script's), or add its directory to "
            "PYTHONPATH.")
    if isinstance(error, SyntaxError) or type(error).__name__ == "TokenError":
        return ConfigError(f"gin syntax error: {text}")
    if isinstance(error, OSError):
        return ConfigError(f"Missing gin file: {text}")
    return ConfigError(f"{type(error).__name__}: {text}")


_CALL_CHAIN = re.compile(r"\n  In call to configurable '([^']+)' \(.*?\)(?: in scope '([^']+)')?")
_UNSUPPLIED = re.compile(r"No values supplied by Gin or caller for arguments: \[([^\]]*)\]")


def call_error(error):
    """A ConfigError for a TypeError raised by gin's call of a configurable itself (a missing
    or unexpected argument: ``@keras.callbacks.CSVLogger()`` with no ``filename`` bound), naming
    the configurable and the argument; None for any other error (a TypeError raised inside the
    configurable's own code is a bug, its traceback kept). The call itself failed when the
    innermost frame of the traceback is gin's wrapper: Python raises an argument mismatch in the
    caller's frame, before the configurable's code runs."""
    if not isinstance(error, TypeError):
        return None
    chain = _CALL_CHAIN.search(str(error))
    tb = error.__traceback__
    if chain is None or tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    if os.path.normcase(os.path.abspath(tb.tb_frame.f_code.co_filename)) != \
            os.path.normcase(os.path.abspath(gin.config.__file__)):
        return None
    name, scope = chain.groups()
    shown = f"{scope}/{name}" if scope else name
    own = str(error).split("\n", 1)[0].strip()
    unsupplied = _UNSUPPLIED.search(str(error))
    missing = [m.strip().strip("'\"") for m in unsupplied.group(1).split(",")] \
        if unsupplied else []
    missing = [m for m in missing if m]
    if missing:
        bind = "; ".join(f"{shown}.{m} = ..." for m in missing)
        advice = f"bind {'it' if len(missing) == 1 else 'them'} in a gin file or with " \
                 f"--gin_bindings ({bind})."
    else:
        advice = f"check the bindings of {shown} and the arguments it takes."
    run_dir = getattr(error, "batchlab_run_dir", None)
    marked = f"\n({errors.failed_run_note(run_dir)})" if run_dir else ""
    return ConfigError(f"calling {shown} failed: {own}; {advice}{marked}")


class _NoPathNotFound(logging.Filter):
    """Drops gin's error-level "Path not found: gin/..." lines (and the info-level
    "system_path_file_exists" beside them): gin logs one for every search path it tries for an
    include before the one that has it (about 35 for the quickstart run from another
    directory). A file found nowhere is still reported, as an error of ours."""

    def filter(self, record):
        return not str(record.msg).startswith(("Path not found:", "system_path_file_exists:"))


logging.getLogger().addFilter(_NoPathNotFound())

# Where gin looks for an included file after the working directory (added by ``parse``).
_SEARCH_PATHS = []

_INCLUDE = re.compile(r"""^\s*include\s+(['"])(.+?)\1""", re.MULTILINE)


def _include_target(name, including):
    """The file an ``include`` names, found as gin finds it (as given, then each search path),
    or None (gin then reports it missing)."""
    if os.path.isabs(name):
        return name if os.path.isfile(name) else None
    for prefix in ("", *_SEARCH_PATHS):
        candidate = os.path.join(prefix, name)
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    return None


def include_graph(files):
    """Every gin file the ``files`` include, directly or not (absolute paths, in order); a
    ConfigError naming the files of an include cycle (gin itself would recurse until Python's
    limit and print a thousand lines)."""
    seen = []

    def visit(path, stack):
        if path in stack:
            cycle = stack[stack.index(path):] + [path]
            raise ConfigError("gin include cycle: " + " includes ".join(cycle)
                              + ". Remove one of these includes.")
        if path in seen:
            return
        seen.append(path)
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError):
            return  # gin reports an unreadable file itself
        for match in _INCLUDE.finditer(text):
            target = _include_target(match.group(2), path)
            if target is not None:
                visit(target, stack + [path])

    for path in files:
        visit(os.path.abspath(path), [])
    return seen


def _importable_beside(gin_files):
    """A gin file's own directory is searched for the modules it ``import``s, as Python searches
    a script's directory (appended to ``sys.path``: it never shadows an installed module).

    Inside the shipped ``gin/`` only a folder that holds a Python module or package is: every
    shipped experiment includes ``gin/base.gin``, ``gin/models/...`` and ``gin/data/...``, and
    ``gin/`` itself holds folders named ``data``, ``models``, ``tools``... that would become
    importable (as namespace packages) in every run, shadowing a missing module's ImportError.
    A user's module next to their gin file in ``gin/experiments/`` (README: "Your own model")
    makes that folder searched."""
    shipped = os.path.normpath(os.path.join(REPO_ROOT, "gin"))
    for path in gin_files:
        directory = os.path.dirname(os.path.abspath(path))
        if directory in sys.path:
            continue
        normalized = os.path.normpath(directory)
        if (normalized == shipped or normalized.startswith(shipped + os.sep)) and \
                not _holds_python(directory):
            continue
        sys.path.append(directory)


def _holds_python(directory):
    """True when ``directory`` holds a module (``*.py``) or a package (``*/__init__.py``)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return False
    return any(name.endswith(".py") or os.path.isfile(os.path.join(directory, name,
                                                                   "__init__.py"))
               for name in names)


def resolve_gin_file(path):
    """A gin file as given, or relative to the repository root; a clear error if neither exists."""
    for candidate in (path, os.path.join(REPO_ROOT, path)):
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"Gin file not found: {path!r} (also looked in {REPO_ROOT}).")


def query(binding, default=None):
    """A bound value with macros resolved (``%BATCH``); ``default`` when unbound."""
    try:
        value = gin.query_parameter(binding)
    except (ValueError, KeyError):  # unbound; KeyError: an ambiguous or unknown selector
        return default
    if isinstance(value, gin.config.ConfigurableReference) and \
            value.configurable.name == "macro":
        value = value.scoped_configurable_fn()
    return value


_UNBOUND = object()


def effective_value(binding, default=None):
    """The value ``[scope/]configurable.parameter`` takes in the configuration gin holds: its
    binding (macros resolved), else the default in the configurable's signature (an optimizer's
    ``learning_rate`` a variant leaves unbound is the class's default, which a table must show,
    not the base experiment's other optimizer's rate); ``default`` when neither exists."""
    value = query(binding, _UNBOUND)
    if value is not _UNBOUND:
        return value
    selector, _, parameter = binding.rpartition(".")
    try:
        function = gin.get_configurable(selector.rsplit("/", 1)[-1])
    except (ValueError, KeyError):
        return default
    try:
        signature = inspect.signature(
            function.__init__ if inspect.isclass(function) else function)
        found = signature.parameters[parameter].default
    except (KeyError, TypeError, ValueError):
        return default
    return default if found is inspect.Parameter.empty else found


def parse(gin_files, gin_bindings):
    """Clears gin and parses files then bindings, in order; raises ConfigError on any problem."""
    files = [resolve_gin_file(f) for f in gin_files]
    paths.set_gin_files(files)  # data paths are also looked up next to these files
    gin.clear_config()
    schedules.forget_evaluations()  # a run checks the rule's B against its own
    if REPO_ROOT not in _SEARCH_PATHS:  # once: gin keeps its search paths across clears
        gin.add_config_file_search_path(REPO_ROOT)
        _SEARCH_PATHS.append(REPO_ROOT)
    graph = include_graph(files)
    _importable_beside(graph)
    # File by file, then binding by binding (what gin.parse_config_files_and_bindings does), so
    # that an error can say which file or command-line binding it is in.
    _parse_sources(files, gin_bindings)
    drop_unchosen_optimizer_defaults(graph, files, gin_bindings)
    _parse_one(lambda _: gin.finalize(), None, "when finalizing the configuration")
    check_self_references()
    return files


def _parse_sources(files, gin_bindings):
    for path in files:
        _parse_one(gin.parse_config_file, path, f"in {path}")
    for binding in gin_bindings:
        _parse_one(gin.parse_config, binding, f"in the command-line binding {binding!r}")


_KEY_LINE = re.compile(r"^\s*((?:[\w.]+/)*)([\w.]+)\.(\w+)\s*=", re.MULTILINE)


def _bound_keys(text):
    """``(scope, configurable's last name, parameter)`` of each binding in gin text."""
    return {(scope.rstrip("/"), selector.rsplit(".", 1)[-1], parameter)
            for scope, selector, parameter in _KEY_LINE.findall(text)}


def _included_only(graph, files, gin_bindings):
    """The binding keys (``_bound_keys``) set by included files and by no file given with
    --gin_file, nor by a binding (command line, sweep variant, study run)."""
    top = {os.path.abspath(path) for path in files}
    users, included = set(), set()
    for binding in gin_bindings:
        users |= _bound_keys(binding)
    for path in graph:
        try:
            with open(path, encoding="utf-8") as handle:
                keys = _bound_keys(handle.read())
        except (OSError, UnicodeDecodeError):
            continue
        if path in top:
            users |= keys
        else:
            included |= keys
    return included - users


def _without(config_text, dropped):
    """``gin.config_str()`` text without the bindings whose keys are in ``dropped`` (and their
    continuation lines); a ``# Parameters for X:`` section left with no binding goes too."""
    kept_sections = []
    for section in config_text.split("\n\n"):
        lines, skipping = [], False
        for line in section.splitlines():
            if skipping and line.startswith((" ", "\t")):
                continue
            match = _BINDING_LINE.match(line)
            key = (match.group(1).rstrip("/"), match.group(2).rsplit(".", 1)[-1],
                   match.group(3)) if match else None
            skipping = key in dropped
            if not skipping:
                lines.append(line)
        if lines and not all(line.startswith("#") for line in lines):
            kept_sections.append("\n".join(lines))
    return "\n\n".join(kept_sections) + "\n"


def _unchosen_optimizer_defaults(graph, files, gin_bindings):
    """The binding keys of gin's current configuration to leave out: the settings of a Keras
    optimizer that no binding refers to, set only by included files (``_included_only``)."""
    text = gin.config_str()
    referenced = {name.rsplit(".", 1)[-1] for _, name in _REFERENCE.findall(text)}
    unchosen = {key for key in _bound_keys(text)
                if key[1] in registry.OPTIMIZER_NAMES and key[1] not in referenced}
    if not unchosen:
        return set(), text
    return unchosen & _included_only(graph, files, gin_bindings), text


def drop_unchosen_optimizer_defaults(graph, files, gin_bindings):
    """Leaves out of the configuration the settings of a Keras optimizer that no binding refers
    to (so the run never builds it) and that only an included file sets: ``gin/base.gin``'s
    ``keras.optimizers.SGD.learning_rate`` and ``momentum`` in an experiment that switches
    ``train.optimizer`` to Adam (``char_lm.gin``). Kept, they would be reported as bindings the
    run never used, for every such shipped experiment. The same parameter set by a file given
    with --gin_file or by a binding (command line, sweep variant, study run) is the user's and is
    kept, so the run still reports it when it is not used.

    gin has no public way to unbind: the configuration is parsed again from its own text
    (``gin.config_str()``, what a run's config.gin holds and --resume parses) without those
    lines. Returns False (the configuration as parsed) when there is nothing to leave out or
    when that text does not parse (the files and bindings are then parsed again, as they were)."""
    dropped, text = _unchosen_optimizer_defaults(graph, files, gin_bindings)
    if not dropped:
        return False
    ordered = _dict_values(text)
    gin.clear_config()
    try:
        gin.parse_config(_without(text, dropped))
        with gin.unlock_config():
            for key, value in ordered.items():
                gin.bind_parameter(key, value)
    except Exception:  # noqa: BLE001  (a value gin prints but cannot read back: keep it all)
        gin.clear_config()
        _parse_sources(files, gin_bindings)
        return False
    return True


def _dict_values(config_text):
    """{binding key: value} of each binding in the parsed configuration whose value is a dict.
    gin prints a dict's keys sorted, so a configuration parsed again from its own text would
    lose their order (``sweep.variants``: the variants would run and be tabled alphabetically,
    not in the order the file declares them); these are bound back as they were parsed."""
    values = {}
    for line in config_text.splitlines():
        match = _BINDING_LINE.match(line)  # (a long value continues on the next lines)
        macro = None if match else _MACRO_LINE.match(line)  # VARIANTS = {...}
        if match:
            key = f"{match.group(1)}{match.group(2)}.{match.group(3)}"
        elif macro:
            key = f"%{macro.group(1)}"
        else:
            continue
        try:
            value = gin.query_parameter(key)
        except (ValueError, KeyError):
            continue
        if isinstance(value, dict):
            values[key] = value
    return values


_BINDING_LINE = re.compile(r"^((?:[\w.]+/)*)([\w.]+)\.(\w+) = (.*)$")
_MACRO_LINE = re.compile(r"^([A-Za-z_]\w*) = ")
_REFERENCE = re.compile(r"@((?:[\w.]+/)*)([\w.]+)")


def check_self_references():
    """A ConfigError for a binding whose value refers to the configurable it binds
    (``keras.optimizers.SGD.learning_rate = @keras.optimizers.SGD()``): building it would
    recurse until Python's limit, after the run directory exists. Read from the parsed
    configuration's text (``gin.config_str``: one binding per line, continued lines indented)."""
    for line in gin.config_str().splitlines():
        match = _BINDING_LINE.match(line)
        if not match:
            continue
        scope, selector, parameter, value = match.groups()
        for ref_scope, referenced in _REFERENCE.findall(value):
            # gin writes the shortest unambiguous name of each: one ends the other.
            same = referenced == selector or referenced.endswith("." + selector) or \
                selector.endswith("." + referenced)
            if same and ref_scope in ("", scope):
                name = max(referenced, selector, key=len)
                raise ConfigError(
                    f"{scope}{selector}.{parameter} = {value.strip()} refers to {name} "
                    f"itself: building {name} would need {name} first, for ever. Bind "
                    f"{parameter} to a value (e.g. a number) or to another configurable.")


def check_required(function, name):
    """A ConfigError naming each ``gin.REQUIRED`` parameter of the configurable ``function``
    (bound as ``name``) that no binding sets (gin's own error is a RuntimeError raised when the
    run starts)."""
    missing = [p for p, param in inspect.signature(function).parameters.items()
               if param.default is gin.REQUIRED and query(f"{name}.{p}", _UNSET) is _UNSET]
    if missing:
        shown = ", ".join(f"{name}.{p}" for p in missing)
        raise ConfigError(f"{shown} {'is' if len(missing) == 1 else 'are'} not set: bind "
                          f"{'it' if len(missing) == 1 else 'them'} in a gin file or with "
                          f"--gin_bindings='{name}.{missing[0]} = ...'.")


_UNSET = object()


def _parse_one(parse_fn, source, where):
    try:
        parse_fn(source)
    except Exception as error:  # gin raises many types; each is explained by ``explain``
        explained = explain(error, where)
        token = _token_error_line(error)
        if token is not None:
            explained = ConfigError(
                f"gin syntax error {where}: a bracket or quote opened and never closed before "
                f"line {token} ({error.args[0]}).")
        elif where not in str(explained) and not isinstance(error, OSError):
            explained = ConfigError(f"{explained} ({where})")
        raise explained from error


def _token_error_line(error):
    """The line of a tokenizer error (unclosed bracket at the end of a file), else None."""
    if type(error).__name__ != "TokenError" or len(error.args) < 2:
        return None
    position = error.args[1]
    return position[0] if isinstance(position, tuple) and position else None
