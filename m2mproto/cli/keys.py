"""``m2m keygen`` and ``m2m id``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..identity import Identity


def register(sub: Any) -> None:
    p = sub.add_parser("keygen", help="generate an Ed25519 agent identity key file (mode 0600)")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the private key")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--json", action="store_true", help="print the new identity as JSON")
    p.set_defaults(handler=cmd_keygen)

    p = sub.add_parser("id", help="print the agent ID of a key file")
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
