"""The exceptions the session API raises beyond :mod:`m2mproto.errors`."""

from __future__ import annotations

import os

import anyio

from ..errors import (
    AuthorizationError,
    ErrorCode,
    M2MError,
    NetworkError,
    code_name,
)

__all__ = [
    "ConnectionClosedError",
    "RequestTimeout",
    "StreamResetError",
    "address_text",
    "network_error",
    "reset_error",
]


def address_text(address: object) -> str:
    """``host:port`` (``[v6]:port``) for a TCP address, the path for a Unix socket."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    if isinstance(address, str | os.PathLike):
        return os.fspath(address)
    return "?" if address is None else str(address)


def network_error(exc: OSError, *, listen: bool, address: object) -> NetworkError:
    """Wrap the transport's *exc* for *address* in a :class:`NetworkError` naming it."""
    where = address_text(address)
    detail = exc.strerror or str(exc) or type(exc).__name__
    if listen:
        message, code = f"cannot listen on {where}: {detail}", ErrorCode.LISTEN_FAILED
    else:
        message, code = f"cannot connect to {where}: {detail}", ErrorCode.UNREACHABLE
    error = NetworkError(message, code, errno=exc.errno, strerror=exc.strerror)
    error.__cause__ = exc
    return error


class ConnectionClosedError(M2MError, anyio.BrokenResourceError):
    """The session is closed (``CONNECTION_CLOSED``).

    ``close_code`` is the code the connection closed with (``NO_ERROR`` for a
    graceful close, ``TRUNCATED`` if the transport ended without a CLOSE
    frame), ``remote`` whether the peer closed it, ``reason`` the peer's reason.
    The transport exception, if one ended the connection, is ``__cause__``.
    """

    default_code = ErrorCode.CONNECTION_CLOSED

    def __init__(self, message: str, close_code: int, reason: str = "", remote: bool = False):
        super().__init__(message, ErrorCode.CONNECTION_CLOSED)
        self.close_code = close_code
        self.reason = reason
        self.remote = remote


class StreamResetError(M2MError, anyio.BrokenResourceError):
    """A stream was reset; ``code`` is the registry code (``APPLICATION_ERROR``
    for application codes), ``reset_code`` the code on the wire."""

    def __init__(self, message: str, reset_code: int, remote: bool):
        try:
            code = ErrorCode(reset_code)
        except ValueError:
            code = ErrorCode.APPLICATION_ERROR
        super().__init__(message, code)
        self.reset_code = reset_code
        self.remote = remote


class RequestTimeout(M2MError, TimeoutError):
    """A request got no reply in time (``TIMEOUT``); its stream was cancelled."""

    default_code = ErrorCode.TIMEOUT


def reset_error(sid: int, code: int, remote: bool, resource: str | None = None) -> M2MError:
    """The exception a reset of stream *sid* (to *resource*) with *code* raises."""
    what = f"{resource!r} (stream {sid})" if resource is not None else f"stream {sid}"
    if code == ErrorCode.UNAUTHORIZED:
        return AuthorizationError(
            f"{what}: refused by the peer: no capability covers it", ErrorCode.UNAUTHORIZED
        )
    if code == ErrorCode.REFUSED and remote:
        return StreamResetError(
            f"{what}: refused by the peer (REFUSED: no handler for it)", code, remote
        )
    who = "peer" if remote else "local"
    return StreamResetError(f"{what} reset ({code_name(code)}, {who})", code, remote)
