"""The ``batchlab`` console script (``pip install .``): ``python main.py`` from anywhere.

It runs the ``main.py`` of the checkout, or of the installed package (where it is kept as package
data beside gin/ and data/, ``experiments.common.paths.REPO_ROOT``), exactly as ``python main.py``
would: same flags, same exit status. Workers that ``--jobs`` starts run that same file.
"""

import os
import runpy
import sys

from experiments.common import paths


def main_script():
    """The path of the ``main.py`` that ``batchlab`` runs."""
    return os.path.join(paths.REPO_ROOT, "main.py")


def main():
    script = main_script()
    if not os.path.isfile(script):
        sys.exit(f"batchlab: {script} is missing: reinstall batchlab (pip install <checkout>).")
    sys.argv[0] = "batchlab"
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
