"""The error registry in m2mproto/errors.py and spec/errors.md agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from m2mproto.errors import (
    AuthenticationError,
    AuthorizationError,
    DecodeError,
    ErrorCode,
    LimitExceeded,
    LocalProtocolError,
    M2MError,
    RemoteProtocolError,
    SendBufferFull,
    StreamLimitReached,
    TokenError,
    code_name,
)

SPEC = Path(__file__).parent.parent / "spec" / "errors.md"


def test_spec_table_matches_enum() -> None:
    rows = re.findall(r"^\| `0x([0-9A-F]{4})` \| `([A-Z_]+)` \|", SPEC.read_text(), re.M)
    in_spec = {name: int(num, 16) for num, name in rows}
    in_code = {c.name: int(c) for c in ErrorCode}
    assert in_spec == in_code


def test_numbers_unique_and_in_ranges() -> None:
    values = [int(c) for c in ErrorCode]
    assert len(values) == len(set(values))
    assert all(v < 0x1000 for v in values)
    assert ErrorCode.NO_ERROR.is_wire and ErrorCode.CANCELLED.is_wire
    assert not ErrorCode.EXPIRED.is_wire and not ErrorCode.INVALID_STATE.is_wire


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (LocalProtocolError, ErrorCode.INVALID_STATE),
        (RemoteProtocolError, ErrorCode.PROTOCOL_ERROR),
        (DecodeError, ErrorCode.DECODE_ERROR),
        (AuthenticationError, ErrorCode.HANDSHAKE_FAILURE),
        (AuthorizationError, ErrorCode.UNAUTHORIZED),
        (TokenError, ErrorCode.MALFORMED),
        (LimitExceeded, ErrorCode.ENHANCE_YOUR_CALM),
        (SendBufferFull, ErrorCode.FLOW_CONTROL_ERROR),
        (StreamLimitReached, ErrorCode.STREAM_LIMIT_ERROR),
    ],
)
def test_default_codes(cls: type[M2MError], code: ErrorCode) -> None:
    err = cls("boom")
    assert err.code is code
    assert str(err) == f"{code.name}: boom"
    assert isinstance(err, M2MError)
    assert cls("x", ErrorCode.TIMEOUT).code is ErrorCode.TIMEOUT


def test_hierarchy() -> None:
    assert issubclass(DecodeError, RemoteProtocolError)
    assert issubclass(TokenError, AuthorizationError)
    assert not issubclass(AuthenticationError, AuthorizationError)


def test_code_name() -> None:
    assert code_name(4) == "HANDSHAKE_FAILURE"
    assert code_name(0x1234) == "APPLICATION(0x1234)"
    assert code_name(0x999) == "UNKNOWN(2457)"
