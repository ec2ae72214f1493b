"""Socket attachments: a running TCP peer (``--target``) and a shim process (``--shim``).

Theory of operation
-------------------
:class:`SocketLink` implements :class:`peer.Link` over a blocking TCP socket.
The runner's cases are request/response conversations, so ``read`` waits up
to ``first_wait`` for the IUT's first byte and then collects until the IUT
has been quiet for ``quiet`` seconds (or closed). Time cannot be advanced and
the IUT's configuration cannot be changed over a socket: such cases raise
:class:`Unsupported` and are reported SKIP with the reason.

:class:`ShimLink` (spec/interop.md §5) listens on 127.0.0.1, runs the shim
with the case's profile as flags, accepts its connection, checks the 8-byte
test ID, and reads the shim's local outcome from its last stderr lines.
"""

from __future__ import annotations

import contextlib
import select
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable

from m2mproto.errors import ErrorCode
from m2mproto.identity import AgentId

from . import mint
from .inprocess import IUT_STATIC, IUTProfile, trusted
from .peer import LocalView

__all__ = ["ShimLink", "SocketLink", "TcpLink", "Unsupported", "shim_factory", "tcp_factory"]

#: Exit status of a shim for an unimplemented feature (and the QUIC-runner alias).
UNIMPLEMENTED = (89, 127)


class Unsupported(Exception):
    """The attachment cannot carry out this case (reported SKIP)."""


class SocketLink:
    """A :class:`peer.Link` over a connected TCP socket."""

    first_wait = 0.25
    quiet = 0.02

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._eof = False

    def write(self, data: bytes) -> None:
        if self._eof or not data:
            return
        try:
            self.sock.sendall(data)
        except OSError:
            self._eof = True

    def _recv(self, timeout: float) -> bytes | None:
        """One recv within *timeout*: bytes, b'' at EOF, None if nothing arrived."""
        if self._eof:
            return b""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._eof = True
        return data

    def read(self) -> bytes:
        out = bytearray()
        deadline = time.monotonic() + self.first_wait
        for _ in range(100_000):  # bounded by the deadline and the quiet period
            wait = self.quiet if out else max(0.0, deadline - time.monotonic())
            data = self._recv(wait)
            if not data:
                break
            out += data
        return bytes(out)

    def write_eof(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    @property
    def iut_closed(self) -> bool:
        if self._eof:
            return True
        try:
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if ready and self.sock.recv(1, socket.MSG_PEEK) == b"":
                self._eof = True
        except OSError:
            self._eof = True
        return self._eof

    def wait_closed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for _ in range(1000):  # bounded by the deadline
            if self.iut_closed or time.monotonic() > deadline:
                break
            self.read()
        return self._eof

    def advance(self, seconds: float) -> None:
        raise Unsupported("the IUT's clock cannot be advanced over a socket")

    def local(self) -> LocalView | None:
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class TcpLink(SocketLink):
    """A connection to a running peer (``m2m serve``)."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        super().__init__(socket.create_connection((host, port), timeout=timeout))


def tcp_factory(host: str, port: int) -> Callable[[IUTProfile], SocketLink]:
    """Make links to a running peer; only the default profile (responder) is possible."""

    def make(profile: IUTProfile) -> SocketLink:
        if profile != IUTProfile():
            raise Unsupported("needs the IUT's configuration or role (use --shim)")
        return TcpLink(host, port)

    return make


class ShimLink(SocketLink):
    """One shim process and its connection (spec/interop.md §5)."""

    def __init__(self, command: str, profile: IUTProfile, test_id: int) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        argv = [
            *shlex.split(command),
            "--port",
            str(port),
            "--test-id",
            str(test_id),
            *profile_flags(profile),
        ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        try:
            listener.settimeout(0.05)
            sock = None
            for _ in range(200):  # 10 s at most
                try:
                    sock, _addr = listener.accept()
                    break
                except TimeoutError:
                    code = self.proc.poll()
                    if code in UNIMPLEMENTED:
                        raise Unsupported(f"UNIMPLEMENTED (shim exit {code})") from None
                    if code is not None:
                        raise ConnectionError(
                            f"shim exited with {code} before connecting"
                        ) from None
            if sock is None:
                raise ConnectionError("shim did not connect within 10 s")
        finally:
            listener.close()
        sock.settimeout(None)
        super().__init__(sock)
        head = b""
        for _ in range(100):  # the 8-byte test ID, within about 1 s
            part = self._recv(0.01)
            if part is None:
                continue
            if not part:
                break
            head += part
            if len(head) >= 8:
                break
        if head[:8] != test_id.to_bytes(8, "little"):
            raise ConnectionError(f"shim sent test ID {head[:8].hex()}, expected {test_id}")
        self._pending = head[8:]

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def read(self) -> bytes:
        pending, self._pending = self._pending, b""
        return pending + super().read()

    def local(self) -> LocalView | None:
        if not self._eof:
            time.sleep(0.02)  # let the stderr reader catch up with lines printed before data
            return self._view(None)
        try:
            self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=1.0)
        code: int | None = None
        for line in self.stderr:
            if line.startswith("M2M-RESULT: "):
                code = _code(line.split(": ", 1)[1].strip())
        return self._view(code)

    def _view(self, code: int | None) -> LocalView:
        peer = None
        rejected = []
        for line in list(self.stderr):
            if line.startswith("M2M-PEER: "):
                peer = line.split(": ", 1)[1].strip()
            elif line.startswith("M2M-TOKEN-REJECTED: "):
                c = _code(line.split(": ", 1)[1].strip())
                if c is not None:
                    rejected.append(c)
        return LocalView(
            closed_code=code,
            resets=self._resets(),
            events=(),
            peer=peer,
            token_rejected=tuple(rejected),
        )

    def _resets(self) -> tuple[tuple[int, int, bool], ...]:
        out = []
        for line in list(self.stderr):
            if line.startswith("M2M-STREAM-RESET: "):
                sid, code, who = line.split(": ", 1)[1].split()
                c = _code(code)
                if c is not None:
                    out.append((int(sid), c, who == "remote"))
        return tuple(out)

    def close(self) -> None:
        super().close()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _code(text: str) -> int | None:
    try:
        return int(ErrorCode[text])
    except KeyError:
        return int(text) if text.isdigit() else None


def profile_flags(profile: IUTProfile) -> list[str]:
    """The shim flags that configure an IUT like *profile* (spec/interop.md §5)."""
    flags = [
        "--role",
        "initiator" if profile.initiator else "responder",
        "--identity-seed",
        mint.seed("verifier").hex(),
        "--static-key",
        IUT_STATIC.hex(),
        "--trust-root",
        mint.ROOT.agent_id.text,
        "--now",
        str(mint.NOW),
        "--revocation",
        mint.revocation_statement().hex(),
    ]
    trust: frozenset[AgentId] = profile.trust if profile.trust is not None else trusted()
    for agent in sorted(a.text for a in trust):
        flags += ["--trust", agent]
    if profile.expect_peer is not None:
        flags += ["--expect-peer", profile.expect_peer.text]
    for token in profile.tokens:
        flags += ["--token", token.hex()]
    for cti in profile.revoked:
        flags += ["--revoked", cti.hex()]
    if not profile.authorize:
        flags.append("--no-authorize")
    for name, value in sorted(profile.config.items()):
        flags += ["--config", f"{name}={value}"]
    return flags


def shim_factory(command: str) -> Callable[[IUTProfile], SocketLink]:
    """Make one shim process per link."""
    counter = {"n": 0}

    def make(profile: IUTProfile) -> SocketLink:
        counter["n"] += 1
        return ShimLink(command, profile, counter["n"])

    return make
