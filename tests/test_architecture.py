"""The layers of ``experiments/`` import only downwards, and callbacks use only public contracts.

    launch > run > callbacks > engine | inputs | models | analysis > common

(``engine``, ``inputs``, ``models`` and ``analysis`` are siblings and never import each other;
``callbacks`` import ``common`` and public names of ``engine`` only.) The test walks every import
statement of every module, so a new module that breaks the rule fails here.
"""

import ast
import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANK = {"common": 0, "engine": 1, "inputs": 1, "models": 1, "analysis": 1, "callbacks": 2,
        "run": 3, "launch": 4}
CALLBACKS_MAY_IMPORT = {"common", "engine", "callbacks"}


def _layer(module):
    """'experiments.engine.x' -> 'engine'; 'callbacks.base' -> 'callbacks'; others None."""
    parts = module.split(".")
    if parts[0] == "callbacks":
        return "callbacks"
    if parts[0] == "experiments" and len(parts) > 1:
        return parts[1]
    return None


def _modules():
    for package in ("experiments", "callbacks"):
        for path in sorted(glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True)):
            relative = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
            yield relative.removesuffix(".__init__"), path


def _imports(path):
    """(imported module, [imported names]) of every import statement of a file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [alias.name for alias in node.names]


MODULES = list(_modules())


def test_every_module_sits_in_a_known_layer():
    for module, _ in MODULES:
        if module in ("experiments", "callbacks"):
            continue
        assert _layer(module) in RANK, f"{module} is in no layer of experiments/__init__.py"


@pytest.mark.parametrize("module, path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_go_only_downwards(module, path):
    own = _layer(module)
    for imported, names in _imports(path):
        target = _layer(imported)
        if imported == "experiments" and names:  # from experiments import launch
            target = names[0] if len(names) == 1 else None
        if target is None or target == own or own is None:
            continue
        assert RANK[target] < RANK[own], f"{module} imports {imported} ({target} is not below " \
                                         f"{own})"
        if own == "callbacks":
            assert target in CALLBACKS_MAY_IMPORT, f"{module} imports {imported}"


@pytest.mark.parametrize("module, path", [(m, p) for m, p in MODULES if _layer(m) == "callbacks"],
                         ids=[m for m, _ in MODULES if _layer(m) == "callbacks"])
def test_callbacks_use_only_public_names(module, path):
    for imported, names in _imports(path):
        if _layer(imported) == "engine":
            assert not any(part.startswith("_") for part in imported.split(".")), imported
            assert not [n for n in names if n.startswith("_")], (module, imported, names)
    source = open(path, encoding="utf-8").read()
    private = re.findall(r"model\._[a-z]\w*", source)
    assert not private, f"{module} reads or writes private model state: {sorted(set(private))}"


def test_lower_layers_read_no_flags_and_no_gin_globals():
    """Nothing below ``launch`` reads absl flags or queries gin: configurables receive values."""
    for module, path in MODULES:
        if _layer(module) in ("launch", None):
            continue
        source = open(path, encoding="utf-8").read()
        assert "absl import flags" not in source and "FLAGS" not in source, module
        assert "gin.query_parameter" not in source, module


def test_the_walker_sees_a_violation(tmp_path):
    """The checks above could fail: a module of a lower layer importing a higher one is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("from experiments.run import runner\nimport callbacks.base\n")
    found = {_layer(m) for m, _ in _imports(str(bad))}
    assert found == {"run", "callbacks"}
    assert RANK["run"] > RANK["engine"]
