"""The m2mproto interoperability suite: vector generator and conformance runner.

Installed as the ``m2mproto-interop`` distribution; ``m2m interop ...`` finds it.

* :mod:`m2m_interop.generate` writes and checks ``interop/vectors/*.json``;
* :mod:`m2m_interop.mint` holds the fixed identities and the token catalog;
* :mod:`m2m_interop.peer` is the hostile peer (bug knobs, never in production code);
* :mod:`m2m_interop.cases_handshake`, ``cases_records``, ``cases_streams`` and
  ``cases_tokens`` are the case catalog, numbered by spec section;
* :mod:`m2m_interop.runner` runs the catalog and writes the reports;
* :mod:`m2m_interop.shim` is the reference implementation's shim;
* :mod:`m2m_interop.noise_vectors` replays third-party Noise test vectors.
"""

__version__ = "0.1.0"
