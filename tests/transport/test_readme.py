"""The README's agent example runs as written (make_keys, server, client) on loopback."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
PORT = 7700


def example_files() -> dict[str, str]:
    text = README.read_text()
    section = text.split("<!-- agent-example:start -->")[1].split("<!-- agent-example:end -->")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    files = {}
    for block in blocks:
        name = re.match(r"# (\w+\.py)", block)
        assert name is not None, "each example block starts with '# <file>.py'"
        files[name.group(1)] = block
    return files


def test_readme_blocks_are_short_and_complete() -> None:
    files = example_files()
    assert set(files) == {"make_keys.py", "server.py", "client.py"}
    assert len(files["server.py"].splitlines()) <= 30
    assert len(files["client.py"].splitlines()) <= 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_readme_example_runs(tmp_path: Path) -> None:
    # The examples run exactly as written, except that the README's port is
    # replaced by one that is free now (7700 may be taken on a shared machine).
    port = free_port()
    for name, code in example_files().items():
        assert str(PORT) in code or name == "make_keys.py"
        (tmp_path / name).write_text(code.replace(str(PORT), str(port)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = {"cwd": tmp_path, "env": env, "capture_output": True, "text": True, "timeout": 60}
    subprocess.run([sys.executable, "make_keys.py"], check=True, **run)  # type: ignore[call-overload]
    server = subprocess.Popen(
        [sys.executable, "server.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # bounded wait for the listener
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        client = subprocess.run([sys.executable, "client.py"], **run)  # type: ignore[call-overload]
        assert client.returncode == 0, client.stderr
    finally:
        server.terminate()
        out, _err = server.communicate(timeout=20)
    lines = client.stdout.splitlines()
    assert lines[0].startswith("connected to m2m1")
    assert "'echo': {'hello': 'world'}" in lines[1]
    assert lines[2] == "echoed 1000000 bytes"  # a message four times the stream window
    assert lines[3] == "server received 100000 bytes"
    assert "order {'id': 1} on orders/eu from m2m1" in out
