"""The conformance runner in-process: the reference implementation passes every case,
the runner notices a wrong implementation, and the reports have the documented shape."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from m2m_interop import runner
from m2m_interop.framework import CASES, Case, select
from m2m_interop.inprocess import InProcessLink, IUTProfile
from m2mproto.cli import main
from m2mproto.errors import ErrorCode

SPEC = Path(__file__).resolve().parents[2] / "spec"


@pytest.fixture(scope="module")
def results() -> list[runner.Result]:
    return runner.run_cases(CASES)


def test_catalog_size_and_numbering() -> None:
    assert len(CASES) >= 80
    assert sum(c.hostile for c in CASES) >= 50
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    for c in CASES:
        assert re.fullmatch(r"[1-7]\.\d+/\d+", c.id), c.id
        assert c.requirement and c.name
    # every spec chapter with a section table entry has cases
    assert {c.chapter for c in CASES} == {"1", "2", "3", "4", "5", "6", "7"}


def test_every_case_cites_an_existing_spec_section() -> None:
    headings: set[str] = set()
    for path in SPEC.glob("*.md"):
        headings |= set(re.findall(r"^#+ (\d+(?:\.\d+)?)\b", path.read_text(), re.M))
    # records/frames/streams number their sections 1..n inside chapters 3/4/5
    for c in CASES:
        major, minor = c.section.split(".")
        assert int(minor) >= 1 and major in {"1", "2", "3", "4", "5", "6", "7"}
    assert "2.5" in headings and "6.6" in headings
    # application.md numbers its sections 7.n: every 7.x case names a real heading
    assert {c.section for c in CASES if c.chapter == "7"} <= headings


def test_reference_implementation_passes(results: list[runner.Result]) -> None:
    bad = [
        (r.case.id, r.result, r.actual.describe() if r.actual else None, r.note)
        for r in results
        if r.result not in ("PASS", "XFAIL")
    ]
    assert bad == []
    xfail = {r.case.id for r in results if r.result == "XFAIL"}
    assert xfail == set(runner.EXPECTED_FAILURES)


def test_hostile_cases_ran_sanity_before_and_after(results: list[runner.Result]) -> None:
    for r in results:
        if r.case.hostile:
            assert r.sanity_before == "ok", r.case.id
            assert r.sanity_after == "ok", r.case.id
        else:
            assert r.sanity_before == r.sanity_after == "skipped"


def test_census_reaches_every_wire_code(results: list[runner.Result]) -> None:
    counts = runner.census(results)
    missing = [c.name for c in ErrorCode if c.is_wire and not counts[c.name]]
    assert missing == []
    # and every handshake-detail and token reason code as a local code
    local = [c.name for c in ErrorCode if 0x100 <= c < 0x300 and not counts[c.name]]
    assert local == []


def _mutant(**config: Any) -> Any:
    def make(profile: IUTProfile) -> InProcessLink:
        return InProcessLink(replace(profile, config={**profile.config, **config}))

    return make


def _ids(*ids: str) -> list[Case]:
    chosen = [c for c in CASES if c.id in ids]
    assert len(chosen) == len(ids)
    return chosen


@pytest.mark.parametrize(
    ("config", "failing"),
    [
        ({"max_no_progress_frames": 33}, {"5.6/4"}),  # 33 empty records accepted
        ({"max_no_progress_frames": 31}, {"5.6/3"}),  # 32 refused
        ({"max_key_updates_without_data": 33}, {"3.4/6"}),
        ({"max_queued_control": 255}, {"5.6/13"}),
        ({"stream_churn_burst": 201}, {"5.6/16"}),
    ],
)
def test_boundary_pairs_detect_a_wrong_limit(config: dict[str, Any], failing: set[str]) -> None:
    """An IUT whose limit is off by one fails exactly the case on the wrong side."""
    pairs = {
        "max_no_progress_frames": ("5.6/3", "5.6/4"),
        "max_key_updates_without_data": ("3.4/5", "3.4/6"),
        "max_queued_control": ("5.6/13", "5.6/14"),
        "stream_churn_burst": ("5.6/15", "5.6/16"),
    }
    (key,) = config
    res = runner.run_cases(_ids(*pairs[key]), _mutant(**config))
    assert {r.case.id for r in res if r.result == "FAIL"} == failing


class _NoCloseLink(InProcessLink):
    """An IUT transport that loses everything after the handshake once the IUT closes."""

    def read(self) -> bytes:
        out = super().read()
        return b"" if self.iut_closed and self.conn.peer is not None else out


def test_missing_close_frame_fails_conn_error_cases() -> None:
    chosen = _ids("3.1/7", "4.2/3", "5.3/6")
    res = runner.run_cases(chosen, _NoCloseLink, sanity=False)
    assert [r.result for r in res] == ["FAIL"] * 3
    assert all(r.actual is not None and r.actual.kind == "abort" for r in res)


def test_expected_failure_that_passes_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(runner.EXPECTED_FAILURES, "3.1/7", "pretend")
    (r,) = runner.run_cases(_ids("3.1/7"))
    assert r.result == "XPASS"
    assert runner.summary([r])["failed"] == 1


def test_select_patterns() -> None:
    assert {c.id for c in select(CASES, ["3.4"])} == {c.id for c in CASES if c.section == "3.4"}
    assert [c.id for c in select(CASES, ["2.1/1"])] == ["2.1/1"]
    assert {c.id for c in select(CASES, ["5.6/1*"])} >= {"5.6/1", "5.6/10", "5.6/17"}
    assert [c.name for c in select(CASES, ["Record-Replay"])] == ["Record-Replay"]


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["interop", "run", "--list", "--case", "2.5"]) == 0
    out = capsys.readouterr().out
    assert "HS-Identity-Untrusted" in out and "2.5 step 6" in out
    assert "2.3/1" not in out


def test_cli_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jpath, xpath = tmp_path / "r.json", tmp_path / "r.xml"
    code = main(
        [
            "interop",
            "run",
            "--case",
            "3.1",
            "--case",
            "2.8",
            "--json",
            str(jpath),
            "--junit",
            str(xpath),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "record layer" in out and "CENSUS" in out
    doc = json.loads(jpath.read_text())
    s = doc["summary"]
    assert all(isinstance(s[k], int) for k in ("total", "passed", "failed", "skipped"))
    assert s["total"] == len(doc["cases"]) == len(select(CASES, ["3.1", "2.8"]))
    assert s["failed"] == 0 and s["passed"] + s["xfail"] == s["total"]
    for c in doc["cases"]:
        assert {"id", "section", "requirement", "expected", "actual"} <= set(c)
    tree = ET.parse(xpath).getroot()
    suites = tree.findall("testsuite")
    assert {x.get("name") for x in suites} == {"2 handshake", "3 record layer"}
    assert sum(int(x.get("tests", "0")) for x in suites) == s["total"]
    assert not tree.findall(".//failure")


def test_cli_exit_code_on_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(runner.EXPECTED_FAILURES, "3.1/7", "pretend")
    assert main(["interop", "run", "-q", "--case", "3.1/7"]) == 1
    assert "XPASS" in capsys.readouterr().out
    assert main(["interop", "run", "--case", "no-such-case"]) == 2
