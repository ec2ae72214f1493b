"""The documentation: generated references are complete, links resolve, code in it runs.

The site itself is built by ``make docs`` (mkdocs --strict); these tests check the
same things without MkDocs, plus what a build cannot see (the tutorial's shell
session runs as written, the package's ``dir()``/``help()``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SPEC = ROOT / "spec"


def load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("m2m_docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = load_hooks()


# ------------------------------------------------------------------ dir() and help()


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_dir_lists_lazy_transport_names_without_importing_them() -> None:
    out = run_python(
        "import sys, m2mproto\n"
        "names = dir(m2mproto)\n"
        "print(sorted(set(m2mproto.__all__) - set(names)))\n"
        "print([n for n in ('connect', 'Server', 'Session') if n in names])\n"
        "print('anyio' in sys.modules)\n"
    )
    missing, shown, anyio_loaded = out.splitlines()
    assert missing == "[]"
    assert shown == "['connect', 'Server', 'Session']"
    assert anyio_loaded == "False"  # dir() must not load the transport


def test_all_names_resolve() -> None:
    import m2mproto

    for name in ("connect", "Server", "Session"):
        assert name in m2mproto.__all__
    for name in m2mproto.__all__:
        assert getattr(m2mproto, name) is not None


def test_help_shows_connect_server_session() -> None:
    out = run_python(
        "import m2mproto, pydoc\nprint(pydoc.render_doc(m2mproto, renderer=pydoc.plaintext))"
    )
    assert re.search(r"^\s+class Server\b", out, re.M), out
    assert re.search(r"^\s+class Session\b", out, re.M), out
    assert re.search(r"^\s+connect\(address", out, re.M), out


# ------------------------------------------------------------------ configuration reference


def test_configuration_reference_documents_every_field() -> None:
    from m2mproto.config import AuthorizationPolicy, Configuration

    page = hooks.configuration_reference()
    for cls in (Configuration, AuthorizationPolicy):
        for field in dataclasses.fields(cls):
            rows = [line for line in page.splitlines() if f'id="{field.name}"' in line]
            assert len(rows) >= 1, f"{cls.__name__}.{field.name} missing from the reference"
            # Split on the pipes outside code spans (a type may be `float | None`).
            cells = re.split(r" \| (?=(?:[^`]*`[^`]*`)*[^`]*$)", rows[0].strip("| "))
            name, type_, default, meaning = cells
            assert f"`{field.name}`" in name
            assert type_.strip("` "), field.name
            assert meaning.strip(), f"{field.name} has no description"
            if isinstance(field.default, int) and not isinstance(field.default, bool):
                value = field.default
                assert f"`{value}`" in default or f"{value:,}" in default, (field.name, default)


@dataclasses.dataclass
class _Partly:  # a field without its doc comment: the generator must refuse it
    #: Documented.
    a: int = 1
    b: int = 2


def test_configuration_reference_refuses_an_undocumented_field() -> None:
    with pytest.raises(ValueError, match=r"_Partly\.b has no"):
        hooks.dataclass_table(_Partly)


# ------------------------------------------------------------------ CLI reference


def test_cli_reference_documents_every_command_and_option() -> None:
    page = hooks.cli_reference()
    commands = hooks.cli_commands()
    names = [full for full, _help, _parser in commands]
    for expected in ("m2m keygen", "m2m token issue", "m2m serve", "m2m interop run"):
        assert expected in names
    for full, _help, parser in commands:
        assert re.search(rf"^#+ `{re.escape(full)}`$", page, re.M), full
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            for option in action.option_strings:
                assert f"`{option}`" in page, f"{full} {option}"


# ------------------------------------------------------------------ spec pages


def test_every_spec_file_is_rendered_unchanged_and_in_the_nav() -> None:
    pages = hooks.spec_pages()
    files = sorted(p.name for p in SPEC.glob("*.md"))
    assert sorted(Path(k).name for k in pages) == files
    for name in files:
        assert pages[f"spec/{name}"] == (SPEC / name).read_text(encoding="utf-8")
    nav = [next(iter(entry.values())) for entry in hooks.spec_nav()]
    assert sorted(nav) == [f"spec/{name}" for name in files]
    assert nav[0] == "spec/README.md"


# ------------------------------------------------------------------ links and snippets


def site_pages() -> dict[str, str]:
    """Every page of the site by its path under docs/ (hand-written and generated)."""
    pages = {
        p.relative_to(DOCS).as_posix(): p.read_text(encoding="utf-8")
        for p in DOCS.rglob("*.md")
    }
    pages.update(hooks.generated_pages())
    return pages


def anchors(text: str) -> set[str]:
    """Heading slugs (MkDocs' default toc slugify) and explicit ids of a page."""
    found = set(re.findall(r'id="([\w-]+)"', text))
    found |= set(re.findall(r"^::: ([\w.]+)", text, re.M))  # mkdocstrings: the object's path
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M):
        plain = re.sub(r"[`*]", "", heading)
        slug = re.sub(r"[^\w\s-]", "", plain).strip().lower()
        found.add(re.sub(r"[-\s]+", "-", slug))
    return found


def test_every_relative_link_resolves() -> None:
    pages = site_pages()
    checked = 0
    for path, text in pages.items():
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for target, fragment in re.findall(r"\]\(([^)#\s]*)(#[^)\s]*)?\)", prose):
            if re.match(r"^[a-z]+:", target):
                continue  # external: not checked offline
            resolved = (
                os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
            )
            assert resolved in pages, f"{path}: link to {target} (not a page of the site)"
            if fragment:
                assert fragment[1:] in anchors(pages[resolved]), f"{path}: {target}{fragment}"
            checked += 1
    assert checked > 50


def test_every_snippet_include_exists_and_every_example_is_shown() -> None:
    included = set()
    for path, text in site_pages().items():
        for target in re.findall(r'^--8<-- "([^"]+)"$', text, re.M):
            assert (ROOT / target).is_file(), f"{path}: snippet {target} not found"
            included.add(target)
    examples = {f"examples/{p.name}" for p in (ROOT / "examples").glob("*.py")}
    assert examples <= included, f"not shown in the docs: {sorted(examples - included)}"


def test_python_fragments_in_the_docs_parse() -> None:
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    count = 0
    for path, text in site_pages().items():
        if path.startswith("spec/"):
            continue
        for block in re.findall(r"```python\n(.*?)```", text, re.S):
            if block.startswith("--8<--"):
                continue
            compile(block, path, "exec", flags=flags)
            count += 1
    assert count >= 5


# ------------------------------------------------------------------ tutorial shell session


def tutorial_shell() -> str:
    text = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    section = text.split("<!-- tutorial-shell:start -->")[1].split("<!-- tutorial-shell:end -->")[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


@pytest.mark.slow
def test_tutorial_shell_session_runs_as_written(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    if not (bindir / "m2m").exists():
        pytest.skip("the m2m console script is not installed next to this interpreter")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(
        ["bash", "-e", "-c", tutorial_shell()],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so a timeout can stop the background m2m serve too
    )
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"tutorial session timed out:\n{out}\n{err}")
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert any(line.startswith("valid: held by m2m1") for line in lines), out
    assert '{"hello": "world"}' in lines
    assert "log refused: exit 5" in lines
    assert "bob refused: exit 6" in lines
    assert '{"hello": "alice"}' in lines
    assert "m2m: UNAUTHORIZED:" in err and "m2m: TOKEN_INVALID:" in err


# ------------------------------------------------------------------ the real build


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (make docs does)")
    pytest.importorskip("mkdocstrings")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for page in ("index.html", "tutorial.html", "reference/configuration.html",
                 "reference/cli.html", "spec/index.html", "spec/handshake.html",
                 "reference/api/transport.html"):  # fmt: skip
        assert (tmp_path / page).is_file(), page
    config_html = (tmp_path / "reference/configuration.html").read_text()
    assert 'id="max_handshake_tokens"' in config_html
