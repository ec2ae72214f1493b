"""The in-memory figures on the mypyc-compiled build, measured in its own interpreter.

``python -m bench`` runs in the development venv (pure Python). When the
compiled build exists (``make compiled`` creates ``.venv-compiled``), the
in-memory part (:mod:`bench.inmem_m2m`) also runs under that venv's python in
a subprocess, so the table shows both builds side by side. The subprocess
imports the installed, compiled package (``PYTHONSAFEPATH``; the checkout is
appended to ``sys.path`` only for ``bench``) and refuses to report a pure run
as compiled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .common import Settings, Unavailable

__all__ = ["default_python", "measure"]

ROOT = Path(__file__).resolve().parent.parent

_SCRIPT = """
import json, sys
sys.path.append(sys.argv[1])
import m2mproto
if not m2mproto.COMPILED:
    raise SystemExit(f"{m2mproto.__file__} is not the compiled build")
from bench import inmem_m2m
from bench.common import Settings
args = json.loads(sys.argv[2])
args["levels"] = tuple(args["levels"])
print(json.dumps(inmem_m2m.measure(Settings(**args))))
"""


def default_python() -> str | None:
    """``.venv-compiled/bin/python`` of this checkout, if it exists."""
    python = ROOT / ".venv-compiled" / "bin" / "python"
    return str(python) if python.exists() else None


def measure(python: str, settings: Settings) -> dict[str, Any]:
    """:func:`bench.inmem_m2m.measure` under *python* (the compiled build's interpreter).

    Raises:
        Unavailable: the interpreter fails, or its m2mproto is not compiled.
    """
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run(
                [python, "-c", _SCRIPT, str(ROOT), json.dumps(dataclasses.asdict(settings))],
                capture_output=True,
                text=True,
                cwd=tmp,
                env={**os.environ, "PYTHONSAFEPATH": "1"},
                timeout=settings.phase_timeout * 4,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"compiled build: {exc}") from None
    if done.returncode != 0:
        raise Unavailable(f"compiled build: {done.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result
