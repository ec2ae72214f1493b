"""MkDocs hook: pages generated at build time from the code and from spec/.

Nothing here is copied by hand, so the site cannot drift from the source:

* ``reference/configuration.md``: every field of ``m2mproto.config.Configuration``
  (and ``AuthorizationPolicy``) with its type, default and ``#:`` doc comment;
* ``reference/cli.md``: every ``m2m`` command and option, walked from the
  argparse parsers that ``m2m`` itself uses;
* ``spec/*.md``: the normative specification files, as they are in ``spec/``
  (same relative names, so links between spec files keep working).

The generators are plain functions (no MkDocs import) so tests/test_docs.py can
check them without building the site.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC_DIR = ROOT / "spec"

CONFIG_PAGE = "reference/configuration.md"
CLI_PAGE = "reference/cli.md"


# ------------------------------------------------------------------ helpers


def _rst_to_md(text: str) -> str:
    """The few reST constructs our doc comments use, as Markdown."""
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    text = re.sub(r"``(.+?)``", r"`\1`", text)
    return text


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (a pipe inside a code span needs no escape)."""
    parts = re.split(r"(`[^`]*`)", text.replace("\n", " "))
    return "".join(p if p.startswith("`") else p.replace("|", "\\|") for p in parts)


def _field_comments(cls: type) -> dict[str, tuple[str, str, str]]:
    """``{field: (annotation source, default source, doc comment)}`` from *cls*'s source.

    The doc comment is the block of ``#:`` lines right above the field.
    """
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    tree = ast.parse(source)
    node = tree.body[0]
    assert isinstance(node, ast.ClassDef)
    found: dict[str, tuple[str, str, str]] = {}
    for item in node.body:
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        comment: list[str] = []
        row = item.lineno - 2  # the line above, 0-based
        while row >= 0 and lines[row].strip().startswith("#:"):
            comment.insert(0, lines[row].strip()[2:].strip())
            row -= 1
        annotation = ast.get_source_segment(source, item.annotation) or ""
        default = ast.get_source_segment(source, item.value) if item.value else ""
        found[item.target.id] = (annotation, default or "", " ".join(comment))
    return found


def _default_text(field: dataclasses.Field[Any], source: str) -> str:
    """The default as written in the source, plus its value when that differs."""
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        return f"`{value!r}`"
    else:  # pragma: no cover - every Configuration field has a default
        return "required"
    shown = f"`{source}`"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and repr(value) != source:
        shown += f" (= {value:,})" if isinstance(value, int) else f" (= {value!r})"
    return shown


def dataclass_table(cls: type) -> str:
    """A Markdown table of *cls*'s fields: name, type, default, doc comment.

    Raises:
        ValueError: a field has no ``#:`` doc comment (the reference would be empty).
    """
    comments = _field_comments(cls)
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        annotation, default_source, doc = comments[field.name]
        if not doc:
            raise ValueError(f"{cls.__name__}.{field.name} has no '#:' doc comment")
        rows.append(
            f"| <a id=\"{field.name}\"></a>`{field.name}` | {_cell(f'`{annotation}`')} "
            f"| {_cell(_default_text(field, default_source))} | {_cell(_rst_to_md(doc))} |"
        )
    return "\n".join(rows)


# ------------------------------------------------------------------ Configuration


def configuration_reference() -> str:
    """The Markdown page documenting every ``Configuration`` field."""
    from m2mproto.config import AuthorizationPolicy, Configuration, TransportParameters

    return f"""# Configuration reference

<!-- Generated from m2mproto/config.py by docs/hooks.py at build time:
     edit the code, not this page. -->

`m2mproto.config.Configuration` holds the limits, windows, timers and hooks of one
connection. Every field has a safe default; pass only what you change:

```python
from m2mproto.config import Configuration

config = Configuration(max_message_size=64 * 1024, idle_timeout=60.0)
```

Give it to `connect(..., config=config)`, `Server(..., config=config)`,
`ReliableSender(..., config=config)` or the sans-IO `Connection(role, identity, config)`.
It is a frozen dataclass: derive a variant with `dataclasses.replace(config, ...)`. An
out-of-range value raises `LocalProtocolError` with code `INVALID_ARGUMENT` when the
`Configuration` is created, not when a connection uses it. Times are seconds.

## `Configuration`

{dataclass_table(Configuration)}

## `AuthorizationPolicy`

The `policy` field: which ability the peer's capability must grant on a stream's resource
for each incoming operation ([tokens](../spec/tokens.md)).

{dataclass_table(AuthorizationPolicy)}

## `TransportParameters`

Not set directly: `Configuration.transport_parameters()` derives them from the fields
above, and each side advertises them in its handshake payload
([streams §2](../spec/streams.md)).

{dataclass_table(TransportParameters)}
"""


# ------------------------------------------------------------------ CLI


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, help, parser)`` for each subcommand of *parser*, in registration order."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, helps.get(name, ""), sub))
    return found


def _argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            name = ", ".join(f"`{o}`" for o in action.option_strings)
        else:
            name = f"`{action.metavar or action.dest}`"
        if action.nargs == 0 or not action.option_strings:
            takes = "..." if action.nargs in ("+", "*", argparse.REMAINDER) else ""
        else:
            metavar = action.metavar or (
                action.dest.upper() if action.option_strings else action.dest
            )
            takes = f"`{metavar}`"
            if action.nargs in ("+", "*", argparse.REMAINDER):
                takes += " ..."
        notes = []
        if action.required and action.option_strings:
            notes.append("required")
        if isinstance(action, argparse._AppendAction) and "repeatable" not in (action.help or ""):
            notes.append("repeatable")
        default = action.default
        if (
            default not in (None, False, [], argparse.SUPPRESS)
            and action.nargs != 0
            and "default" not in (action.help or "")
        ):
            notes.append(f"default `{default}`")
        if action.choices and not isinstance(action.choices, dict):
            notes.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
        text = (action.help or "") % {"default": default, "prog": parser.prog}
        if notes:
            text = f"{text} ({'; '.join(notes)})" if text else "; ".join(notes)
        rows.append(f"| {name} | {_cell(takes)} | {_cell(text)} |")
    return rows


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


#: What a failure class means (the numbers come from ``m2mproto.cli.EXIT_CODES``).
_EXIT_MEANING = {
    "ok": "success",
    "failure": "a check ran and failed (vectors, verification)",
    "usage": "bad command line",
    "local": "user mistake: missing or unreadable file, key file permissions, "
    "malformed agent ID or JSON",
    "authentication": "authentication failed (peer not who it should be, bad identity proof)",
    "authorization": "refused: the peer holds no capability for that resource (`UNAUTHORIZED`)",
    "token": "the token is invalid (expired, revoked, untrusted root, ...)",
    "network": "network: unreachable, connection lost",
    "protocol": "the peer broke the protocol",
    "timeout": "timeout",
    "limit": "a limit was exceeded",
}

#: Extra text for commands whose parser does not say everything.
_COMMAND_NOTES = {
    "m2m interop shim": "The shim contract and the meaning of each flag are specified in "
    "[interop §5](../spec/interop.md#5-the-shim-contract); see also "
    "[conformance testing](../howto/conformance.md).",
    "m2m interop run": "See [conformance testing](../howto/conformance.md).",
    "m2m bench": "Everything after `bench` is passed to `python -m bench`, which lives in the "
    "source checkout's `bench/` directory; `m2m bench --help` lists its options.",
}


def cli_commands() -> list[tuple[str, str, argparse.ArgumentParser]]:
    """Every command of ``m2m`` as ``(full name, help, parser)``, depth first."""
    from m2mproto.cli import build_parser

    root = build_parser()
    out: list[tuple[str, str, argparse.ArgumentParser]] = []

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for name, help_text, sub in _subcommands(parser):
            full = f"{prefix} {name}"
            out.append((full, help_text, sub))
            walk(full, sub)

    walk("m2m", root)
    return out


def cli_reference() -> str:
    """The Markdown page documenting every ``m2m`` command and option."""
    from m2mproto.cli import EXIT_CODES, build_parser

    root = build_parser()
    parts = [
        "# `m2m` command reference",
        "",
        "<!-- Generated from the argparse parsers of m2mproto/cli/ by docs/hooks.py at "
        "build time: edit the code, not this page. -->",
        "",
        f"{root.description}",
        "",
        "Every command below is `m2m COMMAND ...`; `m2m COMMAND --help` prints the same "
        "options. Failures print one line, `m2m: CODE: message`, and exit with a status "
        "per failure class:",
        "",
        "| status | class |",
        "|---|---|",
        *(
            f"| {code} | `{name}`: {_EXIT_MEANING.get(name, '')} |"
            for name, code in EXIT_CODES.items()
        ),
        "",
    ]
    for full, help_text, parser in cli_commands():
        level = "#" * min(2 + full.count(" ") - 1, 4)
        parts += [f"{level} `{full}`", ""]
        if help_text:
            parts += [help_text[0].upper() + help_text[1:] + ".", ""]
        if parser.description:
            parts += [parser.description, ""]
        if full in _COMMAND_NOTES:
            parts += [_COMMAND_NOTES[full], ""]
        parts += ["```text", _usage(parser), "```", ""]
        rows = _argument_rows(parser)
        if rows:
            parts += ["| argument | value | meaning |", "|---|---|---|", *rows, ""]
    return "\n".join(parts)


# ------------------------------------------------------------------ spec


def spec_pages() -> dict[str, str]:
    """``{"spec/NAME.md": text}`` for every file of spec/ (README.md is the spec's index)."""
    pages = {}
    for path in sorted(SPEC_DIR.glob("*.md")):
        pages[f"spec/{path.name}"] = path.read_text(encoding="utf-8")
    return pages


def generated_pages() -> dict[str, str]:
    """Every generated page, by its path in the site's docs tree."""
    return {
        CONFIG_PAGE: configuration_reference(),
        CLI_PAGE: cli_reference(),
        **spec_pages(),
    }


# ------------------------------------------------------------------ MkDocs events


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages to the site (MkDocs ``on_files`` event)."""
    from mkdocs.structure.files import File

    for src_uri, content in generated_pages().items():
        if files.get_file_from_path(src_uri) is not None:
            raise ValueError(f"docs/{src_uri} exists; it is generated, remove the file")
        files.append(File.generated(config, src_uri, content=content))
    return files


def spec_nav() -> list[dict[str, str]]:
    """The spec's navigation: the overview, the files in spec/README.md's order, then the rest."""
    readme = (SPEC_DIR / "README.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| \[([\w-]+\.md)\]\(\1\) \| ([^|]*?) \|", readme, re.M)
    names = [name for name, _section in listed if (SPEC_DIR / name).exists()]
    names += sorted(p.name for p in SPEC_DIR.glob("*.md") if p.name not in names)
    names.remove("README.md")
    sections = dict(listed)
    nav = [{"Overview": "spec/README.md"}]
    for name in names:
        text = (SPEC_DIR / name).read_text(encoding="utf-8")
        match = re.search(r"^# (.+)$", text, re.M)
        title = match.group(1).strip() if match else name
        section = sections.get(name, "").strip()
        if section and section[0].isdigit():
            title = f"{section} " + re.sub(r"^\d+\.?\s+", "", title)
        nav.append({title: f"spec/{name}"})
    return nav


def on_config(config: Any) -> Any:
    """Fill in the spec's navigation; rebuild when generated pages' sources change."""
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and entry.get("Specification") == []:
            entry["Specification"] = spec_nav()
    watch = config.setdefault("watch", [])
    for path in (SPEC_DIR, ROOT / "m2mproto" / "config.py", ROOT / "m2mproto" / "cli"):
        if str(path) not in watch:
            watch.append(str(path))
    return config
