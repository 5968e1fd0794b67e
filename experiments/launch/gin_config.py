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

from experiments.common import paths
from experiments.engine import keras_internals
from experiments.launch import registry  # noqa: F401  (register before parsing)

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


def explain(error):
    """Turns a gin parse error into a ConfigError that names the closest valid names."""
    text = str(error)
    unknown = re.search(r"No configurable matching '([^']+)'", text)
    if unknown:
        name = unknown.group(1)
        return ConfigError(f"Unknown configurable '{name}'.{_suggest(name, _registered_names())}"
                           f"\n{text}")
    parameter = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", text)
    if parameter:
        name, param = parameter.groups()
        try:
            target = gin.get_configurable(name)
            target = target.__init__ if inspect.isclass(target) else target
            params = [p for p in inspect.signature(target).parameters if p != "self"]
        except (KeyError, AttributeError, TypeError, ValueError):
            params = []
        return ConfigError(f"'{name}' has no parameter '{param}'.{_suggest(param, params)} "
                           f"Its parameters: {', '.join(params)}.\n{text}")
    missing = re.search(r"No module named '([^']+)'", text)
    if isinstance(error, ImportError) and missing:
        module = missing.group(1)
        where = re.search(r'In file "([^"]+)", line (\d+)', text)
        place = f" (in {where.group(1)}, line {where.group(2)})" if where else ""
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
    a script's directory (appended to ``sys.path``: it never shadows an installed module)."""
    for path in gin_files:
        directory = os.path.dirname(os.path.abspath(path))
        if directory not in sys.path and os.path.normpath(directory) != os.path.normpath(
                os.path.join(REPO_ROOT, "gin")) and not directory.startswith(
                os.path.join(REPO_ROOT, "gin") + os.sep):
            sys.path.append(directory)


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
    except ValueError:
        return default
    if isinstance(value, gin.config.ConfigurableReference) and \
            value.configurable.name == "macro":
        value = value.scoped_configurable_fn()
    return value


def parse(gin_files, gin_bindings):
    """Clears gin and parses files then bindings, in order; raises ConfigError on any problem."""
    files = [resolve_gin_file(f) for f in gin_files]
    paths.set_gin_files(files)  # data paths are also looked up next to these files
    gin.clear_config()
    if REPO_ROOT not in _SEARCH_PATHS:  # once: gin keeps its search paths across clears
        gin.add_config_file_search_path(REPO_ROOT)
        _SEARCH_PATHS.append(REPO_ROOT)
    _importable_beside(include_graph(files))
    # File by file, then binding by binding (what gin.parse_config_files_and_bindings does), so
    # that an error can say which file or command-line binding it is in.
    for path in files:
        _parse_one(gin.parse_config_file, path, f"in {path}")
    for binding in gin_bindings:
        _parse_one(gin.parse_config, binding, f"in the command-line binding {binding!r}")
    _parse_one(lambda _: gin.finalize(), None, "when finalizing the configuration")
    check_self_references()
    return files


_BINDING_LINE = re.compile(r"^((?:[\w.]+/)*)([\w.]+)\.(\w+) = (.*)$")
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
        explained = explain(error)
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
