"""Global options, carried to every command, and the helpers commands share."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import LoadedConfig
    from aegisctl.db import Needs, WorkKind
    from aegisctl.targets import Target


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


FormatOption = Annotated[
    OutputFormat | None,
    typer.Option("--format", "-f", help="Output format: table for people, json for scripts."),
]

@dataclass
class AppState:
    config_path: str | None = None
    target_name: str | None = None
    # None when --format was not given: a command may then pick its own default (memory
    # commands write JSON lines into a pipe); an explicit --format table always means table.
    format: OutputFormat | None = None
    quiet: bool = False
    verbose: bool = False
    debug: bool = False
    log_format: LogFormat = LogFormat.text
    data_dir: str | None = None
    _loaded: LoadedConfig | None = field(default=None, repr=False)

    def fmt(self, override: OutputFormat | None) -> OutputFormat:
        return override or self.format or OutputFormat.table

    def config(self) -> LoadedConfig:
        if self._loaded is None:
            from aegisctl.config import load_config

            self._loaded = load_config(self.config_path)
            if self.data_dir:
                self._loaded.settings.embedded.data_dir = self.data_dir
                self._loaded.sources["embedded.data_dir"] = "--data-dir"
        return self._loaded

    def reload_config(self) -> LoadedConfig:
        """Read the config file again (`schedule run` on SIGHUP). When it is not valid the
        error propagates and the config in use stays."""
        previous, self._loaded = self._loaded, None
        if previous is not None and previous.path is not None:
            self.config_path = str(previous.path)  # the file found at start-up, not a new one
        try:
            return self.config()
        except BaseException:
            self._loaded = previous
            raise

    def target(self, reads: bool = False) -> Target:
        """The chosen target. `reads`: the command only reads, so on a cluster it may use a
        streaming replica within the lag bound (else the leader)."""
        from aegisctl.targets import resolve_target

        target = resolve_target(self.config(), self.target_name)
        if reads and target.cluster is not None:
            target.cluster.prefer = "replica"
        return target

    def connect(self, command: str, kind: WorkKind = "query",
                autocommit: bool = True, needs: Needs | None = None,
                reads: bool = False) -> psycopg.Connection[Any]:
        from aegisctl.db import connect

        return connect(self.config(), self.target(reads), command, kind, autocommit=autocommit,
                       needs=needs)

    def require_session(self, command: str, needs: Needs = "session") -> None:
        """Stop at once (exit 2, one line) when `command` needs a session or an unpooled
        server and the target's dsn is a pooler without direct_dsn."""
        from aegisctl.db import require_session

        require_session(self.config(), self.target(), command, needs)


def state(ctx: typer.Context) -> AppState:
    root = ctx.find_root()
    if not isinstance(root.obj, AppState):
        root.obj = AppState()
    return root.obj


def setup_logging(app_state: AppState) -> None:
    level = logging.WARNING
    if app_state.quiet:
        level = logging.ERROR
    if app_state.verbose:
        level = logging.INFO
    if app_state.debug:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    from aegisctl.scheduling.events import JsonFormatter, TextFormatter

    json_logs = app_state.log_format is LogFormat.json
    handler.setFormatter(JsonFormatter() if json_logs else TextFormatter())
    root = logging.getLogger("aegisctl")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # psycopg warns "error ignored in rollback" after the very error it is about (a server
    # that stopped under a transaction), which aegisctl reports once, in one line: the
    # driver's own warnings only with --debug.
    driver = logging.getLogger("psycopg")
    driver.handlers[:] = [handler]
    driver.setLevel(logging.DEBUG if app_state.debug else logging.ERROR)
    driver.propagate = False


def confirm(question: str, yes: bool) -> None:
    """The one confirmation for destructive commands. --yes skips it; without a terminal to ask
    on it is a usage error (2); answering no cancels with exit 1 and nothing changed."""
    from aegisctl import output
    from aegisctl.errors import ExitCode

    if yes:
        return
    if not sys.stdin.isatty():
        output.print_status("not a terminal to ask on: pass --yes to confirm")
        raise typer.Exit(int(ExitCode.USAGE))
    if not typer.confirm(question, default=False, err=True):
        output.print_status("cancelled; nothing was changed")
        raise typer.Exit(int(ExitCode.FAILED))
