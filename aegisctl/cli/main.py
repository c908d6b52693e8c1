"""The aegisctl command: global options, command groups, and the one place where failures
become messages and exit codes."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from aegisctl import __version__
from aegisctl.cli.context import AppState, LogFormat, OutputFormat, setup_logging
from aegisctl.errors import AegisError, ExitCode


def _fail(message: str, code: int) -> None:
    logger = logging.getLogger("aegisctl")
    if any(type(h.formatter).__name__ == "JsonFormatter" for h in logger.handlers):
        # --log-format json: the error is one more JSON line for the log shipper.
        logger.error("%s", message, extra={"event": "error", "fields": {"exit_code": code}})
        raise typer.Exit(code)
    prefix = "aegisctl: error: "
    if not os.environ.get("NO_COLOR") and sys.stderr.isatty():
        prefix = "\x1b[31maegisctl: error:\x1b[0m "
    sys.stderr.write(prefix + message + "\n")
    raise typer.Exit(code)


# Command groups are imported only when used: `aegisctl --version` and each command pay for
# what they run, not for every group's imports and signatures.
LAZY_GROUPS: dict[str, str] = {
    "health": "aegisctl.cli.health_cmd",
    "config": "aegisctl.cli.config_cmd",
    "local": "aegisctl.cli.local_cmd",
    "memory": "aegisctl.cli.memory_cmd",
    "schema": "aegisctl.cli.schema_cmd",
    "ext": "aegisctl.cli.ext_cmd",
    "roles": "aegisctl.cli.roles_cmd",
    "backup": "aegisctl.cli.backup_cmd",
    "schedule": "aegisctl.cli.schedule_cmd",
    "systemd": "aegisctl.cli.systemd_cmd",
    "jobs": "aegisctl.cli.jobs_cmd",
    "diag": "aegisctl.cli.diag_cmd",
    "check": "aegisctl.cli.check_cmd",
    "maint": "aegisctl.cli.maint_cmd",
    "cleanup": "aegisctl.cli.cleanup_cmd",
    "cluster": "aegisctl.cli.cluster_cmd",
}
# Each group's line in `aegisctl --help`, known without importing the group (which would
# import all sixteen and build every command for one listing). A test keeps each equal to
# short_help() of the group's own help text.
LISTED_HELP: dict[str, str] = {
    "health": "Check that the database answers, and what it is.",
    "config": "Inspect and check the YAML configuration.",
    "local": "Manage the embedded PostgreSQL 18 + pgvector that...",
    "memory": "Search and manage the agent's memory.",
    "schema": "Create and evolve the Aegis schema.",
    "ext": "List and install the PostgreSQL extensions Aegis uses...",
    "roles": "Least-privilege roles from the `roles` section of the config.",
    "backup": "Backups you can trust.",
    "schedule": "The schedule from the config.",
    "systemd": "systemd timers for the schedule.",
    "jobs": "Run scheduled jobs by name and read their history.",
    "diag": "Diagnostics for a DBA.",
    "check": "Every health check against the config's thresholds; exit...",
    "maint": "Database maintenance that never stalls the application.",
    "cleanup": "Retention cleanup that never blocks the application.",
    "cluster": "A cluster target (Patroni or a multi-host DSN).",
}


# One line per command in a group's listing (80 columns), however long its help: the first
# sentence, or what comes before its colon, or its start cut at a word.
SHORT_HELP_CHARS = 60


def short_help(text: str | None) -> str | None:
    """The first sentence of a help text's first paragraph, on one line."""
    if not text:
        return None
    paragraph = " ".join(text.strip().split("\n\n", 1)[0].split())
    end = paragraph.find(". ")
    sentence = paragraph if end < 0 else paragraph[:end + 1]
    if len(sentence) <= SHORT_HELP_CHARS:
        return sentence
    head = sentence.split(": ", 1)[0]  # "Check a backup: sha256 of every file, ..."
    if len(head) <= SHORT_HELP_CHARS:
        return head + "."
    return sentence[:SHORT_HELP_CHARS - 3].rsplit(" ", 1)[0].rstrip(",;:(") + "..."


def short_helps(command: Any) -> None:
    """Give `command` and every command below it a one-line short_help (group listings print
    the short help, else the whole docstring with its hard line breaks)."""
    if getattr(command, "short_help", None) is None:
        command.short_help = short_help(getattr(command, "help", None))
    for sub in getattr(command, "commands", {}).values():
        short_helps(sub)


class AegisGroup(TyperGroup):
    """Loads command groups lazily, and turns foreseeable failures into one line and the
    documented exit code."""

    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        eager = super().list_commands(ctx)
        return eager + [name for name in LAZY_GROUPS if name not in eager]

    _listing = False

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:  # type: ignore[override]
        # The listing needs each group's name and line only: stand-ins, nothing imported.
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:  # type: ignore[override]
        command = super().get_command(ctx, cmd_name)
        if command is None and self._listing and cmd_name in LISTED_HELP:
            from typer.core import TyperCommand

            return TyperCommand(cmd_name, short_help=LISTED_HELP[cmd_name])
        if command is None and cmd_name in LAZY_GROUPS:
            module = importlib.import_module(LAZY_GROUPS[cmd_name])
            command = typer.main.get_command(module.app)
            command.name = cmd_name
            self.commands[cmd_name] = command
            from aegisctl.cli.lazy_coercion import defer_tree

            defer_tree(command)  # `aegisctl memory search --help`: no pydantic either
        if command is not None:
            short_helps(command)
        return command

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        # The top level's own options (`aegisctl --nonsense`) are parsed here, outside invoke.
        try:
            return super().make_context(*args, **kwargs)
        except _USAGE_ERROR as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise
            _usage_failure(exc)

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        from aegisctl.cli.lazy_coercion import defer_coercion

        defer_coercion(self.get_params(ctx))  # --help among them
        return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here for buffered output: handled below
            return result
        except AegisError as exc:
            _traceback(_debug(ctx))
            _fail(str(exc), int(exc.exit_code))
        except (KeyboardInterrupt, typer.Abort) as exc:
            _traceback(_debug(ctx) and isinstance(exc, KeyboardInterrupt))
            _fail("interrupted", int(ExitCode.INTERRUPTED))
        except BrokenPipeError:
            # Before click sees it: click turns a closed pipe into exit 1.
            _quiet_broken_pipe()
        except _USAGE_ERROR as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as asked
                raise
            _usage_failure(exc)
        except (typer.TyperException, typer.Exit):
            raise
        except Exception as exc:
            _traceback(_debug(ctx))
            undecodable = [a for a in sys.argv[1:] if _has_surrogates(a)]
            if isinstance(exc, UnicodeEncodeError) and undecodable:
                # Bytes that are not UTF-8 reach Python as surrogate escapes and fail only
                # where the text is sent on (to the database, a file, an HTTP endpoint).
                shown = undecodable[0].encode("utf-8", "surrogateescape").decode(
                    "ascii", "backslashreplace")
                _fail(f"the argument '{shown[:80]}' is not valid UTF-8: aegisctl takes text "
                      "in UTF-8 (check the terminal's or the script's encoding)",
                      int(ExitCode.USAGE))
            if type(exc).__module__.startswith("psycopg"):
                from aegisctl.db import describe_db_error

                _fail(*describe_db_error(exc))
            _fail(
                f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                " (rerun with --debug for the traceback, and please report it)",
                int(ExitCode.FAILED),
            )
        return None


# click's UsageError (a bad option, value or argument), found through the one of its subclasses
# that typer re-exports: typer vendors its own click.
_USAGE_ERROR: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _usage_failure(exc: Exception) -> None:
    """A command-line mistake as one line naming it, with where to read the right usage,
    instead of click's boxed usage text; exit 2."""
    message = " ".join(str(getattr(exc, "format_message", exc.__str__)()).split())
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    _fail(f"{message}{where}", int(ExitCode.USAGE))


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in text)


def _debug(ctx: typer.Context) -> bool:
    # Read when a failure happens: the global options are parsed inside invoke.
    return (isinstance(ctx.obj, AppState) and ctx.obj.debug) or "--debug" in sys.argv


def _traceback(debug: bool) -> None:
    """--debug shows the traceback, and the exit code stays the documented one."""
    if debug:
        import traceback

        traceback.print_exc(file=sys.stderr)


app = typer.Typer(
    cls=AegisGroup,
    name="aegisctl",
    help=(
        "Operate a PostgreSQL + pgvector agent-memory database: health, schema, backups, "
        "maintenance and memory search.\n\n"
        "With no targets configured, aegisctl runs an embedded PostgreSQL 18 + pgvector.\n\n"
        "Example: aegisctl health --format json"
    ),
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"aegisctl {__version__}\n")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Config file (default: $AEGISCTL_CONFIG, "
                     "./aegisctl.yaml, ~/.config/aegisctl/config.yaml, /etc/aegisctl/config.yaml).",
                     dir_okay=False),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="Which configured target to use "
                     "(default: default_target, or the only one; 'embedded' for the local server).",
                     envvar="AEGISCTL_TARGET"),
    ] = None,
    output_format: Annotated[
        OutputFormat | None, typer.Option("--format", "-f", help="Output format for every command: "
                                          "table (the "
                                          "default; memory commands write JSON lines into a "
                                          "pipe unless told) or json.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what is done.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Debug logs and tracebacks.")] = False,
    log_format: Annotated[
        LogFormat, typer.Option("--log-format", help="Logs on stderr: text, or one JSON object "
                                "per line for log shippers.", envvar="AEGISCTL_LOG_FORMAT")
    ] = LogFormat.text,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Data directory of the embedded PostgreSQL.",
                     envvar="AEGISCTL_DATA_DIR", file_okay=False),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version,
                           is_eager=True)
    ] = False,
) -> None:
    """Global options come before the command: aegisctl --target replica health."""
    ctx.obj = AppState(
        config_path=str(config) if config else None,
        target_name=target,
        format=output_format,
        quiet=quiet,
        verbose=verbose,
        debug=debug,
        log_format=log_format,
        data_dir=str(data_dir) if data_dir else None,
    )
    setup_logging(ctx.obj)




def _quiet_broken_pipe() -> None:
    """The reader went away (`| head`): stop quietly. Point stdout at /dev/null so the
    interpreter's final flush cannot raise again (the recipe in Python's signal docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)


def run() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="aegisctl")
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
    except KeyboardInterrupt:
        sys.stderr.write("aegisctl: error: interrupted\n")
        sys.exit(int(ExitCode.INTERRUPTED))
