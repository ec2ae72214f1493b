"""Build script: pure Python by default, mypyc-compiled core with ``M2M_COMPILE=1``.

All metadata lives in pyproject.toml. This file only adds the optional native
extension modules: with ``M2M_COMPILE=1`` in the environment the sans-IO core
(the modules in ``COMPILED_MODULES``) is compiled with mypyc, which must then
be importable at build time (``pip install --no-build-isolation .`` after
installing mypy, setuptools and wheel). Without the variable nothing is
compiled and mypy is not needed: the wheel is the pure-Python package.
"""

from __future__ import annotations

import os

from setuptools import setup

# The sans-IO core that every byte of peer traffic passes through. Transports,
# the CLI, the file helpers and anything using features mypyc refuses stay
# interpreted (they are thin or cold): errors.py (exceptions that also inherit
# OSError), tokens/revocation.py (a runtime_checkable Protocol), and config.py
# (Configuration is the API users fill in: pure, its checks raise
# LocalProtocolError for any wrong type rather than the compiled TypeError).
COMPILED_MODULES = [
    "m2mproto/connection.py",
    "m2mproto/_conn_auth.py",
    "m2mproto/_conn_budgets.py",
    "m2mproto/_conn_handshake.py",
    "m2mproto/_conn_outbox.py",
    "m2mproto/_conn_receiver.py",
    "m2mproto/_conn_state.py",
    "m2mproto/_conn_timers.py",
    "m2mproto/frames.py",
    "m2mproto/records.py",
    "m2mproto/streams.py",
    "m2mproto/cbor.py",
    "m2mproto/events.py",
    "m2mproto/handshake/_payload.py",
    "m2mproto/handshake/_wire.py",
    "m2mproto/handshake/_handshake.py",
    "m2mproto/handshake/_state.py",
    "m2mproto/handshake/_static.py",
    "m2mproto/noise/cipherstate.py",
    "m2mproto/noise/handshake.py",
    "m2mproto/noise/_crypto.py",
    "m2mproto/noise/patterns.py",
    "m2mproto/tokens/claims.py",
    "m2mproto/tokens/cose.py",
    "m2mproto/tokens/verify.py",
    "m2mproto/tokens/capabilities.py",
]


def _ext_modules() -> list[object]:
    if os.environ.get("M2M_COMPILE") != "1":
        return []
    from mypyc.build import mypycify  # build-time only, and only when compiling

    return list(mypycify(COMPILED_MODULES, opt_level="3", debug_level="0"))


setup(ext_modules=_ext_modules())
