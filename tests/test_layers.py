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

#: KNOWN EXCEPTIONS, to be dropped by issue 23 item 1 (one seam per model source), which removes the science's
#: imports of the demonstration models. Each is (importing module, imported module).
KNOWN_DEMO_MODEL_IMPORTS = {
    ("valuebias.lm_scoring", "valuebias.demo_models.language_models"),
    ("valuebias.model_content", "valuebias.demo_models.tiny_models"),
    ("valuebias.rm_scoring", "valuebias.demo_models.reward_models"),
}


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
                elif (within(module, DEMO_MODELS) and not within(name, DEMO_MODELS)
                      and (name, module) not in KNOWN_DEMO_MODEL_IMPORTS):
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
    # the known exceptions still exist (drop each one its import is gone)
    imports = {(name, module) for name, path in found.items() for module, _ in imported(name, path)}
    assert KNOWN_DEMO_MODEL_IMPORTS <= imports


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
