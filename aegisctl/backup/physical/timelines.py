"""Timelines and gaps in the WAL archive.

A promotion (a Patroni switchover or failover) starts a new timeline: the new leader writes
`<TLI>.history` (each ancestor timeline and the LSN where it was left) and names its WAL
segments with the new timeline from the switch point on. pg_receivewal follows the switch, so
the archive holds timeline 1 up to the switch, the history file, then timeline 2. Recovery
crosses the switch through the history file; what it cannot cross is a segment missing from
the chain of timelines it follows: that is a gap, and the recoverable window of every backup
that starts before it ends there.

Barman's archive is input: history files are read size-bounded, every line validated.
"""

from __future__ import annotations

import gzip
import itertools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aegisctl.backup.physical.backups import PhysicalBackup
    from aegisctl.backup.physical.engine import Engine
    from aegisctl.config import LoadedConfig
    from aegisctl.targets import Target

SEGMENT_SIZE = 16 * 1024**2  # the server default, as wal_position assumes
SEGMENTS_PER_ID = 0x100000000 // SEGMENT_SIZE
_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")
_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
MAX_HISTORY = 1024 * 1024


@dataclass(frozen=True)
class Timeline:
    id: int
    begin_lsn: int  # where it branched off its parent (0 for the first one)
    parent: int | None = None

    @property
    def begin_segment(self) -> int:
        return self.begin_lsn // SEGMENT_SIZE


@dataclass
class WalGap:
    """Segments missing from the archive between two that are there."""

    timeline: int  # the timeline recovery would read them from
    first: int  # segment numbers, inclusive
    last: int

    @property
    def first_name(self) -> str:
        return segment_name(self.timeline, self.first)

    @property
    def last_name(self) -> str:
        return segment_name(self.timeline, self.last)

    @property
    def start_lsn(self) -> str:
        return format_lsn(self.first * SEGMENT_SIZE)

    @property
    def end_lsn(self) -> str:
        return format_lsn((self.last + 1) * SEGMENT_SIZE)

    def describe(self) -> str:
        count = self.last - self.first + 1
        names = self.first_name if count == 1 else f"{self.first_name} .. {self.last_name}"
        return (f"{count} WAL segment(s) missing from the archive: {names} "
                f"(LSN {self.start_lsn} .. {self.end_lsn})")

    def to_json(self) -> dict[str, Any]:
        return {"timeline": self.timeline, "first_segment": self.first_name,
                "last_segment": self.last_name, "start_lsn": self.start_lsn,
                "end_lsn": self.end_lsn}


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def segment_name(timeline: int, segment: int) -> str:
    return f"{timeline:08X}{segment // SEGMENTS_PER_ID:08X}{segment % SEGMENTS_PER_ID:08X}"


def parse_segment(name: str) -> tuple[int, int] | None:
    """(timeline, segment number) of a complete segment's name; None for anything else
    (.partial, .history, .backup)."""
    match = _SEGMENT.match(name)
    if not match:
        return None
    tli, high, low = (int(part, 16) for part in match.groups())
    if tli == 0 or low >= SEGMENTS_PER_ID:
        return None
    return tli, high * SEGMENTS_PER_ID + low


def newest_timeline(names: list[str]) -> int | None:
    """The newest timeline the archive knows of: from its segments and history files."""
    found = [pos[0] for pos in map(parse_segment, names) if pos]
    found += [int(m.group(1), 16) for m in map(_HISTORY.match, names) if m]
    return max(found) if found else None


def parse_history(text: str, timeline: int) -> list[Timeline] | None:
    """The chain of timelines a `<timeline>.history` file describes, oldest first, ending with
    `timeline` itself; None when the file is not a valid history of that timeline."""
    chain: list[Timeline] = []
    begin, parent = 0, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2 or not fields[0].isdigit():
            return None
        lsn = _LSN.match(fields[1])
        tli = int(fields[0])
        if lsn is None or tli <= (parent or 0) or tli >= timeline:
            return None
        switch = (int(lsn.group(1), 16) << 32) | int(lsn.group(2), 16)
        if switch < begin:
            return None
        chain.append(Timeline(tli, begin, parent))
        begin, parent = switch, tli
    chain.append(Timeline(timeline, begin, parent))
    return chain


def read_history(engine: Engine, timeline: int) -> list[Timeline] | None:
    """The archived history file of `timeline` (gzip when Barman compressed it), parsed."""
    path = engine.server_dir / "wals" / f"{timeline:08X}.history"
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_HISTORY + 1)
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if len(data) > MAX_HISTORY:
        return None
    return parse_history(data.decode("utf-8", "replace"), timeline)


def timeline_chain(engine: Engine, names: list[str]) -> list[Timeline]:
    """The timelines recovery to the newest point follows, oldest first. Without the newest
    timeline's history file (streaming began after the switch), only that timeline."""
    newest = newest_timeline(names)
    if newest is None:
        return []
    if newest == 1:
        return [Timeline(1, 0)]
    return read_history(engine, newest) or [Timeline(newest, 0)]


def wal_gaps(names: list[str], chain: list[Timeline]) -> list[WalGap]:
    """Segments missing between the oldest and the newest archived segment of the chain, each
    run named on the timeline recovery would read it from. A segment counts on a timeline
    from that timeline's start to the segment where the next one branched off (that one is on
    both); segments of timelines off the chain (an old leader's lost branch) do not count."""
    if not chain:
        return []
    covered: set[int] = set()
    ends = [t.begin_segment for t in chain[1:]] + [None]
    for timeline, end in zip(chain, ends, strict=True):
        for pos in map(parse_segment, names):
            if pos and pos[0] == timeline.id and pos[1] >= timeline.begin_segment and \
                    (end is None or pos[1] <= end):
                covered.add(pos[1])
    if not covered:
        return []
    gaps: list[WalGap] = []
    ordered = sorted(covered)
    for previous, current in itertools.pairwise(ordered):
        if current > previous + 1:
            first = previous + 1
            on = max((t for t in chain if t.begin_segment <= first), key=lambda t: t.id,
                     default=chain[0])
            gaps.append(WalGap(on.id, first, current - 1))
    return gaps


def archive_gaps(engine: Engine, names: list[str]) -> list[WalGap]:
    return wal_gaps(names, timeline_chain(engine, names))


def current_timeline(loaded: LoadedConfig, target: Target) -> int:
    """The timeline the target's server (a cluster's leader) writes on now."""
    from aegisctl.cluster.members import server_identity
    from aegisctl.db import connect

    with connect(loaded, target, "backup create --physical", needs="direct") as conn:
        return server_identity(conn).timeline


def chain_break(engine: Engine, parent: PhysicalBackup, timeline: int) -> str | None:
    """Why an incremental on `parent` would not continue a restorable chain, or None: the
    server promoted since (a new timeline: its WAL summaries and the archive branch there), or
    the archive lost WAL after the parent began."""
    if parent.timeline is not None and timeline > parent.timeline:
        return (f"the timeline changed since {parent.id} ({parent.timeline} -> {timeline}: "
                "a promotion): a new chain starts with a full backup")
    from aegisctl.backup.physical.walfiles import archived_wals

    begin = parse_segment(parent.begin_wal or "")
    names = [w[0] for w in archived_wals(engine)]
    for gap in archive_gaps(engine, names):
        if begin is not None and gap.last >= begin[1]:
            return (f"the WAL archive has a gap after {parent.id} began ({gap.describe()}): "
                    "a new chain starts with a full backup")
    return None


class TimelineWatch:
    """Says once when the archive's newest timeline moves on (a promotion streamed in), and
    names a gap that appeared in the archive."""

    def __init__(self, engine: Engine) -> None:
        from aegisctl.backup.physical.walfiles import archived_wals

        self.engine = engine
        names = [w[0] for w in archived_wals(engine)]
        self.seen = newest_timeline(names)
        self.gaps = {(g.timeline, g.first) for g in archive_gaps(engine, names)}

    def news(self) -> list[str]:
        import datetime as dt

        from aegisctl.backup.physical.backups import save_state
        from aegisctl.backup.physical.walfiles import archived_wals

        names = [w[0] for w in archived_wals(self.engine)]
        newest = newest_timeline(names)
        lines = []
        chain = timeline_chain(self.engine, names)
        if newest is not None and self.seen is not None and newest > self.seen:
            switch = format_lsn(chain[-1].begin_lsn) if chain and chain[-1].id == newest \
                else "unknown (no history file)"
            lines.append(f"timeline switch streamed: {self.seen} -> {newest} at LSN {switch} "
                         f"({newest:08X}.history); the next physical backup is a full one")
            save_state(self.engine, {"timeline": {
                "id": newest, "previous": self.seen, "switch_lsn": switch,
                "detected_at": dt.datetime.now(dt.UTC).isoformat()}})
        if newest is not None:
            self.seen = newest
        for gap in wal_gaps(names, chain):
            if (gap.timeline, gap.first) not in self.gaps:
                self.gaps.add((gap.timeline, gap.first))
                lines.append(f"the WAL archive has a gap: {gap.describe()}")
        return lines
