"""The README is the user guide, checked against the command tree (in the style of
sqlite-utils' test_docs.py): every command and every option `--help` shows is documented in its
group's section, and every `aegisctl ...` command line the README shows exists.

Generic on purpose: it walks Typer's click tree, so a new command or option fails here until
the README says what it does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from aegisctl.cli.main import app

README = (Path(__file__).parent.parent / "README.md").read_text()
HELP_OPTIONS = {"--help", "-h"}


# Typer ships its own copy of click: commands and options are recognised by what they do.
Command = Any


def _is_group(command: Command) -> bool:
    return hasattr(command, "list_commands")


def _root() -> Command:
    return typer.main.get_command(app)


def _walk(group: Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                       Command]]:
    ctx = typer.Context(group, info_name="aegisctl")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        yield (*path, name), command
        if _is_group(command):
            yield from _walk(command, (*path, name))


COMMANDS = [(path, command) for path, command in _walk(_root()) if not _is_group(command)]


def _section(group: str) -> str:
    """The README's section for a command group: from its `## \\`aegisctl GROUP\\`` heading to
    the next level-2 heading."""
    match = re.search(rf"^## `aegisctl {re.escape(group)}`\n(.*?)(?=^## |\Z)", README,
                      re.MULTILINE | re.DOTALL)
    assert match, f"README has no section '## `aegisctl {group}`'"
    return match.group(1)


def _long_options(command: Command) -> list[str]:
    names = []
    for param in command.params:
        if param.param_type_name == "option" and not param.hidden:
            longs = [o for o in param.opts + param.secondary_opts if o.startswith("--")]
            names += [o for o in longs if o not in HELP_OPTIONS]
    return names


# Options every reporting command takes, documented once in this section.
COMMON_SECTION = "Exit codes and output"
# Gaps in other helpers' sections when this test was written: each is an expected failure
# until the README documents it (strict: documenting it turns the entry into a failure that
# says to delete it here). The lead empties this list at merge.
KNOWN_GAPS: set[str] = set()


def _common_section() -> str:
    match = re.search(rf"^## {COMMON_SECTION}\n(.*?)(?=^## |\Z)", README, re.MULTILINE | re.DOTALL)
    assert match, f"README has no section '## {COMMON_SECTION}'"
    return match.group(1)


def _params(commands: list[tuple[tuple[str, ...], Command]]) -> list[Any]:
    return [pytest.param(path, command, id=" ".join(path),
                         marks=[pytest.mark.xfail(strict=True, reason="README gap, see KNOWN_GAPS")]
                         if " ".join(path) in KNOWN_GAPS else [])
            for path, command in commands]


@pytest.mark.parametrize("path,command", _params(COMMANDS))
def test_command_documented(path: tuple[str, ...], command: Command) -> None:
    section = _section(path[0])
    common = _common_section()
    if len(path) > 1:
        shown = " ".join(path)
        assert re.search(rf"aegisctl\b[^\n`]*?\b{re.escape(shown)}\b", section), (
            f"`aegisctl {shown}` is not shown in the README's `aegisctl {path[0]}` section")
    missing = [o for o in _long_options(command)
               if not any(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text)
                          for text in (section, common))]
    assert not missing, (f"aegisctl {' '.join(path)}: options not documented in the README's "
                         f"`aegisctl {path[0]}` section: {', '.join(missing)}")


def test_global_options_documented() -> None:
    missing = [o for o in _long_options(_root()) if o not in README]
    assert not missing, f"global options not documented in the README: {', '.join(missing)}"


# A command line in the README: `aegisctl` at the start of code (or after a path such as
# .venv/bin/), followed by words. Prose such as "aegisctl reads one YAML file" is not code.
_CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", re.DOTALL)
_INVOCATION = re.compile(r"(?:^|[\s\"'(=]|/bin/)aegisctl((?: +[^\s|;&)`]+)*)")


def _invocations() -> Iterator[list[str]]:
    for match in _CODE.finditer(README):
        code = match.group(1) or match.group(2) or ""
        for line in code.splitlines():
            for found in _INVOCATION.finditer(line):
                yield found.group(1).split()


def _resolve(tokens: list[str]) -> str | None:
    """Follow tokens down the command tree; the problem found, or None when they name a
    command that exists."""
    command = _root()
    words: list[str] = []
    index = 0
    while _is_group(command) and index < len(tokens):
        token = tokens[index].strip("\"'")
        if token.startswith("-"):
            takes_value = any(p.param_type_name == "option" and token.split("=")[0] in p.opts
                              and not p.is_flag for p in command.params)
            index += 2 if takes_value and "=" not in token else 1
            continue
        if not re.fullmatch(r"[a-z][a-z0-9-]*", token):
            return None  # a placeholder such as <group> or ...: not a command line
        ctx = typer.Context(command, info_name="aegisctl")
        sub = command.get_command(ctx, token)
        if sub is None:
            return f"aegisctl {' '.join([*words, token])}: no such command"
        words.append(token)
        command = sub
        index += 1
    return None


def test_readme_commands_exist() -> None:
    invocations = list(_invocations())
    assert len(invocations) > 20, "the README's command lines were not found"
    problems = sorted({p for tokens in invocations if (p := _resolve(tokens))})
    assert not problems, "the README names commands that do not exist:\n" + "\n".join(problems)


def test_the_check_finds_a_missing_command() -> None:
    assert _resolve(["schema", "init", "--embedding-dim", "256"]) is None
    assert _resolve(["--target", "replica", "health"]) is None
    assert _resolve(["schema", "nonesuch"]) == "aegisctl schema nonesuch: no such command"
    assert _resolve(["-f", "json", "nonesuch"]) == "aegisctl nonesuch: no such command"
