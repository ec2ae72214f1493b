"""``m2m keygen`` and ``m2m id``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..identity import Identity
from ._common import command


def register(sub: Any) -> None:
    p = command(
        sub,
        "keygen",
        "generate an Ed25519 agent identity key file (mode 0600)",
        "Generate a new agent identity: an Ed25519 private key written to --out with mode\n"
        "0600 (atomically, never through a symbolic link). Prints the agent ID (m2m1...),\n"
        "the self-certifying name other agents and tokens use for it.",
        "m2m keygen --out alice.key",
        "m2m keygen --out server.key --json",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the private key")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--json", action="store_true", help="print the new identity as JSON")
    p.set_defaults(handler=cmd_keygen)

    p = command(
        sub,
        "id",
        "print the agent ID of a key file",
        "Print the agent ID of a private key file (refused if the file is readable by\n"
        "group or others). Give this ID to peers (--peer) and token issuers (--to, --aud).",
        "m2m id alice.key",
        "m2m id server.key --json",
    )
    p.add_argument("file", metavar="FILE", help="private key file written by keygen")
    p.add_argument("--json", action="store_true", help="print JSON with agent_id and public_key")
    p.set_defaults(handler=cmd_id)


def _describe(identity: Identity) -> dict[str, str]:
    return {
        "agent_id": identity.agent_id.text,
        "short_id": identity.agent_id.short,
        "public_key": identity.public_key.hex(),
    }


def cmd_keygen(args: argparse.Namespace) -> int:
    identity = Identity.generate()
    identity.save(args.out, overwrite=args.force)
    if args.json:
        print(json.dumps({**_describe(identity), "file": args.out}))
    else:
        print(identity.agent_id.text)
    return 0


def cmd_id(args: argparse.Namespace) -> int:
    identity = Identity.load(args.file)
    if args.json:
        print(json.dumps(_describe(identity)))
    else:
        print(identity.agent_id.text)
    return 0
