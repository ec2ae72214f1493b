"""The conformance runner: runs the case catalog and reports (``m2m interop run``).

Theory of operation
-------------------
For each selected case the runner (1) runs a benign session (handshake, echo,
PING, graceful close) against a fresh IUT connection with the case's profile,
(2) runs the case script, which returns what it observed, (3) runs the benign
session again, so a case that killed the IUT cannot pass, and (4) compares the
observation with the case's expectation. Results are PASS, FAIL, XFAIL (a
failure listed in :data:`EXPECTED_FAILURES`), XPASS (a listed case that now
passes: fails the run), SKIP and ERROR (the runner could not carry the
case out). The census counts, per error code of the registry, the passing
cases that observed it on the wire or locally.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from xml.etree import ElementTree as ET

from m2mproto import __version__
from m2mproto.errors import ErrorCode

from . import (  # noqa: F401
    cases_handshake,
    cases_records,
    cases_request_reply,
    cases_streams,
    cases_tokens,
)
from .framework import CASES, Actual, Case, CaseError, Ctx, select
from .inprocess import IUTProfile, make_link
from .netlink import Unsupported
from .peer import Link, PeerError

__all__ = ["EXPECTED_FAILURES", "Result", "main", "run_cases"]

#: Case ID -> reason. A listed case that fails is XFAIL; one that passes is XPASS (fails).
#: Entries about a local code only apply where local codes are visible (LOCAL_ONLY_XFAIL).
EXPECTED_FAILURES: dict[str, str] = {}

#: Expected failures that concern the local code only (not visible over plain TCP).
LOCAL_ONLY_XFAIL: frozenset[str] = frozenset()

#: Spec chapters, for the report.
CHAPTERS = {
    "1": "identity",
    "2": "handshake",
    "3": "record layer",
    "4": "frames",
    "5": "streams, flow control, close",
    "6": "tokens & authorization",
    "7": "application conventions",
}


@dataclass
class Result:
    """The outcome of one case."""

    case: Case
    result: str
    actual: Actual | None = None
    sanity_before: str = "skipped"
    sanity_after: str = "skipped"
    duration: float = 0.0
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        c = self.case
        return {
            "id": c.id,
            "name": c.name,
            "section": c.section,
            "requirement": c.requirement,
            "hostile": c.hostile,
            "expected": c.expect.to_json(),
            "actual": self.actual.to_json() if self.actual else None,
            "result": self.result,
            "sanity_before": self.sanity_before,
            "sanity_after": self.sanity_after,
            "duration_ms": round(self.duration * 1000, 2),
            "note": self.note,
        }


def benign(make: Callable[[IUTProfile], Link], profile: IUTProfile) -> str:
    """A full benign session; returns ``"ok"`` or what went wrong."""
    ctx = Ctx(make, profile)
    # An IUT that requires the hybrid suite refuses a classical benign session.
    bugs = {"pattern": "XXhfs"} if profile.config.get("require_post_quantum") else {}
    try:
        s = ctx.session(**bugs)
        echoed, _ = s.echo({"sanity": True})
        pinged, _ = s.ping(b"sanity")
        got = s.close()
        wait = getattr(s.link, "wait_closed", None)
        if wait is not None:
            wait(1.0)
    except (CaseError, PeerError, OSError) as exc:
        return f"failed: {exc}"
    finally:
        _close_links(ctx.links)
    if not echoed or not pinged:
        return "failed: no echo" if not echoed else "failed: no PONG"
    if got.close_code() != ErrorCode.NO_ERROR or not s.link.iut_closed:
        return "failed: graceful close not answered"
    return "ok"


def _matches(case: Case, actual: Actual) -> bool:
    exp = case.expect
    if actual.kind != exp.kind:
        return False
    if exp.kind == "ok":
        return True
    if actual.wire != exp.wire:
        return False
    return exp.local is None or actual.local is None or actual.local == exp.local


#: What each attachment offers (see ``Case.needs``).
_ALL = frozenset(
    {"iut-keys", "trust-list", "iut-identity", "revocations", "frozen-clock", "app-profile"}
)
CAPABILITIES = {"in-process": _ALL, "shim": _ALL, "tcp": frozenset()}


def _close_links(links: Sequence[Link]) -> None:
    for link in links:
        close = getattr(link, "close", None)
        if close is not None:
            close()


def run_case(
    case: Case,
    make: Callable[[IUTProfile], Link],
    *,
    sanity: bool = True,
    capabilities: frozenset[str] = CAPABILITIES["in-process"],
) -> Result:
    """Run one case with its sanity sessions; never raises."""
    start = time.perf_counter()
    res = Result(case, "ERROR")
    missing = case.needs - capabilities
    if missing:
        res.result, res.note = "SKIP", f"attachment lacks {', '.join(sorted(missing))}"
        return res
    ctx: Ctx | None = None
    try:
        if sanity and case.hostile:
            res.sanity_before = benign(make, case.profile)
            if res.sanity_before != "ok":
                res.note = f"sanity before: {res.sanity_before}"
                return res
        ctx = Ctx(make, case.profile)
        actual = case.run(ctx)
        _close_links(ctx.links)
        res.actual = actual
        if sanity and case.hostile:
            res.sanity_after = benign(make, case.profile)
        passed = _matches(case, actual) and res.sanity_after in ("ok", "skipped")
        if res.sanity_after not in ("ok", "skipped"):
            res.note = f"iut_dead: {res.sanity_after}"
        if case.id in LOCAL_ONLY_XFAIL and actual.local is None:
            res.result = "PASS" if passed else "FAIL"
        elif case.id in EXPECTED_FAILURES:
            res.result = "XPASS" if passed else "XFAIL"
            res.note = res.note or EXPECTED_FAILURES[case.id]
        else:
            res.result = "PASS" if passed else "FAIL"
    except Unsupported as exc:
        res.result, res.note, res.actual = "SKIP", str(exc), None
    except (CaseError, PeerError) as exc:
        res.note = f"runner: {exc}"
    except Exception as exc:  # a runner bug or an exception leaking from the IUT
        res.note = f"{type(exc).__name__}: {exc} | " + traceback.format_exc(limit=3).replace(
            "\n", " "
        )
        res.actual = Actual("exception", detail=f"{type(exc).__name__}: {exc}")
        res.result = "FAIL"
    finally:
        if ctx is not None:
            _close_links(ctx.links)
        res.duration = time.perf_counter() - start
    return res


def run_cases(
    cases: Sequence[Case],
    make: Callable[[IUTProfile], Link] = make_link,
    *,
    sanity: bool = True,
    progress: Callable[[Result, int, int], None] | None = None,
    capabilities: frozenset[str] = CAPABILITIES["in-process"],
) -> list[Result]:
    out = []
    for i, c in enumerate(cases, 1):
        r = run_case(c, make, sanity=sanity, capabilities=capabilities)
        out.append(r)
        if progress is not None:
            progress(r, i, len(cases))
    return out


# ------------------------------------------------------------------ reports


def census(results: Sequence[Result]) -> dict[str, int]:
    """Passing cases per registry code (observed on the wire or locally)."""
    counts = {c.name: 0 for c in ErrorCode}
    for r in results:
        if r.result != "PASS" or r.actual is None:
            continue
        seen = {r.actual.wire, r.actual.local, r.case.expect.wire, r.case.expect.local}
        seen |= set(r.actual.also)
        for name in seen:
            if name in counts:
                counts[name] += 1
    return counts


def summary(results: Sequence[Result]) -> dict[str, int]:
    s = {
        "total": len(results),
        "passed": 0,
        "failed": 0,
        "skipped": 0,
        "xfail": 0,
        "xpass": 0,
        "error": 0,
        "hostile": 0,
    }
    for r in results:
        s["hostile"] += int(r.case.hostile)
        if r.result == "PASS":
            s["passed"] += 1
        elif r.result in ("FAIL", "XPASS", "ERROR"):
            s["failed"] += 1
            s[r.result.lower()] = s.get(r.result.lower(), 0) + (r.result != "FAIL")
        elif r.result == "XFAIL":
            s["xfail"] += 1
        elif r.result == "SKIP":
            s["skipped"] += 1
    return s


def write_json(path: Path, results: Sequence[Result], duration: float, attach: str) -> None:
    wire = {c.name for c in ErrorCode if c.is_wire}
    reached = {k for k, v in census(results).items() if v}
    doc = {
        "format": "m2m-conform-results/1",
        "runner": {"version": __version__, "duration_s": round(duration, 3)},
        "iut": {"name": "m2mproto-py", "version": __version__, "attach": attach},
        "summary": summary(results),
        "census": census(results),
        "wire_codes_not_reached": sorted(wire - reached),
        "cases": [r.to_json() for r in results],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def write_junit(path: Path, results: Sequence[Result]) -> None:
    root = ET.Element("testsuites", name="m2m-conform")
    by_chapter: dict[str, list[Result]] = {}
    for r in results:
        by_chapter.setdefault(r.case.chapter, []).append(r)
    for chapter, rs in sorted(by_chapter.items(), key=lambda kv: int(kv[0])):
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"{chapter} {CHAPTERS.get(chapter, '')}",
            tests=str(len(rs)),
            failures=str(sum(r.result in ("FAIL", "XPASS") for r in rs)),
            errors=str(sum(r.result == "ERROR" for r in rs)),
            skipped=str(sum(r.result in ("SKIP", "XFAIL") for r in rs)),
            time=f"{sum(r.duration for r in rs):.3f}",
        )
        for r in rs:
            tc = ET.SubElement(
                suite,
                "testcase",
                classname=f"m2m.{r.case.section}",
                name=f"{r.case.id} {r.case.name}",
                time=f"{r.duration:.4f}",
            )
            msg = _failure_message(r)
            if r.result in ("FAIL", "XPASS"):
                ET.SubElement(tc, "failure", message=msg).text = r.case.requirement
            elif r.result == "ERROR":
                ET.SubElement(tc, "error", message=msg).text = r.note
            elif r.result in ("SKIP", "XFAIL"):
                ET.SubElement(tc, "skipped", message=r.note or r.result)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _failure_message(r: Result) -> str:
    got = r.actual.describe() if r.actual else "nothing"
    out = f"expected {r.case.expect.describe()}, got {got}"
    return out + (f" ({r.note})" if r.note else "")


def print_report(results: Sequence[Result], duration: float, out: TextIO) -> None:
    print(
        f"\n {'§':<3} {'section':<30} {'total':>5} {'pass':>5} {'fail':>5} {'xfail':>5} "
        f"{'err':>4} {'time':>7}",
        file=out,
    )
    by_chapter: dict[str, list[Result]] = {}
    for r in results:
        by_chapter.setdefault(r.case.chapter, []).append(r)
    for chapter, rs in sorted(by_chapter.items(), key=lambda kv: int(kv[0])):
        print(
            f" {chapter:<3} {CHAPTERS.get(chapter, ''):<30} {len(rs):>5} "
            f"{sum(r.result == 'PASS' for r in rs):>5} "
            f"{sum(r.result in ('FAIL', 'XPASS') for r in rs):>5} "
            f"{sum(r.result == 'XFAIL' for r in rs):>5} "
            f"{sum(r.result == 'ERROR' for r in rs):>4} "
            f"{sum(r.duration for r in rs):>6.2f}s",
            file=out,
        )
    skipped = [r for r in results if r.result == "SKIP"]
    if skipped:
        reasons: dict[str, int] = {}
        for r in skipped:
            reasons[r.note] = reasons.get(r.note, 0) + 1
        print(" SKIPPED", file=out)
        for note, n in sorted(reasons.items()):
            print(f"   {n:>3} x {note}", file=out)
    bad = [r for r in results if r.result in ("FAIL", "XPASS", "ERROR")]
    if bad:
        print(" FAILED", file=out)
        for r in bad:
            print(f"   {r.case.id:<8} {r.case.name}  [{r.result}] {_failure_message(r)}", file=out)
    xf = [r for r in results if r.result == "XFAIL"]
    if xf:
        print(" EXPECTED FAILURES", file=out)
        for r in xf:
            print(f"   {r.case.id:<8} {r.case.name}: {r.note}", file=out)
    counts = census(results)
    wire = [c for c in ErrorCode if c.is_wire]
    print(" CENSUS (passing cases per code; * = wire code)", file=out)
    line = []
    for c in ErrorCode:
        mark = "*" if c.is_wire else " "
        line.append(f"{mark}{c.name}={counts[c.name]}")
    for i in range(0, len(line), 5):
        print("   " + "  ".join(line[i : i + 5]), file=out)
    missing = [c.name for c in wire if not counts[c.name]]
    if missing:
        print(f"   wire codes not reached: {', '.join(missing)}", file=out)
    s = summary(results)
    print(
        f" TOTAL {s['total']}  HOSTILE {s['hostile']}  PASS {s['passed']}  FAIL {s['failed']}  "
        f"XFAIL {s['xfail']}  SKIP {s['skipped']}   {duration:.1f}s",
        file=out,
    )


def main(args: argparse.Namespace) -> int:
    """``m2m interop run``."""
    cases = select(CASES, list(args.case or []))
    out = sys.stdout
    if args.list:
        for c in cases:
            kind = "hostile " if c.hostile else "positive"
            print(f"{c.id:<8} {kind} {c.name:<40} {c.expect.describe()}", file=out)
            print(f"         {c.requirement}", file=out)
        print(f"{len(cases)} cases ({sum(c.hostile for c in cases)} hostile)", file=out)
        return 0
    if not cases:
        print("m2m: no case matches", file=sys.stderr)
        return 2
    make: Callable[[IUTProfile], Link] = make_link
    attach = "in-process"
    if getattr(args, "target", None) and getattr(args, "shim", None):
        print("m2m: --target and --shim are exclusive", file=sys.stderr)
        return 2
    if getattr(args, "target", None):
        from m2mproto.identity import Identity
        from m2mproto.transport import parse_hostport

        from . import mint
        from .netlink import tcp_factory

        if not args.root_key:
            print("m2m: --target needs --root-key FILE (the root the peer trusts)", file=sys.stderr)
            return 2
        mint.set_root(Identity.load(args.root_key), int(time.time()))
        host, port = parse_hostport(args.target)
        make, attach = tcp_factory(host, port), "tcp"
    elif getattr(args, "shim", None):
        from .netlink import shim_factory

        make, attach = shim_factory(args.shim), "shim"
    print(f"m2m-conform {__version__}  iut={attach}  cases={len(cases)}", file=out)

    def progress(r: Result, i: int, n: int) -> None:
        if not args.quiet:
            print(f" [{i:>3}/{n}] {r.result:<5} {r.case.id:<8} {r.case.name}", file=out)

    t0 = time.perf_counter()
    results = run_cases(
        cases,
        make,
        sanity=not args.no_sanity,
        progress=progress,
        capabilities=CAPABILITIES[attach],
    )
    duration = time.perf_counter() - t0
    print_report(results, duration, out)
    if attach == "tcp":
        print(" (tcp: only wire behaviour is checked; local codes are not visible)", file=out)
    if args.json:
        write_json(args.json, results, duration, attach)
    if args.junit:
        write_junit(args.junit, results)
    failed = sum(r.result in ("FAIL", "XPASS", "ERROR") for r in results)
    return 1 if failed else 0
