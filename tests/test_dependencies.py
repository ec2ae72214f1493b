"""The library imports at module level only the standard library and its declared runtime
dependencies, so a wheel installed without extras imports cleanly (optional packages such as
trio or nats-py are imported inside the functions that need them)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "m2mproto"


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for requirement in project["dependencies"]:
        name = requirement.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        names.add(name.replace("-", "_").lower())
    return names


def _module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in tree.body:  # module level only (also inside if/try at module level)
        for sub in (
            ast.walk(node)
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            else ()
        ):
            if isinstance(sub, ast.Import):
                found.update(alias.name.split(".")[0] for alias in sub.names)
            elif isinstance(sub, ast.ImportFrom) and sub.level == 0 and sub.module:
                found.add(sub.module.split(".")[0])
    return found


def test_module_level_imports_are_stdlib_or_declared() -> None:
    allowed = set(sys.stdlib_module_names) | _declared() | {"m2mproto"}
    offenders = {
        str(path.relative_to(ROOT)): sorted(_module_level_imports(path) - allowed)
        for path in PACKAGE.rglob("*.py")
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert offenders == {}, offenders


def test_the_checker_sees_an_undeclared_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import sniffio\n\ndef f():\n    import trio\n")
    assert _module_level_imports(bad) == {"sniffio"}


def test_every_module_imports_without_optional_packages() -> None:
    """Import every module with trio, nats and sniffio made unimportable."""
    code = (
        "import importlib, pkgutil, sys\n"
        "for name in ('trio', 'nats', 'sniffio'):\n"
        "    sys.modules[name] = None\n"
        "import m2mproto\n"
        "for info in pkgutil.walk_packages(m2mproto.__path__, 'm2mproto.'):\n"
        "    if not info.name.endswith('__main__'):\n"
        "        importlib.import_module(info.name)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
