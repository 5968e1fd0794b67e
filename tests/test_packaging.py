"""batchlab as a package: what pyproject.toml ships, and the ``batchlab`` console script of an
installed wheel training a user's gin file kept outside the repository."""

import glob
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject():
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as handle:
        return tomllib.load(handle)


def _packages_on_disk():
    found = []
    for top in ("experiments", "callbacks"):
        for init in glob.glob(os.path.join(REPO_ROOT, top, "**", "__init__.py"), recursive=True):
            found.append(os.path.relpath(os.path.dirname(init), REPO_ROOT).replace(os.sep, "."))
    return sorted(found)


def _shipped_files():
    """Every file of gin/ and data/, relative to the repository root."""
    out = []
    for top in ("gin", "data"):
        for path in glob.glob(os.path.join(REPO_ROOT, top, "**", "*"), recursive=True):
            if os.path.isfile(path) and "__pycache__" not in path:
                out.append(os.path.relpath(path, REPO_ROOT).replace(os.sep, "/"))
    return sorted(out)


def test_pyproject_names_every_package_and_dependency():
    config = _pyproject()
    packages = config["tool"]["setuptools"]["packages"]
    missing = sorted(set(_packages_on_disk()) - set(packages))
    assert not missing, f"add these packages to pyproject.toml [tool.setuptools] packages: {missing}"
    assert config["project"]["scripts"]["batchlab"] == "experiments.launch.cli:main"
    names = {d.split(";")[0].split(">")[0].split("=")[0].strip()
             for d in config["project"]["dependencies"]}
    with open(os.path.join(REPO_ROOT, "requirements.txt")) as handle:
        pinned = {line.split(";")[0].split("=")[0].strip() for line in handle
                  if line.strip() and not line.startswith("#")}
    assert pinned <= names | {"tensorflow-cpu", "tensorflow"}, pinned - names


def _copy_checkout(destination):
    """The checkout as a fresh clone would have it (no virtual environment, runs or builds)."""
    ignore = shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info",
                                    "__pycache__", ".pytest_cache", "bench_out")
    shutil.copytree(REPO_ROOT, destination, ignore=ignore)
    return destination


@pytest.mark.slow
def test_installed_wheel_runs_a_user_gin_file_from_any_directory(tmp_path):
    checkout = _copy_checkout(tmp_path / "checkout")
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(checkout)], capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = glob.glob(str(wheels / "batchlab-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    shipped = {f"experiments/_shipped/{path}" for path in _shipped_files()}
    assert shipped <= names, sorted(shipped - names)[:5]
    assert "experiments/_shipped/main.py" in names and "callbacks/gradient_norm.py" in names
    assert not [n for n in names if n.startswith(("tests/", "runs/", "gin/", "data/"))]

    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(target), wheel], capture_output=True, text=True, check=False)
    assert install.returncode == 0, install.stdout + install.stderr

    user = tmp_path / "my_project"
    user.mkdir()
    (user / "mine.gin").write_text(
        "include 'gin/experiments/digits_mlp.gin'\n"
        "train.epochs = 1\ntrain.batch_size = 128\ntrain.verbose = 2\n")
    env = dict(os.environ, PYTHONPATH=str(target), TF_CPP_MIN_LOG_LEVEL="2")
    where = subprocess.run(
        [sys.executable, "-c", "import experiments, callbacks.generalization_gap as g; "
         "from experiments.common import paths; print(experiments.__file__); "
         "print(g.__file__); print(paths.REPO_ROOT)"],
        cwd=user, env=env, capture_output=True, text=True, check=True)
    assert all(line.startswith(str(target)) for line in where.stdout.split()), where.stdout

    script = target / "bin" / "batchlab"
    run = subprocess.run([str(script), "--gin_file=mine.gin", "--output_dir=out"], cwd=user,
                         env=env, capture_output=True, text=True, check=False, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (result,) = glob.glob(str(user / "out" / "mine" / "*" / "result.json"))
    with open(result) as handle:
        result = json.load(handle)
    assert result["epochs"] == 1
    assert not os.path.exists(os.path.join(target, "experiments", "_shipped", "runs"))
