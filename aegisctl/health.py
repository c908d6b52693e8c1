"""`aegisctl health`: can we reach the server, what is it, and does it have what we need?"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.schema.extensions import ExtensionInfo, list_extensions

if TYPE_CHECKING:
    import psycopg

    from aegisctl.output import Block


@dataclass
class HealthReport:
    target: str
    reachable: bool
    dsn: str
    embedded: bool
    error: str | None = None
    server_version: str | None = None
    server_version_num: int | None = None
    role: str | None = None  # primary | standby
    database: str | None = None
    user: str | None = None
    connect_ms: float | None = None
    latency_ms: float | None = None
    extensions: list[ExtensionInfo] = field(default_factory=list)
    # Known data-affecting bugs of this server's PostgreSQL and pgvector versions (the table
    # shipped with aegisctl; `check` also judges Barman's).
    known_bad: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "reachable": self.reachable,
            "dsn": self.dsn,
            "embedded": self.embedded,
            "error": self.error,
            "server_version": self.server_version,
            "server_version_num": self.server_version_num,
            "role": self.role,
            "database": self.database,
            "user": self.user,
            "connect_ms": self.connect_ms,
            "latency_ms": self.latency_ms,
            "extensions": [
                {
                    "name": e.name,
                    "status": e.status,
                    "installed_version": e.installed_version,
                    "available_version": e.default_version,
                    "notes": e.notes,
                }
                for e in self.extensions
            ],
            "known_bad": self.known_bad,
        }


    def to_view(self) -> list[Block]:
        from aegisctl.output import Fields, Note, Table

        where = "embedded" if self.embedded else self.dsn
        if not self.reachable:
            return [Fields([("target", f"{self.target} ({where})"), ("error", self.error)],
                           title="health")]
        return [
            Fields([
                ("target", f"{self.target} ({where})"),
                ("server", f"PostgreSQL {self.server_version}"),
                ("role", self.role),
                ("database", f"{self.database} as {self.user}"),
                ("connect", f"{self.connect_ms} ms"),
                ("latency", f"{self.latency_ms} ms (median of 5 × SELECT 1)"),
            ], title="health"),
            Table(["extension", "status", "installed", "available", "note"],
                  [(e.name, e.status, e.installed_version or "-", e.default_version or "-",
                    "; ".join(e.notes)) for e in self.extensions]),
            *[Note(f"known bug: {k['product']} {k['version']}: {k['problem']} ("
                   + (f"if you use {k['applies_to']}; " if k.get("when") else "")
                   + f"fixed in {k['fixed_in']}): {k['action']} [{k['source']}]", "yellow")
              for k in self.known_bad],
        ]


def probe(conn: psycopg.Connection[Any], report: HealthReport, required: list[str],
          pings: int = 5) -> HealthReport:
    """Fill the report from a live connection: version, role, latency, extensions."""
    samples = []
    for _ in range(pings):
        start = time.perf_counter()
        conn.execute("SELECT 1").fetchone()
        samples.append((time.perf_counter() - start) * 1000)
    report.latency_ms = round(statistics.median(samples), 3)
    row = conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int,"
        " pg_is_in_recovery(), current_database(), current_user"
    ).fetchone()
    assert row is not None
    report.server_version, report.server_version_num = row[0], row[1]
    report.role = "standby" if row[2] else "primary"
    report.database, report.user = row[3], row[4]
    # The configured extensions only: health answers "do we have what we need?".
    report.extensions = [e for e in list_extensions(conn, required) if e.configured]
    from aegisctl.diagnostics.known_bad import known_bad_findings, server_versions

    report.known_bad = [f.to_json() for f in known_bad_findings(server_versions(conn))]
    return report
