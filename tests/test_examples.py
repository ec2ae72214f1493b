"""Every script in examples/ runs as a user would run it, and prints what it promises.

Each example is self-contained (keys in a temp dir, its own server on a free
loopback port); here each runs as ``python examples/NAME.py`` in a subprocess,
from an unrelated working directory, with a bounded timeout.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 120  # seconds per example, generous for a loaded machine

#: For each example: patterns that must each match a line of its output, in this order
#: (server and client lines may interleave, so only each side's own lines are ordered).
EXPECTED: dict[str, list[str]] = {
    "client_server.py": [
        r"^client: connected to m2m1\w+$",
        r"^client: echo -> \{'echo': \{'hi': 1\}, 'from': 'm2m1\w+'\}$",
        r"^client: admin refused: UNAUTHORIZED$",
    ],
    "message_streams.py": [
        r"^client: reply \{'item': 'apple', 'total': 3\}$",
        r"^client: reply \{'item': 'pear', 'total': 8\}$",
        r"^client: reply \{'item': 'plum', 'total': 10\}$",
        r"^client: final \{'done': True, 'total': 10\}$",
    ],
    "byte_stream_upload.py": [
        r"^client: uploaded 3145728 bytes; digest matches: True$",
    ],
    "delegation_chain.py": [
        r"^widening refused: INVALID_ARGUMENT$",
        r"^chain: m2m1\w+ -> m2m1\w+ -> m2m1\w+ grants \['orders/eu/\*=\*'\]$",
        r"^bob: orders/us/42 refused: UNAUTHORIZED$",
        r"^bob with alice's token: refused: CNF_MISMATCH$",
    ],
    "revocation.py": [
        r"^bob: reading 1 -> \{'ack': 1\}$",
        r"^bob: reading 2 refused: UNAUTHORIZED$",
        r"^bob: reconnect refused: TOKEN_INVALID$",
        r"^server-side check: REVOKED$",
        r"^alice: reading 1 -> \{'ack': 1\}$",
    ],
    "reliable_delivery.py": [
        r"^sender: queued 4-6 while the receiver is down$",
        r"^sender: all delivered after [2-9] connections$",
        r"^sender: stopped with message 7 still in its outbox$",
        r"^sender: resumed from its outbox; nothing left to send$",
        r"^delivered exactly once, in order: True$",
    ],
    "ik_reconnect.py": [
        r"^first contact: XX \(server saw XX\)$",
        r"^reconnect: IK \(server saw IK\)$",
        r"^key memory: 1 key, file mode 0600$",
        r"^after the restart: XX, after 1 failed IK handshake \(DECRYPT_ERROR\)$",
        r"^next reconnect: IK$",
    ],
    "sans_io_sockets.py": [
        r"^client: authenticated m2m1\w+ with XXhfs$",
        r"^client: reply \{'echo': \{'hello': 'sans-io'\}\}$",
        r"^client: closed, NO_ERROR$",
    ],
    "trio_client_server.py": [
        r"^client: connected to m2m1\w+ under trio$",
        r"^client: echo -> \{'echo': \[1, 2, 3\]\}$",
        r"^client: concurrent -> \[0, 1, 2\]$",
        r"^client: stream -> HELLO TRIO$",
    ],
    "unix_socket.py": [
        r"^server: listening on agent\.sock$",
        r"^client: status -> True as seen by the server: True$",
        r"^socket file removed: True$",
    ],
}

#: Lines the server side prints, checked for presence (their order relative to the
#: client's lines depends on scheduling).
SERVER_LINES: dict[str, list[str]] = {
    "client_server.py": [r"^server: order \{'id': 7\} on orders/eu$"],
    "byte_stream_upload.py": [r"^server: files/upload\.bin: 3145728 bytes$"],
    "delegation_chain.py": [r"^server: orders/eu/42 from m2m1\w+: \{'qty': 1\}$"],
    "reliable_delivery.py": [rf"^receiver: got n={n} \(seq {n - 1}\)$" for n in range(1, 8)],
    "sans_io_sockets.py": [
        r"^server: authenticated m2m1\w+ with XXhfs$",
        r"^server: stream 0 opened on 'echo'$",
        r"^server: closed, NO_ERROR$",
    ],
}


def example_names() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("*.py"))


def test_every_example_is_tested() -> None:
    assert example_names() == sorted(EXPECTED), "add the new example's output to EXPECTED"
    assert set(SERVER_LINES) <= set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=tmp_path,  # examples must not depend on the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "done", result.stdout
    position = 0
    for pattern in EXPECTED[name]:  # in order
        for index in range(position, len(lines)):
            if re.match(pattern, lines[index]):
                position = index + 1
                break
        else:
            pytest.fail(f"{name}: no line after line {position} matches {pattern!r}:\n"
                        + result.stdout)
    for pattern in SERVER_LINES.get(name, []):
        matching = [line for line in lines if re.match(pattern, line)]
        assert len(matching) == 1, f"{name}: {pattern!r} should match once:\n{result.stdout}"
    assert list(tmp_path.iterdir()) == []  # everything was written to a temp dir and removed


def _imports(tree: ast.Module) -> list[tuple[str, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [(node.module or "", alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("name", example_names())
def test_example_uses_public_api_only(name: str) -> None:
    tree = ast.parse((EXAMPLES / name).read_text())
    for module, item in _imports(tree):
        if not module.startswith("m2mproto"):
            continue
        parts = module.split(".") + ([item] if item else [])
        assert not any(part.startswith("_") for part in parts), (name, module, item)
        assert not module.startswith(("m2mproto.testing", "m2mproto.interop", "m2mproto.cli"))
    for node in ast.walk(tree):
        # No private attributes of library objects (session._conn and the like).
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            pytest.fail(f"{name}:{node.lineno}: private attribute {node.attr}")


@pytest.mark.parametrize("name", example_names())
def test_example_names_the_expected_peer(name: str) -> None:
    """Every connection an example makes pins the server's identity (peer=)."""
    tree = ast.parse((EXAMPLES / name).read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("connect", "ReliableSender")
    ]
    for call in calls:
        assert "peer" in {k.arg for k in call.keywords}, f"{name}:{call.lineno}: pass peer="
