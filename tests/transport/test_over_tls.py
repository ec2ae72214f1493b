"""m2mproto carried inside another byte stream: here TLS 1.3 (anyio's TLSListener/TLSStream).

connect() and Server.serve() take any anyio ByteStream / Listener, so the
protocol runs unchanged inside TLS (or a QUIC stream): the inner handshake
still authenticates the agents, whatever the outer layer does.
"""

from __future__ import annotations

import ssl
from typing import Any

import anyio
import pytest
import trustme
from anyio.streams.tls import TLSListener
from transport_util import CLIENT_ID, SERVER_ID, make_server, token

from m2mproto.transport import Context, connect

pytestmark = pytest.mark.anyio


async def test_session_inside_tls() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    server = make_server()

    @server.request("echo")
    async def echo(msg: Any, ctx: Context) -> Any:
        return {"echo": msg, "from": ctx.peer.agent_id.text}

    with anyio.fail_after(15):
        tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = tcp.extra(anyio.abc.SocketAttribute.local_port)
        listener = TLSListener(tcp, server_ctx, standard_compatible=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, listener)
            outer = await anyio.connect_tcp(
                "127.0.0.1",
                port,
                ssl_context=client_ctx,
                tls_hostname="localhost",
                tls_standard_compatible=False,
            )
            assert outer.extra(anyio.streams.tls.TLSAttribute.tls_version) == "TLSv1.3"
            async with connect(
                outer, identity=CLIENT_ID, tokens=[token(["echo=*"])], peer=SERVER_ID.agent_id
            ) as session:
                assert session.peer.agent_id == SERVER_ID.agent_id
                reply = await session.request("echo", {"inside": "tls"}, timeout=5)
                assert reply == {"echo": {"inside": "tls"}, "from": CLIENT_ID.agent_id.text}
            tg.cancel_scope.cancel()
