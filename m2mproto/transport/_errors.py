"""The exceptions the session API raises beyond :mod:`m2mproto.errors`."""

from __future__ import annotations

import anyio

from ..errors import (
    AuthorizationError,
    ErrorCode,
    M2MError,
    code_name,
)

__all__ = ["ConnectionClosedError", "RequestTimeout", "StreamResetError", "reset_error"]


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


def reset_error(sid: int, code: int, remote: bool) -> M2MError:
    """The exception a reset of stream *sid* with *code* raises in the application."""
    if code == ErrorCode.UNAUTHORIZED:
        return AuthorizationError(f"stream {sid}: refused by the peer", ErrorCode.UNAUTHORIZED)
    who = "peer" if remote else "local"
    return StreamResetError(f"stream {sid} reset ({code_name(code)}, {who})", code, remote)
