"""`aegisctl check`: a registry of checks, each measuring one thing against thresholds.

A check is a function of a `CheckContext` returning a `CheckResult` (or several, e.g. one per
scheduled job); it raises `CheckSkipped` when it does not apply (no replicas, backups not
configured). Other modules add checks with the `register_check` decorator and list their module
in `CHECK_PROVIDERS`, which is imported the first time the checks are listed:

    from aegisctl.diagnostics.checks import CheckContext, CheckResult, grade, register_check

    @register_check("scheduler_jobs", "last successful run of each scheduled job", needs_db=True)
    def scheduler_jobs(ctx: CheckContext) -> list[CheckResult]:
        rows = ctx.rows("SELECT job, extract(epoch FROM now() - max(finished_at)) FROM ...")
        return [grade(f"job:{job}", age, 86400, 2 * 86400, unit="s",
                      message=f"last success {age:.0f}s ago") for job, age in rows]

Statuses follow the Monitoring Plugins convention (OK 0, WARNING 1, CRITICAL 2, UNKNOWN 3); the
overall status is the most severe one, ranked OK < UNKNOWN < WARNING < CRITICAL (a known problem
outranks a check that could not be evaluated).
"""

from __future__ import annotations

import datetime as dt
import importlib
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from aegisctl.errors import AegisError, ConnectionFailed, UsageError

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import LoadedConfig
    from aegisctl.diagnostics.settings import ChecksSettings
    from aegisctl.output import Block
    from aegisctl.targets import Target

# Modules whose import registers checks. Add yours here (one line).
CHECK_PROVIDERS: list[str] = [
    "aegisctl.diagnostics.builtin_checks",
    "aegisctl.diagnostics.statement_checks",
    "aegisctl.diagnostics.replication_checks",
    "aegisctl.diagnostics.vector_checks",
    "aegisctl.diagnostics.bloat_checks",
    "aegisctl.diagnostics.sequence_checks",
    "aegisctl.diagnostics.maintenance_checks",
    "aegisctl.diagnostics.disk_checks",
    "aegisctl.diagnostics.backup_checks",
    "aegisctl.diagnostics.job_checks",
    "aegisctl.diagnostics.physical_checks",
    "aegisctl.diagnostics.physical_offsite_checks",
    "aegisctl.diagnostics.partition_checks",
    "aegisctl.diagnostics.cluster_checks",
    "aegisctl.diagnostics.pooler_checks",
    "aegisctl.diagnostics.retention_checks",
    "aegisctl.diagnostics.erasure_checks",
    "aegisctl.diagnostics.leftover_checks",
    "aegisctl.diagnostics.version_checks",
]


class Status(IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


_SEVERITY = {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}


def worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, key=lambda s: _SEVERITY[s], default=Status.OK)


@dataclass
class CheckResult:
    name: str
    status: Status
    value: float | None
    warning: float | None
    critical: float | None
    unit: str = ""  # s | % | B | "" (a count or a ratio)
    message: str = ""
    minimum: float | None = None
    maximum: float | None = None
    # The thresholds are floors (a ratio, recall): perfdata writes them as `warn:` ranges.
    lower_is_worse: bool = False
    # Labels beyond the target (e.g. a cluster member): one result per label set, the
    # Prometheus output carries them as labels.
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.name, "value": self.value,
                "unit": self.unit, "warning": self.warning, "critical": self.critical,
                "min": self.minimum, "max": self.maximum, "message": self.message,
                **({"labels": self.labels} if self.labels else {})}


class CheckSkipped(Exception):
    """The check does not apply here (said in `skipped` with this reason)."""


def grade(name: str, value: float | None, warning: float | None, critical: float | None, *,
          unit: str = "", message: str = "", lower_is_worse: bool = False,
          minimum: float | None = None, maximum: float | None = None) -> CheckResult:
    """A result from a measurement: beyond `critical` CRITICAL, beyond `warning` WARNING
    (strictly above, or strictly below when lower is worse); no value is UNKNOWN."""
    if value is None:
        status = Status.UNKNOWN
    elif lower_is_worse:
        status = (Status.CRITICAL if critical is not None and value < critical else
                  Status.WARNING if warning is not None and value < warning else Status.OK)
    else:
        status = (Status.CRITICAL if critical is not None and value > critical else
                  Status.WARNING if warning is not None and value > warning else Status.OK)
    return CheckResult(name, status, value, warning, critical, unit, message, minimum, maximum,
                       lower_is_worse)


@dataclass
class CheckContext:
    loaded: LoadedConfig
    target: Target
    conn: psycopg.Connection[Any] | None
    role: str | None = None  # primary | standby
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> ChecksSettings:
        """The thresholds for this target: its own `targets.NAME.checks` (merged over the
        global `checks:` when the config was loaded), else the global ones."""
        return target_checks(self.loaded, self.target.name)

    @property
    def db(self) -> psycopg.Connection[Any]:
        if self.conn is None:
            raise CheckSkipped("the database is unreachable")
        return self.conn

    def rows(self, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
        return self.db.execute(query, params).fetchall()

    def one(self, query: Any, params: Any = None) -> tuple[Any, ...]:
        row = self.db.execute(query, params).fetchone()
        assert row is not None
        return tuple(row)


CheckFn = Callable[[CheckContext], "CheckResult | Iterable[CheckResult]"]


@dataclass(frozen=True)
class CheckSpec:
    name: str
    fn: CheckFn
    description: str
    needs_db: bool = True


_REGISTRY: dict[str, CheckSpec] = {}


def register_check(name: str, description: str, *, needs_db: bool = True
                   ) -> Callable[[CheckFn], CheckFn]:
    def decorate(fn: CheckFn) -> CheckFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"check {name} is registered twice")
        _REGISTRY[name] = CheckSpec(name, fn, description, needs_db)
        return fn

    return decorate


def registered_checks() -> dict[str, CheckSpec]:
    for module in CHECK_PROVIDERS:
        importlib.import_module(module)
    return dict(_REGISTRY)


@dataclass
class CheckList:
    """`check --list`: every check a run can report."""

    specs: list[CheckSpec]

    def to_json(self) -> dict[str, Any]:
        return {"checks": [{"name": "connection", "description": "the database answers",
                            "needs_db": True}] +
                [{"name": s.name, "description": s.description, "needs_db": s.needs_db}
                 for s in self.specs]}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Table

        rows = [(c["name"], "yes" if c["needs_db"] else "no", c["description"])
                for c in self.to_json()["checks"]]
        return [Table([Column("check", "id"), Column("database", "id"),
                       Column("measures", "text")], list(rows), title="checks")]


def target_checks(loaded: LoadedConfig, target_name: str) -> ChecksSettings:
    spec = loaded.settings.targets.get(target_name)
    if spec is not None and spec.checks is not None:
        return spec.checks
    return loaded.settings.checks


def select_checks(only: list[str], skip: list[str], config_skip: list[str]
                  ) -> list[CheckSpec]:
    """--only / --skip (and checks.skip) applied to the registry; unknown names are refused."""
    specs = registered_checks()
    for name in [*only, *skip]:
        if name not in specs and name != "connection":
            raise UsageError(f"unknown check '{name}' (checks: connection, {', '.join(specs)})")
    unknown = [n for n in config_skip if n not in specs and n != "connection"]
    if unknown:
        raise UsageError(f"checks.skip names unknown check(s): {', '.join(unknown)}",
                         hint=f"checks: {', '.join(specs)}")
    chosen = [s for s in specs.values() if not only or s.name in only]
    excluded = set(skip) | ({n for n in config_skip if n not in only})
    return [s for s in chosen if s.name not in excluded]


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class TargetChecks:
    target: str
    role: str | None
    reachable: bool
    results: list[CheckResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    elapsed_ms: float = 0.0

    @property
    def status(self) -> Status:
        return worst(r.status for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "role": self.role, "reachable": self.reachable,
                "status": self.status.name, "checks": [r.to_json() for r in self.results],
                "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
                "elapsed_ms": self.elapsed_ms}


@dataclass
class CheckReport:
    targets: list[TargetChecks]
    checked_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def status(self) -> Status:
        return worst(t.status for t in self.targets)

    @property
    def exit_code(self) -> int:
        return int(self.status)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status.name, "exit_code": self.exit_code,
                "checked_at": self.checked_at.isoformat(timespec="seconds"),
                "targets": [t.to_json() for t in self.targets]}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        several = len(self.targets) > 1
        columns: list[Column | str] = [Column("status", "id"), Column("check", "id"),
                                       Column("value", "number"),
                                       Column("warn / crit", "number"), Column("message", "text")]
        if several:
            columns.insert(0, Column("target", "id"))
        rows: list[Sequence[Any]] = []
        for t in self.targets:
            for r in t.results:
                limits = " / ".join(show(v, r.unit) or "-" for v in (r.warning, r.critical))
                row = [r.status.name, r.name, show(r.value, r.unit),
                       None if limits == "- / -" else limits, r.message]
                rows.append([t.target, *row] if several else row)
        blocks: list[Block] = [Table(columns, rows, title="check")]
        for t in self.targets:
            for name, reason in t.skipped:
                prefix = f"{t.target}: " if several else ""
                blocks.append(Note(f"{prefix}skipped {name}: {reason}"))
        blocks.append(Note(f"{self.status.name} (exit {self.exit_code})"))
        return blocks

    def to_nagios(self) -> str:
        """Monitoring Plugins output: a status line with perfdata, then one line per check
        (and per skipped check). Text from data is folded onto one line and loses its `|`."""
        several = len(self.targets) > 1
        problems = []
        perf = []
        lines = []
        for t in self.targets:
            for r in t.results:
                label = f"{t.target}/{r.name}" if several else r.name
                if r.status is not Status.OK:
                    problems.append(f"{label}: {r.message or r.status.name}")
                lines.append(nagios_text(f"{r.status.name} {label}: {r.message}").rstrip())
                perf.append(perfdata(label, r))
            for name, reason in t.skipped:
                label = f"{t.target}/{name}" if several else name
                lines.append(nagios_text(f"SKIPPED {label}: {reason}"))
        counts = {s: sum(1 for t in self.targets for r in t.results if r.status is s)
                  for s in Status}
        summary = ", ".join(f"{counts[s]} {s.name.lower()}" for s in
                            (Status.CRITICAL, Status.WARNING, Status.UNKNOWN) if counts[s])
        head = f"AEGISCTL {self.status.name} - "
        head += f"{summary}: " + "; ".join(problems) if problems else \
            f"{counts[Status.OK]} checks ok"
        first = f"{nagios_text(head)} | {' '.join(p for p in perf if p)}"
        return "\n".join([first, *lines])


def show(value: float | None, unit: str) -> str | None:
    if value is None:
        return None
    if unit == "s":
        from aegisctl.diagnostics.result import format_seconds

        return f"{round(value, 3):g}s" if value < 60 else format_seconds(value)
    if unit == "B":
        from aegisctl.units import format_bytes

        return format_bytes(value)
    if unit == "%":
        return f"{value:g}%"
    if value == int(value) and abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    return f"{value:g}"


_LINE_BREAKS = re.compile(r"[\t\n\v\f\r\x1c-\x1e\x85\u2028\u2029]+")


def nagios_text(text: str) -> str:
    """One line of plugin output: line breaks (a newline in an object name would start a new
    output line) become a space, and `|` (it starts the perfdata) a `/`. Other control
    characters are left to `output.inert`, which shows them as visible escapes."""
    return _LINE_BREAKS.sub(" ", text).replace("|", "/")


def _perf_number(value: float | None) -> str:
    """A plain decimal: the plugin guidelines' grammar has no exponent (3.024e+06)."""
    if value is None:
        return ""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _perf_range(threshold: float | None, lower_is_worse: bool) -> str:
    """A threshold as a Monitoring Plugins range: `10` alerts outside 0..10 (above 10);
    a floor alerts below it, written `0.95:`."""
    if threshold is None:
        return ""
    return f"{_perf_number(threshold)}:" if lower_is_worse else _perf_number(threshold)


def perfdata(label: str, result: CheckResult) -> str:
    """'label'=value[UOM];warn;crit;min;max (Monitoring Plugins guidelines)."""
    clean = nagios_text(label).replace("'", "_").replace("=", "_")
    quoted = f"'{clean}'" if any(c in clean for c in " /:") else clean
    value = "U" if result.value is None else _perf_number(result.value) + result.unit
    fields = [_perf_range(result.warning, result.lower_is_worse),
              _perf_range(result.critical, result.lower_is_worse),
              _perf_number(result.minimum), _perf_number(result.maximum)]
    while fields and not fields[-1]:
        fields.pop()
    return ";".join([f"{quoted}={value}", *fields])


def run_target(loaded: LoadedConfig, target: Target, specs: list[CheckSpec],
               connect: Callable[[], psycopg.Connection[Any]],
               requested: Iterable[str] = ()) -> TargetChecks:
    """Every selected check against one target; a failed check is UNKNOWN, never fatal.
    A check named in `requested` (--only) that does not apply or cannot run is UNKNOWN with
    the reason, not silently skipped: whoever asked for it is watching for its answer."""
    import psycopg

    from aegisctl.diagnostics.result import describe_error

    started = time.perf_counter()
    out = TargetChecks(target=target.name, role=None, reachable=False)
    conn = None
    try:
        conn = connect()
        out.reachable = True
        connect_seconds = time.perf_counter() - started
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        out.role = "standby" if row and row[0] else "primary"
        out.results.append(CheckResult("connection", Status.OK, round(connect_seconds, 3), None,
                                       None, "s", f"connected as {out.role}", 0))
    except ConnectionFailed as exc:
        out.results.append(CheckResult("connection", Status.CRITICAL, None, None, None, "s",
                                       str(exc)))
    except AegisError as exc:  # e.g. a password_env that is not set: not the database's fault
        out.results.append(CheckResult("connection", Status.UNKNOWN, None, None, None, "s",
                                       str(exc)))
    except psycopg.Error as exc:  # connected, but even SELECT pg_is_in_recovery() failed
        if conn is not None:
            conn.close()
            conn = None
        out.reachable = False
        out.results.append(CheckResult("connection", Status.UNKNOWN, None, None, None, "s",
                                       describe_error(exc)))
    ctx = CheckContext(loaded, target, conn, out.role)
    wanted = set(requested)

    def skip(name: str, reason: str) -> None:
        if name in wanted:
            out.results.append(CheckResult(name, Status.UNKNOWN, None, None, None, "",
                                           f"could not run: {reason}"))
        else:
            out.skipped.append((name, reason))

    try:
        for spec in specs:
            if spec.needs_db and conn is None:
                skip(spec.name, "the database is unreachable")
                continue
            try:
                produced = spec.fn(ctx)
                items = [produced] if isinstance(produced, CheckResult) else list(produced)
                out.results.extend(items)
            except CheckSkipped as exc:
                skip(spec.name, str(exc))
            except psycopg.Error as exc:
                if conn is not None and not conn.closed and \
                        conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                    conn.rollback()
                out.results.append(CheckResult(spec.name, Status.UNKNOWN, None, None, None, "",
                                               describe_error(exc)))
            except AegisError as exc:
                out.results.append(CheckResult(spec.name, Status.UNKNOWN, None, None, None, "",
                                               str(exc)))
    finally:
        if conn is not None:
            conn.close()
    out.elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    return out
