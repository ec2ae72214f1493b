"""The m2mproto interoperability suite: vector generator and conformance runner.

* :mod:`m2mproto.interop.generate` writes and checks ``interop/vectors/*.json``;
* :mod:`m2mproto.interop.mint` holds the fixed identities and the token catalog;
* :mod:`m2mproto.interop.peer` is the hostile peer (bug knobs, never in production code);
* :mod:`m2mproto.interop.cases` is the case catalog, numbered by spec section;
* :mod:`m2mproto.interop.runner` runs the catalog and writes the reports.
"""
