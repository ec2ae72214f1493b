"""``python -m m2m_interop ARGS`` is ``m2m interop ARGS``."""

import sys

from m2mproto.cli import main

raise SystemExit(main(["interop", *sys.argv[1:]]))
