"""Commands that need something beyond the library: one line and the user-mistake status.

The missing pieces are made unimportable for real in a subprocess (a meta-path
finder that refuses the named top-level modules, as an absent distribution
would); nothing of m2mproto itself is replaced.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import m2mproto
from m2mproto.cli import EXIT_CODES
from m2mproto.cli.bench import find_checkout

ROOT = Path(__file__).resolve().parents[1]

#: Runs ``m2m ARGS`` with the top-level modules in argv[1] (comma-separated) unimportable.
BLOCKER = textwrap.dedent(
    """
    import sys

    BLOCKED = set(sys.argv[1].split(",")) - {""}

    class Block:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block)
    from m2mproto.cli import main

    raise SystemExit(main(sys.argv[2:]))
    """
)


def m2m(blocked: str, *args: str, cwd: Path | None = None, pythonpath: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = None
    if pythonpath is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, blocked, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


@pytest.mark.parametrize(
    "args",
    [("interop", "run", "-q"), ("interop",), ("interop", "--help"), ("interop", "-q", "--list")],
)
def test_interop_without_the_suite_says_how_to_install(args: tuple[str, ...]) -> None:
    r = m2m("m2m_interop", *args)
    assert r.returncode == EXIT_CODES["local"] == 3, r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("m2m: ")
    assert "pip install ./interop" in lines[0] and "m2mproto-interop" in lines[0]


def test_other_commands_work_without_the_suite(tmp_path: Path) -> None:
    r = m2m("m2m_interop", "keygen", "--out", str(tmp_path / "k.key"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("m2m1")
    r = m2m("m2m_interop", "--help")
    assert r.returncode == 0 and "interop" in r.stdout


def test_interop_with_the_suite_runs() -> None:
    pytest.importorskip("m2m_interop")
    r = m2m("", "interop", "run", "-q", "--case", "2.1/1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS 1" in r.stdout


# -- m2m bench: only from a checkout, without touching sys.path ----------------------------


#: Whether the m2mproto under test is this checkout's (editable) or an installed copy (sdist).
FROM_CHECKOUT = Path(m2mproto.__file__).resolve().parent == ROOT / "m2mproto"


def test_find_checkout() -> None:
    assert find_checkout() == (ROOT if FROM_CHECKOUT else None)
    assert find_checkout(ROOT / "m2mproto") == ROOT
    assert find_checkout(ROOT / "bench" / "m2mproto") is None


def test_bench_outside_a_checkout_says_so(tmp_path: Path) -> None:
    # An installed copy of the package (site-packages layout: no bench/ beside it).
    site = tmp_path / "site"
    shutil.copytree(Path(m2mproto.__file__).parent, site / "m2mproto",
                    ignore=shutil.ignore_patterns("__pycache__"))
    r = m2m("", "bench", "--quick", cwd=tmp_path, pythonpath=site)
    assert r.returncode == EXIT_CODES["local"], r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "source checkout" in lines[0] and str(site) in lines[0]


@pytest.mark.skipif(not FROM_CHECKOUT, reason="m2mproto is installed, not this checkout's")
def test_bench_from_the_checkout_leaves_sys_path_alone(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        from m2mproto.cli import main

        before = list(sys.path)
        try:
            main(["bench", "--help"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        assert sys.path == before, "sys.path changed"
        print("bench module:", sys.modules["bench"].__file__)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "usage: m2m bench" in r.stdout  # named as the user called it
    assert f"bench module: {ROOT / 'bench' / '__init__.py'}" in r.stdout


# -- --backend trio without trio -----------------------------------------------------------

TRIO_HINT = "trio is not installed: pip install 'm2mproto[trio]'"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    from m2mproto import Identity

    root, server = Identity.generate(), Identity.generate()
    server.save(tmp_path / "server.key")
    return {"root": root.agent_id.text, "server": str(tmp_path / "server.key")}


def _argv(command: str, keys: dict[str, str]) -> list[str]:
    if command == "serve":
        return ["serve", "--key", keys["server"], "--listen", "127.0.0.1:0",
                "--root", keys["root"], "--backend", "trio"]  # fmt: skip
    if command == "request":
        return ["request", "--key", keys["server"], "--connect", "127.0.0.1:9",
                "--backend", "trio", "echo", "{}"]  # fmt: skip
    return ["demo", "--backend", "trio"]


@pytest.mark.parametrize("command", ["serve", "demo", "request"])
def test_backend_trio_without_trio_is_one_line(command: str, keys: dict[str, str],
                                               tmp_path: Path) -> None:
    r = m2m("trio", *_argv(command, keys), cwd=tmp_path)
    assert r.returncode == EXIT_CODES["local"], r.stdout + r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0] == f"m2m: INVALID_ARGUMENT: --backend trio: {TRIO_HINT}"


@pytest.mark.slow
def test_backend_asyncio_does_not_need_trio(keys: dict[str, str], tmp_path: Path) -> None:
    """With trio unimportable, the default backend still runs a whole demo."""
    r = m2m("trio", "demo", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "All steps behaved as expected" in r.stdout


def test_backend_trio_with_trio_starts(keys: dict[str, str], tmp_path: Path) -> None:
    """The check lets an installed trio through: the reference peer starts on trio."""
    pytest.importorskip("trio")
    proc = subprocess.Popen([sys.executable, "-m", "m2mproto", *_argv("serve", keys), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
    finally:
        proc.terminate()
        proc.wait(timeout=30)
