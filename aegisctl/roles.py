"""`roles apply`: least-privilege roles for the application and for read-only use.

The application role may read and write the memory and operational tables (and use their
sequences), and read aegis_metadata; the read-only role may only SELECT them, and also the job
history (aegis_job_runs, for dashboards and `jobs status` / `check` on a read-only DSN). The
application role gets nothing on the job history: only aegisctl's own jobs write it, as the
database owner. Neither may create, alter or drop anything, nor touch aegis_schema_migrations.
Applying revokes table privileges first, so drift (a GRANT made by hand) is undone. Passwords are
sent as SCRAM-SHA-256 verifiers computed by libpq on this side: the plain text never reaches the
server, its logs or any output.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.config import RoleSpec, RolesSettings
from aegisctl.errors import ConfigError, OperationFailed

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from aegisctl.output import Block

log = logging.getLogger(__name__)

MEMORY_TABLES = ("episodic_memory", "semantic_memory", "decision_outcomes")
OPERATIONAL_TABLES = (
    "api_keys", "api_usage_events", "billing_events", "claude_sessions", "container_metrics",
    "infra_anomaly_alerts", "workflows", "workflow_executions", "deep_briefing_jobs",
    "competitors", "competitor_pages", "competitor_changes",
)
APP_TABLES = MEMORY_TABLES + OPERATIONAL_TABLES
READABLE_METADATA = ("aegis_metadata",)
JOB_HISTORY = ("aegis_job_runs",)  # written by aegisctl's jobs as the owner; read-only may read
ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"


@dataclass
class RoleOutcome:
    kind: str  # app | readonly
    name: str
    created: bool
    password_set: bool


@dataclass
class RolesResult:
    dry_run: bool
    schema: str
    roles: list[RoleOutcome] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)  # as shown: passwords as '***'

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_view(self) -> list[Block]:
        """The statements as an SQL script (a dry run's output can be reviewed or kept as is);
        what happened to each role is status, on stderr (`status_lines`)."""
        from aegisctl.output import Note

        return [Note(f"{statement};", wrap=False) for statement in self.statements]

    def status_lines(self) -> list[str]:
        if self.dry_run:
            return ["dry run: nothing was changed"]
        return [f"{r.kind} role {r.name}: {'created' if r.created else 'updated'}"
                f"{', password set' if r.password_set else ''}" for r in self.roles]


def scram_verifier(conn: psycopg.Connection[Any], role: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password`, computed by libpq itself
    (PQencryptPasswordConn, what psql's \\password sends), so the password is never sent."""
    verifier = conn.pgconn.encrypt_password(password.encode("utf-8"), role.encode("utf-8"),
                                            b"scram-sha-256")
    return verifier.decode("ascii")


def role_password(kind: str, spec: RoleSpec, env: dict[str, str] | None = None) -> str | None:
    env = dict(os.environ) if env is None else env
    where = f"roles.{kind}"
    if spec.password_env and spec.password_file:
        raise ConfigError(f"{where}: set password_env or password_file, not both")
    if spec.password_env:
        value = env.get(spec.password_env)
        if not value:
            raise ConfigError(f"{where}.password_env: environment variable {spec.password_env} "
                              "is not set", hint="export it, or remove password_env")
        return value
    if spec.password_file:
        path = Path(spec.password_file).expanduser()
        try:
            value = path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size \
                else ""
        except OSError as exc:
            raise ConfigError(f"{where}.password_file: cannot read {path}: "
                              f"{exc.strerror or exc}") from None
        if not value:
            raise ConfigError(f"{where}.password_file: {path} is empty")
        return value
    return None


@dataclass
class _Planned:
    run: sql.Composed
    show: sql.Composed


def _plan_role(conn: psycopg.Connection[Any], kind: str, spec: RoleSpec, schema: str,
               tables: list[str], sequences: list[str], password: str | None,
               public_can_create: bool) -> tuple[RoleOutcome, list[_Planned]]:
    from psycopg import sql

    role = sql.Identifier(spec.name)
    row = conn.execute(
        "SELECT rolsuper, rolname = current_user FROM pg_roles WHERE rolname = %s", (spec.name,)
    ).fetchone()
    if row is not None and (row[0] or row[1]):
        raise ConfigError(
            f"roles.{kind}.name is {spec.name}, which is "
            f"{'the role aegisctl connects as' if row[1] else 'a superuser'}: refusing to "
            "turn it into a least-privilege role",
            hint=f"choose a dedicated name for roles.{kind}.name",
        )
    exists = row is not None
    verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
    base = sql.SQL("{} {} WITH " + ROLE_ATTRIBUTES).format(verb, role)
    plan: list[_Planned] = []
    if password is not None:
        plan.append(_Planned(
            sql.SQL("{} PASSWORD {}").format(
                base, sql.Literal(scram_verifier(conn, spec.name, password))),
            sql.SQL("{} PASSWORD '***'").format(base)))
    else:
        plan.append(_Planned(base, base))
    ns = sql.Identifier(schema)

    def same(statement: sql.Composed) -> None:
        plan.append(_Planned(statement, statement))

    same(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
        sql.Identifier(conn.info.dbname), role))
    same(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ns, role))
    same(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(ns, role))
    if public_can_create:
        same(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(ns))
    same(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(ns, role))
    same(sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {} FROM {}").format(ns, role))
    table_list = sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables)
    meta_list = sql.SQL(", ").join(sql.Identifier(schema, t) for t in READABLE_METADATA)
    if kind == "app":
        same(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {} TO {}").format(
            table_list, role))
        if sequences:
            same(sql.SQL("GRANT USAGE, SELECT ON SEQUENCE {} TO {}").format(
                sql.SQL(", ").join(sql.Identifier(schema, s) for s in sequences), role))
    else:
        same(sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(table_list, role))
        same(sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(
            sql.SQL(", ").join(sql.Identifier(schema, t) for t in JOB_HISTORY), role))
    same(sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(meta_list, role))
    return RoleOutcome(kind, spec.name, created=not exists,
                       password_set=password is not None), plan


def apply_roles(conn: psycopg.Connection[Any], roles: RolesSettings, *, dry_run: bool = False,
                env: dict[str, str] | None = None) -> RolesResult:
    """Create or update both roles and their privileges in one transaction."""
    import psycopg

    schema_row = conn.execute(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass('episodic_memory')"
    ).fetchone()
    if schema_row is None:
        raise OperationFailed("the Aegis schema is not in this database",
                              hint="run `aegisctl schema init` first")
    schema = str(schema_row[0])
    missing = [t for t in (*APP_TABLES, *READABLE_METADATA, *JOB_HISTORY) if conn.execute(
        "SELECT to_regclass(%s) IS NULL", (f'"{schema}"."{t}"',)).fetchone() in (None, (True,))]
    if missing:
        raise OperationFailed(f"tables missing: {', '.join(missing)}",
                              hint="run `aegisctl schema migrate` first")
    sequences = [str(r[0]) for r in conn.execute(
        "SELECT DISTINCT s.relname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid"
        " JOIN pg_class t ON t.oid = d.refobjid"
        " WHERE s.relkind = 'S' AND d.refclassid = 'pg_class'::regclass"
        " AND d.classid = 'pg_class'::regclass AND t.relnamespace = %s::regnamespace"
        " AND t.relname = ANY(%s) ORDER BY 1",
        (schema, list(APP_TABLES)),
    ).fetchall()]
    public_row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(n.nspacl) a"
        " WHERE n.nspname = %s AND a.grantee = 0 AND a.privilege_type = 'CREATE')",
        (schema,),
    ).fetchone()
    public_can_create = bool(public_row and public_row[0])
    if roles.app.name == roles.readonly.name:
        raise ConfigError("roles.app.name and roles.readonly.name must differ")

    result = RolesResult(dry_run=dry_run, schema=schema)
    plans: list[_Planned] = []
    for kind, spec in (("app", roles.app), ("readonly", roles.readonly)):
        outcome, plan = _plan_role(conn, kind, spec, schema, list(APP_TABLES), sequences,
                                   role_password(kind, spec, env), public_can_create)
        result.roles.append(outcome)
        plans.extend(plan)
        public_can_create = False  # revoked once is enough
    result.statements = [p.show.as_string(conn) for p in plans]
    if dry_run:
        return result
    try:
        with conn.transaction():
            for planned in plans:
                conn.execute(planned.run)
        for role in result.roles:
            log.info("%s role %s %s%s", role.kind, role.name,
                     "created" if role.created else "updated",
                     " with a new password" if role.password_set else "")
    except psycopg.errors.InsufficientPrivilege as exc:
        raise OperationFailed(
            f"permission denied while applying roles: {exc.diag.message_primary}",
            hint="run `aegisctl roles apply` as a role with CREATEROLE that owns the tables "
            "(the database owner or a superuser)",
        ) from None
    return result
