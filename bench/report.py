"""Turn the measured figures into ratios, a text table, JSON and an optional plot.

Ratios are m2mproto's figure divided by the anchor's, measured in the same
run on the same backend: the machine is shared and noisy, so only ratios are
claims. A ratio is ``None`` (JSON ``null``) when either side is missing.
``memory_vs_tls`` is bytes per idle connection, so lower is better there.
In-memory figures do not depend on the anyio backend; the same in-memory
ratios appear under both backends so each backend's object is complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import NOT_AVAILABLE

__all__ = ["RATIO_KEYS", "TARGETS", "compute_ratios", "render_table", "write_json", "write_plot"]

#: The ratio keys of the issue, in table order.
RATIO_KEYS: tuple[str, ...] = (
    "handshake_vs_tls",
    "bulk_vs_tls",
    "oneway_vs_tls",
    "rr_vs_tls",
    "memory_vs_tls",
    "inmem_handshake_vs_noiseprotocol",
    "inmem_handshake_vs_floor",
    "inmem_transport64k_vs_aead",
    "inmem_transport256_vs_aead",
)

#: Targets from the issue: (comparison, bound).
TARGETS: dict[str, tuple[str, float]] = {
    "handshake_vs_tls": (">=", 2.0),
    "bulk_vs_tls": (">=", 1.2),
    "oneway_vs_tls": (">=", 1.5),
    "rr_vs_tls": (">=", 1.2),
    "memory_vs_tls": ("<=", 0.5),
    "inmem_handshake_vs_noiseprotocol": (">=", 1.15),
    "inmem_handshake_vs_floor": (">=", 0.85),
    "inmem_transport64k_vs_aead": (">=", 0.9),
    "inmem_transport256_vs_aead": (">=", 0.6),
}

_NET_KEYS = {
    "handshake_vs_tls": "handshake_s",
    "bulk_vs_tls": "bulk_mb_s",
    "oneway_vs_tls": "oneway_msgs_s",
    "rr_vs_tls": "rr_s",
    "memory_vs_tls": "memory_bytes_per_conn",
}


def _div(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b > 0:
        return float(a) / float(b)
    return None


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def inmem_ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """The four backend-independent in-memory ratios."""
    m2m = results.get("inmem_m2m") or {}
    return {
        "inmem_handshake_vs_noiseprotocol": _div(
            m2m.get("handshakes_s"), _get(results, "noiseprotocol", "handshakes_s_sign")
        ),
        "inmem_handshake_vs_floor": _div(
            m2m.get("handshakes_s"), _get(results, "primitives", "floor", "handshakes_s")
        ),
        "inmem_transport64k_vs_aead": _div(
            m2m.get("transport64k_msgs_s"),
            _get(results, "primitives", "aead", "64k", "seal_open_msgs_s"),
        ),
        "inmem_transport256_vs_aead": _div(
            m2m.get("transport256_msgs_s"),
            _get(results, "primitives", "aead", "256", "seal_open_msgs_s"),
        ),
    }


def compute_ratios(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """The top-level ``ratios`` object: ``{"asyncio": {...}, "trio": {...}}``, every key present."""
    inmem = inmem_ratios(results)
    out: dict[str, dict[str, float | None]] = {}
    for backend in ("asyncio", "trio"):
        net = _get(results, "backends", backend) or {}
        row: dict[str, float | None] = {}
        for key, fig in _NET_KEYS.items():
            row[key] = _div(_get(net, "m2m", fig), _get(net, "tls", fig))
        row.update(inmem)
        out[backend] = {k: row[k] for k in RATIO_KEYS}
    return out


def concurrency_ratios(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per backend and concurrency level: m2mproto / TLS for bulk, one-way and round trips."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for backend, net in (results.get("backends") or {}).items():
        levels = _get(net, "tls", "concurrency") or {}
        out[backend] = {
            n: {
                fig: _div(
                    _get(net, "m2m", "concurrency", n, fig),
                    _get(net, "tls", "concurrency", n, fig),
                )
                for fig in ("bulk_mb_s", "oneway_msgs_s", "rr_s")
            }
            for n in levels
        }
    return out


def _num(x: Any, digits: int = 0) -> str:
    if not isinstance(x, int | float):
        return NOT_AVAILABLE
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def _ratio_cell(key: str, r: float | None) -> tuple[str, str]:
    if r is None:
        return "-", ""
    op, bound = TARGETS[key]
    ok = r >= bound if op == ">=" else r <= bound
    return f"{r:.2f}x", f"{op}{bound:g} {'met' if ok else 'MISSED'}"


def render_table(results: dict[str, Any]) -> str:
    """The human-readable table (figures, ratios and targets)."""
    ratios = results["ratios"]
    lines: list[str] = []
    meta = results.get("meta", {})
    lines.append(
        f"m2mproto benchmark ({'quick' if meta.get('quick') else 'full'} run, "
        f"{meta.get('duration')} s per figure, {meta.get('cpus')} CPUs). "
        "Ratios = m2mproto / anchor, same run; absolute numbers are this machine only."
    )
    w = "{:<44} {:>16} {:>16} {:>8}  {}"
    for backend, net in (results.get("backends") or {}).items():
        lines.append("")
        lines.append(
            w.format(f"Loopback, anyio backend {backend}", "m2mproto", "TLS 1.3", "ratio", "target")
        )
        m2m, tls = net.get("m2m") or {}, net.get("tls") or {}
        rows = [
            ("handshakes/s (connect+auth+1 request+close)", "handshake_s", "handshake_vs_tls", 0),
            ("bulk MB/s (64 KiB writes, 1 conn)", "bulk_mb_s", "bulk_vs_tls", 1),
            ("one-way msgs/s (256 B CBOR, 1 conn)", "oneway_msgs_s", "oneway_vs_tls", 0),
            ("round trips/s (1 conn)", "rr_s", "rr_vs_tls", 0),
            (
                f"memory bytes/idle conn ({tls.get('memory_conns', '?')} conns)",
                "memory_bytes_per_conn",
                "memory_vs_tls",
                0,
            ),
        ]
        for label, fig, rkey, digits in rows:
            cell, target = _ratio_cell(rkey, ratios[backend][rkey])
            lines.append(
                w.format(
                    label, _num(m2m.get(fig), digits), _num(tls.get(fig), digits), cell, target
                )
            )
        conc = concurrency_ratios(results).get(backend, {})
        for n, per in (tls.get("concurrency") or {}).items():
            for fig, label, digits in (
                ("bulk_mb_s", "bulk MB/s", 1),
                ("oneway_msgs_s", "one-way msgs/s", 0),
                ("rr_s", "round trips/s", 0),
            ):
                r = conc.get(n, {}).get(fig)
                lines.append(
                    w.format(
                        f"  {n:>4} conns: {label}",
                        _num(_get(m2m, "concurrency", n, fig), digits),
                        _num(per.get(fig), digits),
                        "-" if r is None else f"{r:.2f}x",
                        "",
                    )
                )
        for proto_name, proto in (("m2mproto", m2m), ("TLS", tls)):
            for phase, why in (proto.get("errors") or {}).items():
                lines.append(f"  ({proto_name} {phase} failed: {why})")
        if net.get("m2m_unavailable"):
            lines.append(f"  (m2mproto: {net['m2m_unavailable']})")

    inm = results.get("inmem_m2m") or {}
    prim = results.get("primitives") or {}
    noise = results.get("noiseprotocol") or {}
    any_ratios = next(iter(ratios.values()))
    lines.append("")
    lines.append(w.format("In memory (no sockets)", "m2mproto", "anchor", "ratio", "target"))
    rows2 = [
        (
            "XX handshakes/s vs noiseprotocol (+sign/chk)",
            inm.get("handshakes_s"),
            noise.get("handshakes_s_sign"),
            "inmem_handshake_vs_noiseprotocol",
        ),
        (
            "XX handshakes/s vs floor (2kg+6dh+2vfy)",
            inm.get("handshakes_s"),
            _get(prim, "floor", "handshakes_s"),
            "inmem_handshake_vs_floor",
        ),
        (
            "64 KiB msgs/s vs ChaCha20-Poly1305 seal+open",
            inm.get("transport64k_msgs_s"),
            _get(prim, "aead", "64k", "seal_open_msgs_s"),
            "inmem_transport64k_vs_aead",
        ),
        (
            "256 B msgs/s vs ChaCha20-Poly1305 seal+open",
            inm.get("transport256_msgs_s"),
            _get(prim, "aead", "256", "seal_open_msgs_s"),
            "inmem_transport256_vs_aead",
        ),
    ]
    for label, a, b, rkey in rows2:
        cell, target = _ratio_cell(rkey, any_ratios[rkey])
        lines.append(w.format(label, _num(a), _num(b), cell, target))
    hybrid = inm.get("handshakes_s_hybrid")
    r = _div(hybrid, inm.get("handshakes_s"))
    lines.append(
        w.format(
            "  (XXhfs hybrid PQ handshakes/s vs XX)",
            _num(hybrid),
            _num(inm.get("handshakes_s")),
            "-" if r is None else f"{r:.2f}x",
            "info",
        )
    )
    for name in ("64k", "256"):
        rec = inm.get(f"records{name}_msgs_s")
        aead = _get(prim, "aead", name, "seal_open_msgs_s")
        r = _div(rec, aead)
        lines.append(
            w.format(
                f"  (record layer only, {name}: msgs/s)",
                _num(rec),
                _num(aead),
                "-" if r is None else f"{r:.2f}x",
                "info",
            )
        )
    lines.append(
        w.format(
            "  (noiseprotocol, binding signed once/process)",
            "",
            _num(noise.get("handshakes_s_cached")),
            "",
            "info",
        )
    )
    for why in (inm.get("unavailable") or {}).values():
        lines.append(f"  (m2mproto: {why})")
    lines += _compiled_rows(results, w)

    lines.append("")
    lines.append("Primitives (cryptography): ops/s")
    for op, v in (prim.get("ops_s") or {}).items():
        lines.append(f"  {op:<20} {_num(v):>12}")
    for name, a in (prim.get("aead") or {}).items():
        lines.append(
            f"  chacha20poly1305 {name:>3}: seal {_num(a['seal_mb_s'], 0)} MB/s, "
            f"open {_num(a['open_mb_s'], 0)} MB/s, seal+open {_num(a['seal_open_msgs_s'])} msgs/s"
        )
    if prim.get("floor"):
        lines.append(
            f"  floor: {_num(prim['floor']['handshakes_s'])} handshakes/s "
            f"({prim['floor']['note']}); with signs {_num(prim['floor']['handshakes_s_with_sign'])}"
        )
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write every figure and the ratios as JSON (``null`` for what is unavailable)."""
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def check_plot_available() -> str | None:
    """``None`` if matplotlib can be imported, else a one-line error message."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib, which is not installed (pip install matplotlib)"
    return None


def write_plot(results: dict[str, Any], path: Path) -> None:
    """Draw throughput against message size and against concurrency, m2mproto vs the anchors."""
    import matplotlib  # type: ignore[import-not-found,unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    ax_size, ax_msgs, ax_bulk = axes
    sizes = [256, 64 * 1024]
    styles = {"asyncio": "-", "trio": "--"}
    for backend, net in (results.get("backends") or {}).items():
        for proto, label, color in (("m2m", "m2mproto", "C0"), ("tls", "TLS 1.3", "C1")):
            r = net.get(proto) or {}
            ys = [r.get("oneway_msgs_s"), r.get("bulk_mb_s")]
            if isinstance(ys[0], int | float) and isinstance(ys[1], int | float):
                ys = [ys[0] * 256 / 1e6, ys[1]]
                ax_size.plot(
                    sizes,
                    ys,
                    styles.get(backend, "-"),
                    color=color,
                    marker="o",
                    label=f"{label} loopback ({backend})",
                )
            conc = r.get("concurrency") or {}
            ns = [int(n) for n in conc]
            for fig_key, ax, marker in (
                ("oneway_msgs_s", ax_msgs, "o"),
                ("rr_s", ax_msgs, "s"),
                ("bulk_mb_s", ax_bulk, "o"),
            ):
                ys2 = [conc[str(n)].get(fig_key) for n in ns]
                if ns and all(isinstance(y, int | float) for y in ys2):
                    ax.plot(
                        ns,
                        ys2,
                        styles.get(backend, "-"),
                        color=color,
                        marker=marker,
                        label=f"{label} {fig_key} ({backend})",
                    )
    prim = results.get("primitives") or {}
    inm = results.get("inmem_m2m") or {}
    aead = [_get(prim, "aead", n, "seal_open_mb_s") for n in ("256", "64k")]
    if all(isinstance(y, int | float) for y in aead):
        ax_size.plot(sizes, aead, ":", color="k", marker="^", label="ChaCha20-Poly1305 seal+open")
    ys3 = [inm.get("transport256_mb_s"), inm.get("transport64k_mb_s")]
    if all(isinstance(y, int | float) for y in ys3):
        ax_size.plot(sizes, ys3, ":", color="C0", marker="^", label="m2mproto in memory")
    ax_size.set(
        xscale="log",
        yscale="log",
        xlabel="message size (bytes)",
        ylabel="MB/s",
        title="Throughput vs message size",
    )
    ax_msgs.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent connections",
        ylabel="messages or round trips /s",
        title="Small messages vs concurrency",
    )
    ax_bulk.set(
        xscale="log",
        xlabel="concurrent connections",
        ylabel="MB/s",
        title="Bulk (64 KiB writes) vs concurrency",
    )
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _compiled_rows(results: dict[str, Any], w: str) -> list[str]:
    """The in-memory figures of the pure and the mypyc-compiled build side by side."""
    comp = results.get("inmem_m2m_compiled")
    why = (results.get("meta") or {}).get("compiled_unavailable")
    if comp is None:
        return [f"  (compiled build: {why})"] if why else []
    pure = results.get("inmem_m2m") or {}
    head = w.format("In memory: pure vs compiled (mypyc)", "pure", "compiled", "speed-up", "")
    lines = ["", head]
    for label, key in (
        ("XX handshakes/s", "handshakes_s"),
        ("XXhfs handshakes/s", "handshakes_s_hybrid"),
        ("64 KiB msgs/s", "transport64k_msgs_s"),
        ("256 B msgs/s", "transport256_msgs_s"),
        ("record layer 64 KiB msgs/s", "records64k_msgs_s"),
        ("record layer 256 B msgs/s", "records256_msgs_s"),
    ):
        a, b = pure.get(key), comp.get(key)
        r = _div(b, a)
        lines.append(
            w.format(label, _num(a), _num(b), "-" if r is None else f"{r:.2f}x", "info")
        )
    return lines
