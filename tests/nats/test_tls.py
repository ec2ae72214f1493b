"""NATS connection options (here TLS) go through to nats-py unchanged."""

from __future__ import annotations

import shutil
import ssl
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from m2m_nats_server import start_nats_server

from m2mproto import Identity
from m2mproto.transport import Server
from m2mproto.transport.nats import NatsLink, connect_nats, serve_nats

pytestmark = pytest.mark.anyio


async def test_nats_over_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    key_file, cert_file = tmp_path / "key.pem", tmp_path / "cert.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    proc, url, store = start_nats_server(
        jetstream=False, extra=["--tls", "--tlscert", str(cert_file), "--tlskey", str(key_file)]
    )
    tls_url = url.replace("nats://", "tls://")
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    server = Server(Identity.generate(), authorizer_factory=lambda: None)

    @server.request("echo")
    async def echo(message: Any, ctx: Any) -> Any:
        return message

    try:
        # without the CA the NATS connection itself fails (no session is attempted)
        with pytest.raises(OSError):
            await NatsLink.open(tls_url, tls=ssl.create_default_context(),
                                max_reconnect_attempts=0, allow_reconnect=False)  # fmt: skip
        async with anyio.create_task_group() as tg:
            await tg.start(partial(serve_nats, server, tls_url, nats_options={"tls": client_ctx}))
            with anyio.fail_after(30):
                async with connect_nats(tls_url, identity=Identity.generate(),
                                        peer=server.identity.agent_id,
                                        nats_options={"tls": client_ctx}) as s:  # fmt: skip
                    assert await s.request("echo", "over tls", timeout=10) == "over tls"
            tg.cancel_scope.cancel()
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(store, ignore_errors=True)
