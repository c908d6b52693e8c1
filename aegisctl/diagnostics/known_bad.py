"""Known-bad versions: releases of pgvector, PostgreSQL and Barman with a bug that affects data,
from a small table shipped with aegisctl (aegisctl/data/known_bad_versions.json).

The table is input like any other file: `parse_known_bad` validates every entry (products,
version strings, a range that is not empty, every field present) before anything reads it.
`known_bad_findings` is a pure function of the version strings, so the check and `health` read
the versions from the live server and tests can hand it any version they like.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRODUCTS = ("pgvector", "postgresql", "barman")
_FIELDS = ("product", "affected_from", "fixed_in", "applies_to", "problem", "action", "source")
# Conditions an entry may be limited to (`when`): physical backups enabled for the target.
CONDITIONS = ("physical_backups",)
_VERSION = re.compile(r"^\d+(\.\d+)*$")
_LEADING = re.compile(r"^\s*(\d+(?:\.\d+)*)")
DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "known_bad_versions.json"


class KnownBadTableError(ValueError):
    """The shipped table is malformed (a packaging or editing mistake)."""


@dataclass(frozen=True)
class KnownBad:
    product: str
    affected_from: str  # first affected version (inclusive)
    fixed_in: str  # first fixed version
    applies_to: str
    problem: str
    action: str
    source: str  # the changelog or release notes, and the version that says so
    when: str | None = None  # applies only where this condition holds (CONDITIONS)

    def affects(self, version: str) -> bool:
        found = version_tuple(version)
        return found is not None and \
            _tuple(self.affected_from) <= found < _tuple(self.fixed_in)


@dataclass(frozen=True)
class Finding:
    entry: KnownBad
    version: str

    def sentence(self) -> str:
        e = self.entry
        return (f"{e.product} {self.version}: {e.problem} ({e.applies_to}; fixed in "
                f"{e.fixed_in}): {e.action} [{e.source}]")

    @property
    def condition(self) -> str | None:
        return self.entry.when

    def to_json(self) -> dict[str, Any]:
        e = self.entry
        return {"product": e.product, "version": self.version, "affected_from": e.affected_from,
                "fixed_in": e.fixed_in, "applies_to": e.applies_to, "problem": e.problem,
                "action": e.action, "source": e.source, "when": e.when}


def _tuple(version: str) -> tuple[int, ...]:
    parts = tuple(int(p) for p in version.split("."))
    # 14.4 == 14.4.0: trailing zeros do not make a version newer.
    while len(parts) > 1 and parts[-1] == 0:
        parts = parts[:-1]
    return parts


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    """The leading dotted number of a version string: '14.3 (Debian 14.3-1.pgdg)' -> (14, 3);
    None when there is none."""
    if not text:
        return None
    match = _LEADING.match(text)
    return _tuple(match.group(1)) if match else None


def parse_known_bad(text: str, origin: str = "known_bad_versions.json") -> list[KnownBad]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KnownBadTableError(f"{origin}: not JSON: {exc}") from None
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise KnownBadTableError(f"{origin}: expected an object with a non-empty 'entries' list")
    table = []
    for index, item in enumerate(entries):
        where = f"{origin}: entries[{index}]"
        if not isinstance(item, dict):
            raise KnownBadTableError(f"{where}: expected an object")
        unknown = sorted(set(item) - set(_FIELDS) - {"when"})
        missing = [f for f in _FIELDS if f not in item]
        if unknown or missing:
            raise KnownBadTableError(f"{where}: " + "; ".join(
                ([f"unknown field(s) {', '.join(unknown)}"] if unknown else [])
                + ([f"missing field(s) {', '.join(missing)}"] if missing else [])))
        if any(not isinstance(item[f], str) or not item[f].strip() for f in _FIELDS):
            raise KnownBadTableError(f"{where}: every field must be a non-empty string")
        if item["product"] not in PRODUCTS:
            raise KnownBadTableError(f"{where}: product {item['product']!r} is not one of "
                                     f"{', '.join(PRODUCTS)}")
        for key in ("affected_from", "fixed_in"):
            if not _VERSION.match(item[key]):
                raise KnownBadTableError(f"{where}: {key} {item[key]!r} is not a version like "
                                         "0.3.1")
        if not _tuple(item["affected_from"]) < _tuple(item["fixed_in"]):
            raise KnownBadTableError(f"{where}: affected_from {item['affected_from']} must be "
                                     f"older than fixed_in {item['fixed_in']}")
        when = item.get("when")
        if when is not None and when not in CONDITIONS:
            raise KnownBadTableError(f"{where}: when {when!r} is not one of "
                                     f"{', '.join(CONDITIONS)}")
        table.append(KnownBad(**{f: item[f].strip() for f in _FIELDS}, when=when))
    return table


def load_known_bad(path: Path | None = None) -> list[KnownBad]:
    source = path or DATA_FILE
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise KnownBadTableError(f"cannot read {source}: {exc.strerror}") from None
    return parse_known_bad(text, source.name)


def known_bad_findings(versions: dict[str, str | None],
                       table: list[KnownBad] | None = None,
                       conditions: set[str] | None = None) -> list[Finding]:
    """Every table entry whose range holds the given version of its product (a product whose
    version is None or unreadable is not judged). `conditions`: those that hold here, for
    entries limited by `when`; None when they were not looked at (every entry is listed)."""
    entries = load_known_bad() if table is None else table
    return [Finding(e, versions[e.product] or "") for e in entries
            if versions.get(e.product) and e.affects(versions[e.product] or "")
            and (conditions is None or e.when is None or e.when in conditions)]


def server_versions(conn: Any) -> dict[str, str | None]:
    """PostgreSQL's and pgvector's versions as the server reports them."""
    row = conn.execute("SELECT current_setting('server_version'), (SELECT extversion FROM "
                       "pg_extension WHERE extname = 'vector')").fetchone()
    return {"postgresql": row[0] if row else None, "pgvector": row[1] if row else None}
