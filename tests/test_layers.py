"""The layers of the code, read from the source (``ast``): no upward import and no code in a package's
``__init__``.

Upward, from below to above: the science and its helpers (``valuebias/``) < ``resources/`` < ``assets/`` <
``orchestration/``. Resources and assets never import the orchestration; the science imports none of the Dagster
layer, and not the demonstration models (``valuebias.demo_models`` builds models; the science works on any
model). An ``__init__.py`` holds a docstring and re-exports only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The import packages and their folders (pyproject.toml's package-dir).
FOLDERS = {"valuebias.assets": ROOT / "assets", "valuebias.resources": ROOT / "resources",
           "valuebias.orchestration": ROOT / "orchestration", "valuebias": ROOT / "valuebias"}
DAGSTER_LAYER = ("valuebias.assets", "valuebias.resources", "valuebias.orchestration")
DEMO_MODELS = "valuebias.demo_models"

#: The demonstration models are built through their model source only (valuebias.model_sources.demo).
DEMO_MODEL_BUILDERS = ("valuebias.demo_models", "valuebias.model_sources")


def modules() -> dict[str, Path]:
    """{module name: file} of every module of the product."""
    found = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if package == "valuebias" and parts[0] in ("assets", "resources", "orchestration"):
                continue  # not there: those folders are at the top
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imported(name: str, path: Path) -> list[tuple[str, int]]:
    """(module imported, line) for every import in the file, also inside functions; relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.append((module, node.lineno))
            # `from valuebias import assets` imports the module valuebias.assets
            found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names
                      if f"{module}.{alias.name}" in FOLDERS]
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def upward_imports(found: dict[str, Path]) -> list[str]:
    problems = []
    for name, path in found.items():
        for module, line in imported(name, path):
            where = f"{path.relative_to(ROOT)}:{line}: {name} imports {module}"
            if any(within(name, layer) for layer in ("valuebias.assets", "valuebias.resources")):
                if within(module, "valuebias.orchestration"):
                    problems.append(f"{where} (assets and resources never import the orchestration)")
            elif not any(within(name, layer) for layer in DAGSTER_LAYER):
                if any(within(module, layer) for layer in DAGSTER_LAYER):
                    problems.append(f"{where} (the science imports none of the Dagster layer)")
                elif within(module, DEMO_MODELS) and not any(within(name, p) for p in DEMO_MODEL_BUILDERS):
                    problems.append(f"{where} (the science does not import the demonstration models)")
    return problems


def code_in_init(found: dict[str, Path]) -> list[str]:
    problems = []
    for name, path in found.items():
        if path.name != "__init__.py":
            continue
        body = ast.parse(path.read_text()).body
        for index, node in enumerate(body):
            docstring = index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            dunder_all = (isinstance(node, ast.Assign) and len(node.targets) == 1
                          and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "__all__")
            if not (docstring or dunder_all or isinstance(node, (ast.Import, ast.ImportFrom))):
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: {type(node).__name__} in a package's "
                                "__init__ (only a docstring and re-exports belong there)")
    return problems


def test_no_upward_import():
    found = modules()
    assert len(found) > 60 and "valuebias.assets.catalog" in found and "valuebias.scoring_worker" in found
    assert upward_imports(found) == []


def import_circles(found: dict[str, Path]) -> list[list[str]]:
    """The import circles among the product's modules (strongly connected components of more than one module
    of the import graph, imports inside functions included), each sorted."""
    graph = {name: set() for name in found}
    for name, path in found.items():
        targets = [module for module, _ in imported(name, path)]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):  # `from package import module`
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets += [f"{node.module}.{alias.name}" for alias in node.names]
        for module in targets:
            while module and module not in found:  # `from a.b import c` of a name in module a.b
                module = module.rpartition(".")[0]
            if module and module != name:
                graph[name].add(module)
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return sorted(circles)


def test_no_import_circle():
    assert import_circles(modules()) == []


def test_no_code_in_package_init_files():
    assert code_in_init(modules()) == []


def test_the_checks_find_what_they_look_for(tmp_path, monkeypatch):
    """Planted: an asset and a resource that import the orchestration (one inside a function), a science module
    that imports an asset module relatively and one that imports the demonstration models, and an __init__ with
    a function in it."""
    tree = {"assets/planted.py": "import dagster\n\ndef f():\n    from valuebias.orchestration.plan import x\n",
            "resources/planted.py": "from valuebias.orchestration import cli\n",
            "valuebias/planted.py": "from .assets import tables\nfrom valuebias.demo_models import tiny_models\n",
            "valuebias/sub/__init__.py": '"""Doc."""\nfrom valuebias.sub.x import y\n__all__ = ["y"]\n\n'
                                         "def helper():\n    return 1\n",
            "orchestration/planted.py": "from valuebias.assets import tables\n"}
    for relative, text in tree.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    folders = {"valuebias.assets": tmp_path / "assets", "valuebias.resources": tmp_path / "resources",
               "valuebias.orchestration": tmp_path / "orchestration", "valuebias": tmp_path / "valuebias"}
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "FOLDERS", folders)
    found = modules()
    assert upward_imports(found) == [
        "assets/planted.py:4: valuebias.assets.planted imports valuebias.orchestration.plan (assets and resources "
        "never import the orchestration)",
        "resources/planted.py:1: valuebias.resources.planted imports valuebias.orchestration (assets and resources "
        "never import the orchestration)",
        "valuebias/planted.py:1: valuebias.planted imports valuebias.assets (the science imports none of the "
        "Dagster layer)",
        "valuebias/planted.py:2: valuebias.planted imports valuebias.demo_models (the science does not import the "
        "demonstration models)",
    ]
    assert code_in_init(found) == [
        "valuebias/sub/__init__.py:5: FunctionDef in a package's __init__ (only a docstring and re-exports belong "
        "there)"]
    # a circle, through an import inside a function
    (tmp_path / "valuebias" / "ring_a.py").write_text("from valuebias.ring_b import b\n")
    (tmp_path / "valuebias" / "ring_b.py").write_text("def b():\n    from valuebias import ring_a\n")
    assert import_circles(modules()) == [["valuebias.ring_a", "valuebias.ring_b"]]
