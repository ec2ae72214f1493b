"""The command line says what and where: usage per subcommand, help with examples,
errors naming addresses, agents, resources and tokens (the real CLI, in
subprocesses, against a real ``m2m serve`` on loopback)."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import m2mproto

sys.path.insert(0, str(Path(__file__).parent))

from test_cli_peer import m2m, ok, start_serve, stop

from m2mproto.cli import EXIT_CODES, build_parser
from m2mproto.identity import AgentId, Identity
from m2mproto.tokens import issue
from m2mproto.tokens.verify import DEFAULT_CLOCK_SKEW


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    d = tmp_path_factory.mktemp("uxworld")
    ids = {n: ok("keygen", "--out", f"{n}.key", cwd=d).strip() for n in ("root", "a", "b", "srv")}
    ok("token", "issue", "--key", "root.key", "--to", ids["a"], "--cap", "echo=*",
       "--aud", ids["srv"], "--out", "a.tok", cwd=d)  # fmt: skip
    yield d, ids


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
    tuple[tuple[str, ...], argparse.ArgumentParser]
]:  # fmt: skip
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, (*path, name))


def test_every_subcommand_has_a_description_examples_and_positional_help() -> None:
    leaves = [(p, q) for p, q in _leaves(build_parser()) if p[:1] != ("bench",)]
    assert len(leaves) >= 12  # keygen, id, token x5, serve, send, request, demo, interop x4
    for path, parser in leaves:
        text = parser.format_help()
        assert parser.description, path
        assert "examples:\n  m2m " in text, path
        for action in parser._actions:
            if not action.option_strings:  # a positional
                assert action.help, (path, action.dest)
            elif action.dest != "help":
                assert action.help, (path, action.dest)


def test_a_bad_flag_prints_the_subcommand_usage(tmp_path: Path) -> None:
    result = m2m("token", "verify", "x.tok", "--root", "m2m1x", "--bogus", cwd=tmp_path)
    assert result.returncode == EXIT_CODES["usage"]
    assert result.stderr.startswith("usage: m2m token verify")
    assert "m2m token verify: error: unrecognized arguments: --bogus" in result.stderr
    # the dropped no-op flag of request/send is refused by the subcommand
    result = m2m("request", "--key", "k", "--connect", "h:1", "--json", "echo", "1", cwd=tmp_path)
    assert result.returncode == EXIT_CODES["usage"]
    assert result.stderr.startswith("usage: m2m request")


def test_help_shows_the_examples(tmp_path: Path) -> None:
    out = ok("serve", "--help", cwd=tmp_path)
    assert "examples:" in out and "m2m serve --key server.key" in out
    assert "--log-level" in out and "-v, --verbose" in out
    if (Path(m2mproto.__file__).resolve().parent.parent / "bench").is_dir():  # a checkout
        out = ok("bench", "--help", cwd=tmp_path)
        assert out.startswith("usage: m2m bench")
    else:  # an installed copy (the compiled build's venv): bench says where it runs
        result = m2m("bench", "--help", cwd=tmp_path)
        assert result.returncode != 0 and "source checkout" in result.stderr


def test_inspect_shows_times_and_names(world: tuple[Path, dict[str, str]]) -> None:
    d, ids = world
    out = ok("token", "inspect", "a.tok", cwd=d)
    assert "EdDSA (Ed25519)" in out and "OKP Ed25519 public key" in out
    assert "-8" not in out and '"1":' not in out  # no raw COSE labels
    assert f"holder     {ids['a']}" in out
    year = time.strftime("%Y", time.gmtime())
    assert f"expires    {year}-" in out and out.count("Z\n") >= 3
    raw = json.loads(ok("token", "inspect", "a.tok", "--raw", cwd=d))
    assert raw["protected"]["alg"] == -8  # the structure, for scripts


def test_verify_json_failure_and_clock_skew_note(world: tuple[Path, dict[str, str]]) -> None:
    d, ids = world
    exp = json.loads(ok("token", "inspect", "a.tok", "--json", cwd=d))["claims"]["exp"]
    base = ("token", "verify", "a.tok", "--root", ids["root"], "--aud", ids["srv"])
    late = m2m(*base, "--at", str(exp + DEFAULT_CLOCK_SKEW + 5), "--json", cwd=d)
    assert late.returncode == EXIT_CODES["token"]
    assert json.loads(late.stdout) == {
        "valid": False, "code": "EXPIRED", "message": "token has expired"
    }  # fmt: skip
    assert late.stderr.startswith("m2m: EXPIRED:")
    skewed = ok(*base, "--at", str(exp + 5), cwd=d)
    assert "accepted only within the clock-skew allowance" in skewed
    assert json.loads(ok(*base, "--at", str(exp + 5), "--json", cwd=d))["note"].startswith(
        "accepted only within the clock-skew allowance"
    )
    assert "note" not in json.loads(ok(*base, "--json", cwd=d))
    # without --aud, the token's audience is named
    no_aud = m2m("token", "verify", "a.tok", "--root", ids["root"], cwd=d)
    assert no_aud.returncode == EXIT_CODES["token"] and ids["srv"] in no_aud.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_network_errors_name_the_address_and_a_code(world: tuple[Path, dict[str, str]]) -> None:
    d, ids = world
    port = _free_port()
    result = m2m("request", "--key", "a.key", "--token", "a.tok", "--connect",
                 f"127.0.0.1:{port}", "--peer", ids["srv"], "echo", "1", cwd=d)  # fmt: skip
    assert result.returncode == EXIT_CODES["network"], result.stderr
    assert result.stderr.startswith(f"m2m: UNREACHABLE: cannot connect to 127.0.0.1:{port}: ")
    assert result.stderr.count("\n") == 1
    peer = start_serve(d, "--root", ids["root"])
    try:
        busy = m2m("serve", "--key", "srv.key", "--listen", peer.address, "--root", ids["root"],
                   cwd=d)  # fmt: skip
        assert busy.returncode == EXIT_CODES["network"], busy.stderr
        assert busy.stderr.startswith(f"m2m: LISTEN_FAILED: cannot listen on {peer.address}: ")
        assert busy.stderr.count("\n") == 1 and "Traceback" not in busy.stderr
    finally:
        stop(peer)


def test_client_errors_name_agents_resources_and_tokens(world: tuple[Path, dict[str, str]]) -> None:
    d, ids = world
    past = issue(Identity.load(d / "root.key"), ids["a"], ["echo=*"],
                 now=time.time() - 7200, ttl=3600, audience=ids["srv"])  # fmt: skip
    (d / "old.tok").write_bytes(past)
    peer = start_serve(d, "--root", ids["root"])
    try:
        base = ("--connect", peer.address, "--peer", ids["srv"])
        # the server is not who we named: both agent IDs
        wrong = m2m("request", "--key", "a.key", "--token", "a.tok", "--connect", peer.address,
                    "--peer", ids["b"], "echo", "1", cwd=d)  # fmt: skip
        assert wrong.returncode == EXIT_CODES["authentication"]
        assert wrong.stderr.startswith("m2m: AUTH_UNEXPECTED_PEER:")
        assert ids["b"] in wrong.stderr and ids["srv"] in wrong.stderr
        # refused for lack of a capability: the resource is named
        refused = m2m("send", "--key", "a.key", "--token", "a.tok", *base, "log", "1", cwd=d)
        assert refused.returncode == EXIT_CODES["authorization"]
        assert refused.stderr.startswith("m2m: UNAUTHORIZED: 'log'")
        # our own token: expired, or someone else's: said before connecting
        old = m2m("request", "--key", "a.key", "--token", "old.tok", *base, "echo", "1", cwd=d)
        assert old.returncode == EXIT_CODES["token"]
        assert old.stderr.startswith("m2m: EXPIRED: token 1 expired at ")
        theirs = m2m("request", "--key", "b.key", "--token", "a.tok", *base, "echo", "1", cwd=d)
        assert theirs.returncode == EXIT_CODES["token"]
        assert theirs.stderr.startswith("m2m: CNF_MISMATCH:") and ids["a"] in theirs.stderr
        # -vv: a DEBUG trace of the handshake and frames, every line with the address
        traced = m2m("request", "--key", "a.key", "--token", "a.tok", *base, "-vv", "echo",
                     '"secret-value"', cwd=d)  # fmt: skip
        assert traced.returncode == 0 and json.loads(traced.stdout) == "secret-value"
        lines = [x for x in traced.stderr.splitlines() if "m2mproto.transport" in x]
        assert any("HandshakeCompleted" in x for x in lines), traced.stderr
        assert any("MessageReceived stream=0 message bytes=" in x for x in lines)
        assert all(f"@{peer.address}]" in x for x in lines), lines
        assert "secret-value" not in traced.stderr
    finally:
        assert stop(peer) == 0
    log = peer.log()
    assert "Traceback" not in log
    short_a = AgentId.parse(ids["a"]).short
    assert f"[{short_a}@127.0.0.1:" in log  # the server names the peer and its address
