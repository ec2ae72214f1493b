"""Which build runs: pure Python, or the sans-IO core compiled with mypyc (setup.py).

``make test-compiled`` runs the whole suite with ``M2M_EXPECT_COMPILED=1``: a
silent fall-back to the pure package (say, the checkout shadowing the
installed build) fails here instead of passing as a pure run.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import m2mproto
from m2mproto import cbor, connection, frames

ROOT = Path(__file__).resolve().parent.parent


def _compiled_modules() -> list[str]:
    """COMPILED_MODULES of setup.py, read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(target, ast.Name) and target.id == "COMPILED_MODULES":
            value = ast.literal_eval(node.value)  # type: ignore[union-attr]
            assert isinstance(value, list)
            return value
    raise AssertionError("setup.py has no COMPILED_MODULES")


def test_compiled_flag_matches_the_modules() -> None:
    native = [not m.__file__.endswith(".py") for m in (cbor, connection, frames) if m.__file__]
    assert native == [m2mproto.COMPILED] * 3


def test_expected_build() -> None:
    expected = os.environ.get("M2M_EXPECT_COMPILED") == "1"
    assert m2mproto.COMPILED is expected, (
        f"M2M_EXPECT_COMPILED={int(expected)} but {m2mproto.__file__} is "
        f"{'compiled' if m2mproto.COMPILED else 'pure Python'}"
    )
    if expected:  # the installed build, not the checkout
        assert Path(m2mproto.__file__).resolve().parent != ROOT / "m2mproto"


def test_compiled_modules_exist_and_exclude_the_transport() -> None:
    modules = _compiled_modules()
    assert len(modules) == len(set(modules)) >= 20
    for path in modules:
        assert (ROOT / path).is_file(), path
        assert not path.startswith(("m2mproto/transport/", "m2mproto/cli/")), path


def test_every_listed_module_is_native_in_the_compiled_build() -> None:
    import importlib

    for path in _compiled_modules():
        name = path.removesuffix(".py").replace("/", ".")
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert module.__file__.endswith(".py") is not m2mproto.COMPILED, name


def test_version_names_the_build() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "m2mproto", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    build = "compiled" if m2mproto.COMPILED else "pure"
    assert out.stdout.strip() == f"m2m {m2mproto.__version__} ({build})", out


def test_ir_paths_run_on_this_build() -> None:
    """The callgrind driver of bench/README.md's pure-vs-compiled table runs every path."""
    for path in ("stream256", "message256", "stream64k", "roundtrip", "handshake"):
        done = subprocess.run(
            [sys.executable, "-m", "bench.ir_paths", path, "2"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (path, done.stderr[-2000:])
