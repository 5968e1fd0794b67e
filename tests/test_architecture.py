"""The layers of ``experiments/`` import only downwards, and callbacks use only public contracts.

    launch > run > callbacks > engine | inputs | models | analysis > common

(``engine``, ``inputs``, ``models`` and ``analysis`` are siblings and never import each other;
``callbacks`` import ``common`` and public names of ``engine`` only.) The test walks every import
statement of every module, so a new module that breaks the rule fails here.

Private Keras and TensorFlow API (``keras.src``, ``tensorflow.python``, underscore members of
their objects) is touched only in ``experiments/engine/keras_internals.py``; the last tests walk
every member access and every class that subclasses Keras or TensorFlow to keep it so.
"""

import ast
import glob
import inspect
import os
import re
import textwrap

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


# ------------------------------------------------------------------------------------------------
# Private Keras and TensorFlow API: only ``experiments.engine.keras_internals`` touches it.

ADAPTER = "experiments.engine.keras_internals"
PRIVATE_PACKAGES = ("keras.src", "tensorflow.python")
PRIVATE_CHAINS = {("keras", "src"), ("tf", "python"), ("tensorflow", "python")}
ATTRIBUTE_FUNCTIONS = ("getattr", "hasattr", "setattr", "delattr")


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_self(node):
    """``self``, ``cls`` or ``super()``: an object whose members are its class's own."""
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "super")


def _member_accesses(tree):
    """(node, object, member name) of every ``obj.name`` and ``getattr(obj, "name")``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            yield node, node.value, node.attr
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ATTRIBUTE_FUNCTIONS and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            yield node, node.args[0], node.args[1].value


def _defined_private_names(tree):
    """Private names a module defines itself: functions, methods, classes, class attributes and
    the members it assigns to ``self``/``cls``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                and _is_self(node.value):
            names.add(node.attr)
    for node, obj, name in _member_accesses(tree):
        if isinstance(node, ast.Call) and node.func.id == "setattr" and _is_self(obj):
            names.add(name)
    return {name for name in names if _is_private(name)}


def _module_level_objects(tree):
    """The module's own top-level objects: its functions and classes, and names bound to an
    instance of one of its classes (``WRITERS = SummaryWriters(...)``)."""
    names = {node.name for node in tree.body
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    for node in tree.body:
        if (isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id in classes):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _private_imports(tree):
    """(line, text) of every import of, or attribute path into, ``keras.src``/``tf.python``."""
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and (node.value.id, node.attr) in PRIVATE_CHAINS):
            yield node.lineno, ast.unparse(node)
        for module in modules:
            if any(module == p or module.startswith(p + ".") for p in PRIVATE_PACKAGES):
                yield node.lineno, f"import {module}"
                break


def _resolve_external(expression):
    """The Keras or TensorFlow class a dotted base-class expression names, else None."""
    parts = []
    while isinstance(expression, ast.Attribute):
        parts.insert(0, expression.attr)
        expression = expression.value
    if not isinstance(expression, ast.Name) or expression.id not in ("keras", "tf", "tensorflow"):
        return None
    import keras  # noqa: PLC0415 (only for classes that subclass Keras or TensorFlow)
    import tensorflow as tf  # noqa: PLC0415

    target = keras if expression.id == "keras" else tf
    for part in parts:
        target = getattr(target, part, None)
    return target if isinstance(target, type) else None


def _external_private_members(cls):
    """The private members of ``cls`` and its bases: attributes, methods and what their code
    assigns to ``self`` (instance state such as TensorBoard's ``_should_trace``)."""
    members = set()
    for klass in cls.__mro__:
        members.update(name for name in vars(klass) if _is_private(name))
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        members.update(n.attr for n in ast.walk(ast.parse(textwrap.dedent(source)))
                       if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
                       and _is_self(n.value) and _is_private(n.attr))
    return members


def _class_index(trees):
    """Class name -> base-class expressions, over every module (bases named by their last part)."""
    index = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                index.setdefault(node.name, []).extend(node.bases)
    return index


def _inherited_private_members(bases, index, seen=None):
    """The private members that a class with these base-class expressions inherits from Keras or
    TensorFlow, through any of our own classes in between."""
    seen = set() if seen is None else seen
    members = set()
    for base in bases:
        external = _resolve_external(base)
        if external is not None:
            members |= _external_private_members(external)
            continue
        name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", None)
        if name in index and name not in seen:
            seen.add(name)
            members |= _inherited_private_members(index[name], index, seen)
    return members


def private_touches(tree, own_names, index):
    """(line, text) of every private Keras/TF touch of one module: imports of ``keras.src`` or
    ``tensorflow.python``; private members of objects that are not the module's own (``self``,
    ``cls``, ``super()``, its module-level objects, members it defines); on ``self``, members
    that no batchlab code defines or that Keras/TF base classes define (also by overriding)."""
    found = set(_private_imports(tree))
    module_objects = _module_level_objects(tree)
    defined_here = _defined_private_names(tree)
    for node, obj, name in _member_accesses(tree):
        if not _is_private(name):
            continue
        if _is_self(obj):
            if name not in own_names:
                found.add((node.lineno, ast.unparse(node)))
        elif not (isinstance(obj, ast.Name) and obj.id in module_objects) \
                and name not in defined_here:
            found.add((node.lineno, ast.unparse(node)))
    for class_node in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        inherited = _inherited_private_members(class_node.bases, index)
        if not inherited:
            continue
        for node in ast.walk(class_node):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and node.name in inherited and node in class_node.body:
                found.add((node.lineno, f"def {node.name} (overrides {class_node.name}'s base)"))
        for node, obj, name in _member_accesses(class_node):
            if _is_self(obj) and name in inherited:
                found.add((node.lineno, ast.unparse(node)))
    return sorted(found)


def _parsed(path):
    return ast.parse(open(path, encoding="utf-8").read(), path)


def test_only_the_adapter_touches_private_keras_and_tensorflow():
    """Every private Keras/TF member batchlab uses is in ``engine.keras_internals``, whose
    docstring says why; no other module imports ``keras.src``/``tensorflow.python`` or reads,
    writes or overrides a private member of an object that is not its own."""
    trees = {module: _parsed(path) for module, path in MODULES}
    own_names = set().union(*(_defined_private_names(tree) for module, tree in trees.items()
                              if module != ADAPTER))
    index = _class_index(trees.values())
    offenders = [f"{os.path.relpath(path, REPO)}:{line}: {text}"
                 for module, path in MODULES if module != ADAPTER
                 for line, text in private_touches(trees[module], own_names, index)]
    assert not offenders, "private Keras/TF API outside experiments/engine/keras_internals.py " \
                          "(use or extend the adapter):\n" + "\n".join(offenders)


def test_the_private_touch_finder_sees_each_kind_of_touch():
    """The check above could fail: each kind of touch is found, and a class's own members are
    not."""
    tree = ast.parse(textwrap.dedent("""
        import keras
        from keras.src import backend
        import tensorflow as tf

        class Board(keras.callbacks.TensorBoard):
            def __init__(self):
                super().__init__()
                self._mine = 1

            def _log_epoch_metrics(self, epoch, logs):
                return self._mine, self._should_trace

        def layers(model):
            tf.python.framework
            return model._flatten_layers(include_self=False), getattr(model, "_compile_loss")

        BOARD = Board()
        BOARD._mine, Board()._mine
        """))
    own = _defined_private_names(tree)
    found = [text for _, text in private_touches(tree, own, _class_index([tree]))]
    assert found == ["import keras.src", "def _log_epoch_metrics (overrides Board's base)",
                     "self._should_trace", "tf.python",
                     "getattr(model, '_compile_loss')", "model._flatten_layers"], found
