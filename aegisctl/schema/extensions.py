"""PostgreSQL extensions: what the server offers, what the database has, installing them with
messages that say what to do when it cannot be done."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.errors import OperationFailed

if TYPE_CHECKING:
    import psycopg

    from aegisctl.output import Block

log = logging.getLogger(__name__)

# Installed only "where the server has it" when it comes from the default list.
OPTIONAL_EXTENSIONS = frozenset({"pgcrypto"})
CONTRIB_EXTENSIONS = frozenset({"pg_trgm", "fuzzystrmatch", "pg_stat_statements", "pgcrypto",
                                "uuid-ossp", "amcheck", "pgstattuple", "btree_gin", "btree_gist"})
PRELOAD_EXTENSIONS = frozenset({"pg_stat_statements"})
PGVECTOR_ITERATIVE_SCAN_VERSION = (0, 8)


@dataclass
class ExtensionInfo:
    name: str
    installed_version: str | None
    default_version: str | None
    schema: str | None = None
    configured: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.installed_version:
            return "installed"
        return "available" if self.default_version else "missing"


@dataclass
class ExtensionAction:
    name: str
    action: str  # created | present | skipped | failed
    version: str | None = None
    message: str | None = None


@dataclass
class ExtensionReport:
    actions: list[ExtensionAction] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[ExtensionAction]:
        return [a for a in self.actions if a.action == "failed"]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        blocks: list[Block] = [Table(
            [Column("extension", "id"), Column("result", "id"), Column("version", "id"),
             Column("note", "text")],
            [(a.name, a.action, a.version or "-", a.message or "") for a in self.actions],
            title="extensions", empty="no extensions to install")]
        blocks += [Note(f"warning: {w}", "yellow") for w in self.warnings]
        return blocks


@dataclass
class ExtensionList:
    """`ext list`: the configured extensions and every installed one."""

    extensions: list[ExtensionInfo]

    def to_json(self) -> list[dict[str, Any]]:
        return [{**dataclasses.asdict(i), "status": i.status} for i in self.extensions]

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        blocks: list[Block] = [Table(
            [*(Column(name, "id") for name in ("extension", "status", "installed",
                                               "available")), "configured", "schema"],
            [(i.name, i.status, i.installed_version or "-", i.default_version or "-",
              i.configured, i.schema or "-") for i in self.extensions],
            empty="no extensions")]
        blocks += [Note(f"{i.name}: {note}") for i in self.extensions for note in i.notes]
        return blocks


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def pgvector_warning(version: str | None) -> str | None:
    if version and _version_tuple(version) < PGVECTOR_ITERATIVE_SCAN_VERSION:
        return (f"pgvector {version} is older than 0.8: no iterative index scans, so filtered "
                "vector searches can return fewer rows than asked; upgrade the package and run "
                "ALTER EXTENSION vector UPDATE")
    return None


def preload_warning(name: str, shared_preload_libraries: str | None) -> str | None:
    if shared_preload_libraries is None:  # not visible to this role: cannot tell
        return None
    loaded = {lib.strip().strip('"') for lib in shared_preload_libraries.split(",")}
    if name in PRELOAD_EXTENSIONS and name not in loaded:
        return (f"{name} is not in shared_preload_libraries, so its views raise an error: add "
                f"{name} to shared_preload_libraries in postgresql.conf and restart PostgreSQL "
                "(on a managed service: in the parameter group / server flags)")
    return None


def missing_message(name: str, server_major: int) -> str:
    if name == "vector":
        return (f"pgvector is not installed on this server: install the package "
                f"postgresql-{server_major}-pgvector (Debian/Ubuntu; pgvector_{server_major} on "
                "RHEL/Fedora), or build it from https://github.com/pgvector/pgvector, then run "
                "`aegisctl ext install vector` again")
    if name in CONTRIB_EXTENSIONS:
        return (f"{name} is not available on this server: it ships with PostgreSQL's contrib "
                f"modules; install postgresql-contrib (postgresql{server_major}-contrib on "
                f"RHEL/Fedora) on the database server, then run `aegisctl ext install {name}` "
                "again")
    return (f"extension {name} is not available on this server (not in "
            "pg_available_extensions): install the package that provides it on the database "
            "server, or remove it from schema.extensions")


def privilege_message(name: str, user: str) -> str:
    return (f"permission denied to create extension {name} as {user}: run `aegisctl ext install "
            f"{name}` connected as a superuser or the database owner; on a managed service "
            "(RDS, Cloud SQL, Azure) enable the extension for the database first (e.g. "
            "azure.extensions, or a role with rds_superuser / cloudsqlsuperuser)")


def _server(conn: psycopg.Connection[Any]) -> tuple[int, str, str | None]:
    """(major version, current user, shared_preload_libraries or None when this role may not
    read it: pg_settings hides it from roles without pg_read_all_settings)."""
    row = conn.execute(
        "SELECT current_setting('server_version_num')::int / 10000, current_user,"
        " (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries')"
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1]), None if row[2] is None else str(row[2])


def list_extensions(conn: psycopg.Connection[Any], configured: list[str]) -> list[ExtensionInfo]:
    """The configured extensions (installed, available or missing) and every installed one."""
    major, _, preload = _server(conn)
    rows = conn.execute(
        "SELECT n.name, e.extversion, a.default_version, s.nspname"
        " FROM (SELECT unnest(%s::text[]) UNION SELECT extname FROM pg_extension) AS n(name)"
        " LEFT JOIN pg_available_extensions a ON a.name = n.name"
        " LEFT JOIN pg_extension e ON e.extname = n.name"
        " LEFT JOIN pg_namespace s ON s.oid = e.extnamespace"
        " ORDER BY n.name",
        (configured,),
    ).fetchall()
    result = []
    for name, installed, default, schema in rows:
        info = ExtensionInfo(name, installed, default, schema, configured=name in configured)
        if name == "vector":
            warning = pgvector_warning(installed or default)
            if warning:
                info.notes.append(warning)
        if installed:
            warning = preload_warning(name, preload)
            if warning:
                info.notes.append(warning)
            if default and _version_tuple(default) > _version_tuple(installed):
                info.notes.append(f"version {default} is available: ALTER EXTENSION "
                                  f"\"{name}\" UPDATE")
        elif not default:
            info.notes.append("skipped where the server lacks it" if name in OPTIONAL_EXTENSIONS
                              else missing_message(name, major))
        result.append(info)
    return result


def install_extensions(conn: psycopg.Connection[Any], names: list[str] | None,
                       configured: list[str], *, raise_on_failure: bool = True
                       ) -> ExtensionReport:
    """CREATE EXTENSION IF NOT EXISTS for `names`, else for the configured list (where
    pgcrypto is optional). Raises OperationFailed naming every extension that could not be
    installed and what to do about it."""
    import psycopg
    from psycopg import sql

    explicit = bool(names)
    wanted = list(dict.fromkeys(names or configured))
    major, user, preload = _server(conn)
    available = dict(conn.execute(
        "SELECT a.name, e.extversion FROM pg_available_extensions a"
        " LEFT JOIN pg_extension e ON e.extname = a.name WHERE a.name = ANY(%s)",
        (wanted,),
    ).fetchall())
    report = ExtensionReport()
    for name in wanted:
        if name not in available:
            if name in OPTIONAL_EXTENSIONS and not explicit:
                report.actions.append(ExtensionAction(
                    name, "skipped", message=f"{name} is not available on this server; skipped "
                    "(optional)"))
            else:
                report.actions.append(ExtensionAction(name, "failed",
                                                      message=missing_message(name, major)))
            continue
        if available[name]:
            report.actions.append(ExtensionAction(name, "present", available[name]))
            log.info("extension %s %s is already installed", name, available[name])
            continue
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(
                    sql.Identifier(name)))
        except psycopg.errors.InsufficientPrivilege:
            report.actions.append(ExtensionAction(name, "failed",
                                                  message=privilege_message(name, user)))
            continue
        except psycopg.Error as exc:
            diag = exc.diag.message_primary or str(exc)
            report.actions.append(ExtensionAction(
                name, "failed", message=f"CREATE EXTENSION {name} failed: {diag}"))
            continue
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = %s",
                           (name,)).fetchone()
        report.actions.append(ExtensionAction(name, "created", row[0] if row else None))
        log.info("created extension %s %s", name, row[0] if row else "")
    for action in report.actions:
        if action.action in ("created", "present"):
            warning = (pgvector_warning(action.version) if action.name == "vector"
                       else preload_warning(action.name, preload))
            if warning:
                report.warnings.append(warning)
    if report.failed and raise_on_failure:
        raise OperationFailed("; ".join(a.message or a.name for a in report.failed))
    return report
