"""Where files named in bindings are found: as given, next to the gin files, or in the repository.

A path in a gin file (``digits.path = 'data/digits.npz'``) is looked up, in order: as given
(absolute, or relative to the working directory); relative to the directory of each gin file the
run parsed, the last parsed first (so an experiment kept outside the repository can name files
beside it); relative to the repository root (so shipped experiments run from any directory).
"""

import glob
import os

_EXPERIMENTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The root holding main.py, gin/ and data/: the checkout (also under ``pip install -e .``), or,
# in an installed package, their copies in experiments/_shipped (pyproject.toml).
SHIPPED_ROOT = os.path.join(_EXPERIMENTS, "_shipped")
REPO_ROOT = SHIPPED_ROOT if os.path.isdir(SHIPPED_ROOT) else os.path.dirname(_EXPERIMENTS)

_gin_dirs = []


def set_gin_files(gin_files):
    """Records the gin files of the run being configured (their directories are searched)."""
    _gin_dirs[:] = []
    for path in gin_files:
        directory = os.path.dirname(os.path.abspath(path))
        if directory not in _gin_dirs:
            _gin_dirs.insert(0, directory)


def search_dirs():
    """Directories searched for a relative path after the working directory."""
    return [*_gin_dirs, REPO_ROOT]


def resolve(path, what="Data file"):
    """The existing file or directory ``path`` names; FileNotFoundError listing where it looked."""
    path = os.path.expanduser(str(path))
    if os.path.exists(path):
        return path
    if not os.path.isabs(path):
        for directory in search_dirs():
            candidate = os.path.join(directory, path)
            if os.path.exists(candidate):
                return candidate
    looked = ", ".join(search_dirs())
    raise FileNotFoundError(f"{what} not found: {path!r} (also looked in {looked}).")


def glob_files(pattern):
    """Sorted matches of a glob pattern, tried in the same places as ``resolve``."""
    pattern = os.path.expanduser(str(pattern))
    matches = sorted(glob.glob(pattern))
    if matches or os.path.isabs(pattern):
        return matches
    for directory in search_dirs():
        matches = sorted(glob.glob(os.path.join(directory, pattern)))
        if matches:
            return matches
    return []
