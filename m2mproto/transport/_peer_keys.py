"""The initiator's memory of responders' Noise static keys, for IK (spec/handshake.md 2.11).

A key enters the memory only from a handshake that completed, identity binding
and expected-peer check included; it is looked up by the responder's agent ID
and the address it was reached at, and forgotten when IK to it fails with
``DECRYPT_ERROR``. The memory is bounded (least recently used entries go
first) and optionally kept in a private file (0600, replaced atomically,
never read or written through a symbolic link).
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from anyio.abc import ByteStream

from .._files import check_private, write_atomic
from ..errors import ErrorCode, LocalProtocolError, M2MError
from ..identity import AgentId

__all__ = ["PeerStaticKeys", "address_key"]

#: Format tag of the file; a file with another one is refused.
_FORMAT = "m2mproto-peer-static-keys/1"
#: A file larger than this is refused before it is parsed (about 200 bytes an entry).
_MAX_FILE = 1 << 20


def address_key(address: object) -> str:
    """How *address* is named in the memory: ``tcp:HOST:PORT``, ``unix:PATH``, or ``""``
    for an already connected byte stream (then the agent ID alone is the key)."""
    if isinstance(address, ByteStream):
        return ""
    if isinstance(address, tuple) and len(address) == 2:
        return f"tcp:{address[0]}:{address[1]}"
    if isinstance(address, str | os.PathLike):
        return f"unix:{os.fspath(address)}"
    return ""


class PeerStaticKeys:
    """Responders' Noise static public keys, remembered to reconnect with IK.

    ``connect(..., peer=ID, ik=memory)`` looks here for ``(ID, address)``: with an
    entry it runs IK (two handshake messages instead of three), without one XX; after a handshake it
    remembers the responder's authenticated static key, and after IK fails with
    ``DECRYPT_ERROR`` (the responder restarted with a new key, or an attacker
    interfered: indistinguishable) it forgets the entry and retries once with XX.

    Args:
        path: keep the memory in this file too (loaded now, rewritten on every
            change: mode 0600, atomically). Without it the memory lasts as long
            as the object (``connect(..., ik=True)`` uses one per process).
        limit: at most this many entries; the least recently used go first.

    Raises:
        LocalProtocolError: (``KEY_FILE_INVALID``) *path* is malformed, too large,
            a symbolic link or not a regular file; (``KEY_FILE_PERMISSIONS``) it is
            accessible by group or others, or owned by another user: anyone who
            can write it could make us encrypt our identity and tokens to them.
    """

    __slots__ = ("_entries", "_limit", "_lock", "_path")

    _default: PeerStaticKeys | None = None

    def __init__(self, path: str | os.PathLike[str] | None = None, *, limit: int = 256) -> None:
        if not isinstance(limit, int) or limit < 1:
            raise LocalProtocolError("limit must be at least 1", ErrorCode.INVALID_ARGUMENT)
        self._limit = limit
        self._path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[bytes, str], bytes] = OrderedDict()
        if self._path is not None:
            self._load(self._path)

    @classmethod
    def process_default(cls) -> PeerStaticKeys:
        """The memory of ``connect(..., ik=True)``: one per process."""
        if cls._default is None:
            cls._default = cls()
        return cls._default

    @property
    def path(self) -> Path | None:
        """The file the memory is kept in, if any."""
        return self._path

    def get(self, peer: AgentId, address: object = None) -> bytes | None:
        """The remembered static key of *peer* at *address* (marked recently used)."""
        key = (peer.public_key, address_key(address))
        with self._lock:
            static = self._entries.get(key)
            if static is not None:
                self._entries.move_to_end(key)
            return static

    def remember(self, peer: AgentId, static: bytes, address: object = None) -> None:
        """Remember *static* for *peer* at *address*: only ever a key that a completed
        handshake authenticated as *peer*'s (``session.peer.static_key``).

        Raises:
            LocalProtocolError: (``INVALID_ARGUMENT``) *static* is not 32 bytes;
                (``KEY_FILE_INVALID``) the file could not be written.
        """
        if not isinstance(static, bytes) or len(static) != 32:
            raise LocalProtocolError("a Noise static key is 32 bytes", ErrorCode.INVALID_ARGUMENT)
        key = (peer.public_key, address_key(address))
        with self._lock:
            if self._entries.get(key) == static:
                self._entries.move_to_end(key)
                return
            self._entries[key] = static
            self._entries.move_to_end(key)
            while len(self._entries) > self._limit:
                self._entries.popitem(last=False)
            self._save()

    def forget(self, peer: AgentId, address: object = None) -> bool:
        """Forget *peer* at *address*; whether there was an entry.

        Raises:
            LocalProtocolError: (``KEY_FILE_INVALID``) the file could not be written.
        """
        with self._lock:
            if self._entries.pop((peer.public_key, address_key(address)), None) is None:
                return False
            self._save()
            return True

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()
            self._save()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        where = f"{str(self._path)!r}" if self._path is not None else "memory"
        return f"PeerStaticKeys({where}, {len(self._entries)} of {self._limit})"

    # -- the file ----------------------------------------------------------------

    def _load(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise LocalProtocolError(
                f"{path}: cannot open the peer key memory ({exc.strerror})",
                ErrorCode.KEY_FILE_INVALID,
            ) from None
        try:
            st = check_private(
                fd, path, ErrorCode.KEY_FILE_INVALID, mode_code=ErrorCode.KEY_FILE_PERMISSIONS
            )
            if st.st_size > _MAX_FILE:
                raise LocalProtocolError(
                    f"{path}: peer key memory larger than {_MAX_FILE} bytes",
                    ErrorCode.KEY_FILE_INVALID,
                )
            raw = os.read(fd, _MAX_FILE + 1)
        finally:
            os.close(fd)
        try:
            entries = _parse(json.loads(raw.decode("utf-8")))
        except (ValueError, UnicodeDecodeError, M2MError) as exc:
            raise LocalProtocolError(
                f"{path}: not a peer key memory ({exc})", ErrorCode.KEY_FILE_INVALID
            ) from None
        for key, static in entries[-self._limit :]:
            self._entries[key] = static

    def _save(self) -> None:
        if self._path is None:
            return
        doc = {
            "format": _FORMAT,
            "entries": [
                {"peer": str(AgentId(peer)), "address": where, "static_key": static.hex()}
                for (peer, where), static in self._entries.items()
            ],
        }
        data = json.dumps(doc, indent=1).encode() + b"\n"
        write_atomic(
            self._path,
            data,
            mode=0o600,
            overwrite=True,
            code=ErrorCode.KEY_FILE_INVALID,
            what="peer key memory",
        )


def _parse(doc: Any) -> list[tuple[tuple[bytes, str], bytes]]:
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError(f"format is not {_FORMAT!r}")
    items = doc.get("entries")
    if not isinstance(items, list):
        raise ValueError("'entries' is not a list")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("an entry is not an object")
        peer, where, static = item.get("peer"), item.get("address"), item.get("static_key")
        if not isinstance(peer, str) or not isinstance(where, str) or not isinstance(static, str):
            raise ValueError("an entry needs text 'peer', 'address' and 'static_key'")
        key = bytes.fromhex(static)
        if len(key) != 32:
            raise ValueError("a static key is 32 bytes")
        out.append(((AgentId.parse(peer).public_key, where), key))
    return out
