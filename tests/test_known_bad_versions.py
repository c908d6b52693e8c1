"""Known-bad versions (issue 25, section 4): the shipped table is validated at load, the check
judges the version strings it is given, and `check` / `health` read them from the real server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aegisctl.diagnostics.checks import Status
from aegisctl.diagnostics.known_bad import (
    KnownBadTableError,
    load_known_bad,
    parse_known_bad,
    version_tuple,
)
from aegisctl.diagnostics.version_checks import judge_versions

GOOD_ENTRY = {"product": "pgvector", "affected_from": "0.2.7", "fixed_in": "0.3.1",
              "applies_to": "IVFFlat indexes", "problem": "inserts corrupted ivfflat indexes",
              "action": "upgrade, then recreate the ivfflat indexes",
              "source": "pgvector CHANGELOG.md, 0.3.1"}


def table_text(**changes: Any) -> str:
    entry = {**GOOD_ENTRY, **changes}
    return json.dumps({"entries": [{k: v for k, v in entry.items() if v is not None}]})


def test_shipped_table_loads_and_every_entry_cites_its_source() -> None:
    table = load_known_bad()
    assert {e.product for e in table} == {"pgvector", "postgresql", "barman"}
    ivfflat = next(e for e in table if e.product == "pgvector" and e.fixed_in == "0.3.1")
    assert ivfflat.affected_from == "0.2.7" and "recreate" in ivfflat.action
    assert all(e.source and any(ch.isdigit() for ch in e.source) for e in table)


@pytest.mark.parametrize(("changes", "complaint"), [
    ({"product": "mysql"}, "product 'mysql'"),
    ({"fixed_in": "0.3.x"}, "fixed_in '0.3.x'"),
    ({"affected_from": "0.3.1"}, "must be older than fixed_in"),
    ({"source": None}, "missing field(s) source"),
    ({"severity": "high"}, "unknown field(s) severity"),
    ({"problem": "  "}, "non-empty string"),
    ({"when": "always"}, "when 'always' is not one of physical_backups"),
])
def test_a_malformed_table_is_refused_with_the_entry_named(changes: dict[str, Any],
                                                           complaint: str) -> None:
    with pytest.raises(KnownBadTableError, match="entries\\[0\\]") as info:
        parse_known_bad(table_text(**changes))
    assert complaint in str(info.value)
    with pytest.raises(KnownBadTableError, match="not JSON"):
        parse_known_bad("{entries: [")


def test_version_strings_compare_numerically() -> None:
    assert version_tuple("14.3 (Debian 14.3-1.pgdg120+1)") == (14, 3)
    assert version_tuple("0.10.0") > version_tuple("0.9.9")  # type: ignore[operator]
    assert version_tuple("18beta1") == (18,) and version_tuple("devel") is None


def test_the_check_fires_for_a_known_bad_version_and_names_the_fix() -> None:
    result = judge_versions({"pgvector": "0.3.0", "postgresql": "14.3", "barman": None})
    assert result.status is Status.WARNING and result.value == 4  # three pgvector entries, one PostgreSQL
    assert "pgvector 0.3.0" in result.message and "fixed in 0.3.1" in result.message
    assert "recreate every ivfflat index" in result.message
    assert "PostgreSQL 14.4 release notes" in result.message
    # The range is half-open: the fixed release and later ones are not flagged.
    fixed = judge_versions({"pgvector": "0.8.0", "postgresql": "14.4", "barman": "3.13.1"})
    assert fixed.status is Status.OK and fixed.value == 0
    assert judge_versions({"barman": "3.13.0"}).status is Status.WARNING
    # An entry limited to a condition fires only where it holds: PostgreSQL 18.6's incremental
    # backups matter where physical backups are enabled.
    assert judge_versions({"postgresql": "18.6"}).status is Status.OK
    physical = judge_versions({"postgresql": "18.6"}, conditions=frozenset({"physical_backups"}))
    assert physical.status is Status.WARNING and "fixed in 18.7" in physical.message
    assert "take a new full backup" in physical.message


def test_check_and_health_read_the_real_server(cli: Any, write_config: Any,
                                               db_dsn: str) -> None:
    config: Path = write_config({"targets": {"primary": {"dsn": db_dsn}},
                                 "connection": {"retry": {"attempts": 1}}})
    result = cli("--config", str(config), "check", "--only", "known_bad_versions", "-f", "json")
    [check] = json.loads(result.stdout)["targets"][0]["checks"][1:]
    assert check["name"] == "known_bad_versions" and check["status"] == "OK", check
    assert "postgresql 18" in check["message"]
    # health does not look at conditions: it lists conditional entries, marked as such.
    health = cli("--config", str(config), "health", "-f", "json")
    assert all(k["when"] == "physical_backups" for k in json.loads(health.stdout)["known_bad"])


def test_health_shows_a_known_bad_version() -> None:
    from aegisctl.diagnostics.known_bad import known_bad_findings
    from aegisctl.health import HealthReport
    from aegisctl.output import Note

    report = HealthReport(target="primary", reachable=True, dsn="postgresql://x@h/db",
                          embedded=False, server_version="14.2",
                          known_bad=[f.to_json() for f in known_bad_findings(
                              {"postgresql": "14.2", "pgvector": "0.8.1"})])
    notes = [b.text for b in report.to_view() if isinstance(b, Note)]
    assert notes == [next(n for n in notes if n.startswith("known bug: postgresql 14.2: "))]
    assert "fixed in 14.4" in notes[0] and "maint reindex --all" in notes[0]
    assert report.to_json()["known_bad"][0]["fixed_in"] == "14.4"
