"""Gin configuration from files and bindings, with errors that say what and where.

Everything that can be wrong with the configuration is found here, before any run directory is
made: missing gin files, syntax errors, unknown configurables or parameters (with the nearest valid
names). ``registry`` is imported first: every configurable exists before any file is parsed.
"""

import difflib
import importlib.util  # noqa: F401  (gin reports missing files through importlib.util)
import inspect
import os
import re

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
    if isinstance(error, SyntaxError) or type(error).__name__ == "TokenError":
        return ConfigError(f"gin syntax error: {text}")
    if isinstance(error, OSError):
        return ConfigError(f"Missing gin file: {text}")
    return ConfigError(f"{type(error).__name__}: {text}")


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
    gin.add_config_file_search_path(REPO_ROOT)
    # File by file, then binding by binding (what gin.parse_config_files_and_bindings does), so
    # that an error can say which file or command-line binding it is in.
    for path in files:
        _parse_one(gin.parse_config_file, path, f"in {path}")
    for binding in gin_bindings:
        _parse_one(gin.parse_config, binding, f"in the command-line binding {binding!r}")
    _parse_one(lambda _: gin.finalize(), None, "when finalizing the configuration")
    return files


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
