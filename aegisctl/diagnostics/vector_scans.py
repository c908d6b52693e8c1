"""aegisctl's own scans of the vector indexes (the recall queries of `check` and of
`diag vectors --recall-sample`), tallied per index in the `vector_scans` snapshot so the
"unused" check can subtract them. Both the check (vector_checks) and the topic (vectors)
record here; this module imports neither."""

from __future__ import annotations

from typing import Any

SNAPSHOT = "vector_scans"


def index_key(index: dict[str, Any]) -> str:
    return f"{index['schema']}.{index['index']}"


def tally_entry(saved: dict[str, Any], key: str, scans: int, seq: int) -> dict[str, int]:
    """aegisctl's own index scans and table sequential scans of one index so far, started
    afresh when the counters went down (a statistics reset) since they were last seen."""
    entry = saved.get(key)
    if not isinstance(entry, dict) or scans < int(entry.get("seen_idx", 0)) \
            or seq < int(entry.get("seen_seq", 0)):
        entry = {"own_idx": 0, "own_seq": 0}
    return {"own_idx": min(scans, int(entry.get("own_idx", 0))),
            "own_seq": min(seq, int(entry.get("own_seq", 0))), "seen_idx": scans,
            "seen_seq": seq}


def add_own_scans(entry: dict[str, int], found: dict[str, Any]) -> None:
    """The scans one recall measurement added (they reach the statistics after it)."""
    for kind, field in (("idx", "own_index_scans"), ("seq", "own_seq_scans")):
        added = int(found.get(field) or 0)
        entry[f"own_{kind}"] += added
        entry[f"seen_{kind}"] += added


def record_recall_scans(conn: Any, settings: Any, target: str, columns: list[dict[str, Any]],
                        indexes: list[dict[str, Any]]) -> None:
    """`diag vectors --recall-sample` queries the indexes too: its scans go in the same
    tally, so they never make an unused index look used."""
    from aegisctl.diagnostics.snapshots import update_snapshot

    def change(saved: dict[str, Any]) -> None:
        seq_of = {(c["schema"], c["table"]): int(c.get("table_seq_scans") or 0) for c in columns}
        for index in indexes:
            if "own_index_scans" not in index:
                continue
            entry = tally_entry(saved, index_key(index), int(index["scans"] or 0),
                                seq_of.get((index["schema"], index["table"]), 0))
            add_own_scans(entry, index)
            saved[index_key(index)] = entry

    update_snapshot(conn, settings, target, SNAPSHOT, change)
