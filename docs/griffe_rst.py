"""Griffe extension: render the reST roles of our docstrings as Markdown code.

The docstrings are Google style but name objects with Sphinx roles
(``:class:`~m2mproto.transport.Session```); mkdocstrings would show those
verbatim. A role becomes inline code of the name as Sphinx would show it
(the last component for ``~`` targets).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):`(~?)([^`]+)`")


def _name(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class ReSTRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring as ``target`` in code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_name, obj.docstring.value)
