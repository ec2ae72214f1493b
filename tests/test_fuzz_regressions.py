"""Replay every fuzz seed and former crash input through the fuzz harnesses (no atheris).

Each ``fuzz/fuzz_<target>.py`` exposes ``check_<target>(data)``, which
returns when the input is accepted or rejected with an m2mproto error and
raises anything else (including its own invariant assertions). Every file in
``fuzz/corpus/<target>/`` and ``fuzz/crashes/<target>/`` is one test case, so
a crash input that ``fuzz/run`` copied into the corpus is a regression test.
Inputs that still crash because of a bug in someone else's module are listed
in ``KNOWN_BUGS`` and run as ``xfail(strict=True)``: when the bug is fixed,
the XPASS fails the run and the entry must be removed.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
TARGETS = ("cbor", "frames", "roundtrip", "records", "handshake", "tokens", "connection")
SLOW_TARGETS = ("transport",)
#: Generous per-input bound (libFuzzer uses 1 s per input; this box may be loaded).
MAX_SECONDS = 10.0

#: (target, file name) -> reason, for crash inputs whose fix belongs to another module.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def _check(target: str) -> Callable[[bytes], None]:
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))
    module = importlib.import_module(f"fuzz_{target}")
    check: Callable[[bytes], None] = getattr(module, f"check_{target}")
    return check


def _cases(targets: tuple[str, ...]) -> list[object]:
    cases: list[object] = []
    for target in targets:
        for sub in ("corpus", "crashes"):
            folder = FUZZ / sub / target
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if not path.is_file():
                    continue
                marks = []
                reason = KNOWN_BUGS.get((target, path.name))
                if reason is not None:
                    marks.append(pytest.mark.xfail(strict=True, reason=reason))
                cases.append(pytest.param(target, path, marks=marks, id=f"{target}/{path.name}"))
    return cases


def _replay(target: str, path: Path) -> None:
    check = _check(target)
    start = time.monotonic()
    check(path.read_bytes())
    assert time.monotonic() - start < MAX_SECONDS, "input took too long (hang)"


@pytest.mark.parametrize(("target", "path"), _cases(TARGETS))
def test_fuzz_input(target: str, path: Path) -> None:
    _replay(target, path)


@pytest.mark.parametrize(("target", "path"), _cases(SLOW_TARGETS))
def test_fuzz_transport_input(target: str, path: Path) -> None:
    _replay(target, path)


def test_every_target_has_seeds() -> None:
    for target in (*TARGETS, *SLOW_TARGETS):
        folder = FUZZ / "corpus" / target
        assert folder.is_dir() and any(folder.iterdir()), f"no seeds for {target}"


def test_invariant_violations_escape() -> None:
    """The harnesses let non-m2mproto exceptions through (they are crashes)."""
    check = _check("records")
    with pytest.raises(TypeError):
        check(None)  # type: ignore[arg-type]
    _check("frames")(bytes.fromhex("820640"))  # an empty PING: accepted, round-trips
    _check("frames")(bytes.fromhex("8206"))  # wrong arity: DecodeError, allowed
