"""Reliability tests: asyncio by default; tests that matter on both loops parametrize."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
