"""Test utilities for applications built on m2mproto (a supported public API).

:class:`FaultProxy` is a fault-injection TCP proxy on 127.0.0.1 that sits
between a client and a server and, per connection, drops, duplicates,
replays, reorders, corrupts, delays or cuts records (a :class:`Schedule` of
:class:`Fault` values, seeded so a failing run replays exactly). Use it to
check that your agents survive a hostile or lossy network; see
:mod:`m2mproto.testing.faultproxy` for the fault kinds.
"""

from .faultproxy import FAULT_KINDS, ConnectionPlan, Direction, Fault, FaultProxy, Schedule

__all__ = ["FAULT_KINDS", "ConnectionPlan", "Direction", "Fault", "FaultProxy", "Schedule"]
