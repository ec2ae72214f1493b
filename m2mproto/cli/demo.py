"""``m2m demo``: the README's main job."""

from __future__ import annotations

import argparse
from typing import Any

from ..identity import Identity


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run a local demo of two agents (no set-up needed)")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    alice, bob = Identity.generate(), Identity.generate()
    print(f"agent A: {alice.agent_id}")
    print(f"agent B: {bob.agent_id}")
    return 0
