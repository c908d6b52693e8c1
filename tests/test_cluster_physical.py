"""Physical backups of a cluster target on a real Patroni cluster (two members, etcd): the slot
is a Patroni permanent slot every member keeps, the WAL streamer follows a switchover and a
kill -9 failover to the new leader, the archive crosses the timeline switch with no gap, the
next backup after the promotion is a full one, and a drill restores a row committed after the
promotion. One cluster and one streamer for the whole module, in scenario order."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from patroni_fixtures import PatroniCluster, http_json, patroni_cluster, wait_for  # noqa: F401

pytestmark = pytest.mark.slow

DB = "aegis"
SLOT = "aegisctl_barman"


@dataclass
class HaPhysical:
    cluster: PatroniCluster
    loaded: Any
    target: Any
    engine: Any
    config: Path = field(default_factory=Path)
    events: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    first_backup: str = ""

    def slot_active_on(self, member: Any) -> bool:
        with member.connect() as conn:
            row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                               (SLOT,)).fetchone()
        return row == (True,)

    def archived(self) -> list[str]:
        from aegisctl.backup.physical.walfiles import archived_wals

        return [w[0] for w in archived_wals(self.engine)]

    def fresh_target(self) -> Any:
        from aegisctl.targets import resolve_target

        return resolve_target(self.loaded, "cluster", env={})


@pytest.fixture(scope="module")
def ha(patroni_cluster: PatroniCluster) -> Iterator[HaPhysical]:  # noqa: F811
    from aegisctl.backup.physical.backups import create_physical
    from aegisctl.backup.physical.engine import engine_for
    from aegisctl.backup.physical.setup import enable_physical
    from aegisctl.config import load_config
    from aegisctl.targets import resolve_target

    cluster = patroni_cluster
    with cluster.leader().connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB}")
    with cluster.leader().connect(DB) as conn:
        conn.execute("CREATE TABLE mem (id bigserial PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO mem (note) SELECT 'base ' || g FROM generate_series(1, 500) g")
    folder = cluster.base / "aegisctl"  # the server's user must reach Barman's home
    folder.mkdir(mode=0o755)
    config = folder / "aegisctl.yaml"
    config.write_text(yaml.safe_dump({
        "targets": {"cluster": {"dsn": "postgresql://postgres@{host}:{port}/" + DB,
                                "patroni": {"urls": cluster.urls}}},
        "connection": {"retry": {"attempts": 1}},
        "backup": {"directory": str(folder / "backups"),
                   "physical": {"directory": str(folder / "barman"), "archive_interval": "2s",
                                "max_slot_wal_keep_size": "1GB", "drill_timeout": "180s"}},
    }))
    loaded = load_config(str(config), env={})
    target = resolve_target(loaded, "cluster", env={})
    result = enable_physical(loaded, target)
    assert result.configured, result.to_json()
    env = HaPhysical(cluster, loaded, target, engine_for(loaded, target), config)
    # The streamer has a target of its own, as a separate process would.
    env.thread = threading.Thread(target=_stream, args=(env,), daemon=True)
    env.thread.start()
    try:
        wait_for("the streamer on the leader", lambda: env.slot_active_on(cluster.leader()), 90)
        env.first_backup = create_physical(loaded, env.fresh_target()).backup.id
        yield env
    finally:
        env.stop.set()
        if env.thread is not None:
            env.thread.join(120)
        shutil.rmtree(folder, ignore_errors=True)


def test_enable_declares_the_slot_and_settings_in_patronis_configuration(
        ha: HaPhysical) -> None:
    """A slot created by SQL would be dropped by Patroni as unknown and would not exist on a new
    leader: it is a permanent slot, and every member has it and summarize_wal."""
    status, config = http_json(f"{ha.cluster.members[0].api_url}/config")
    assert status == 200 and config["slots"][SLOT] == {"type": "physical"}
    assert config["postgresql"]["parameters"]["summarize_wal"] == "on"
    for member in ha.cluster.members:
        def ready(member: Any = member) -> bool:
            with member.connect() as conn:
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s), "
                    "current_setting('summarize_wal')", (SLOT,)).fetchone()
            return row == (1, "on")
        wait_for(f"the slot and summarize_wal on {member.name}", ready, 60)


def test_the_streamer_follows_a_switchover_and_the_archive_crosses_the_timeline(
        ha: HaPhysical) -> None:
    from aegisctl.backup.physical.timelines import archive_gaps, newest_timeline
    from aegisctl.backup.physical.wal import switch_and_archive, wal_status

    timeline = newest_timeline(ha.archived()) or 1
    with ha.cluster.leader().connect(DB) as conn:
        conn.execute("INSERT INTO mem (note) SELECT 'before switchover ' || g "
                     "FROM generate_series(1, 200) g")
    _old, new = ha.cluster.switchover()
    wait_for(f"the streamer on the new leader {new.name}", lambda: ha.slot_active_on(new), 120)
    with new.connect(DB) as conn:
        conn.execute("INSERT INTO mem (note) SELECT 'after switchover ' || g "
                     "FROM generate_series(1, 200) g")
    switch_and_archive(ha.engine)  # Barman points at the new leader now
    wait_for("the new timeline's history in the archive",
             lambda: (newest_timeline(ha.archived()) or 0) > timeline, 60)
    assert archive_gaps(ha.engine, ha.archived()) == []
    status = wal_status(ha.loaded, ha.fresh_target())
    assert status.gaps == [] and status.streaming, status.to_json()
    assert status.timeline and status.timeline > timeline
    assert any(e.startswith("timeline switch streamed") for e in ha.events), ha.events
    assert any("receive-wal started" in e and f"leader {new.name}" in e for e in ha.events), \
        ha.events


def test_after_a_kill_9_failover_the_next_backup_is_full_and_a_drill_crosses_the_promotion(
        ha: HaPhysical) -> None:
    from aegisctl.backup.physical.backups import create_physical
    from aegisctl.backup.physical.restore import run_drill
    from aegisctl.backup.physical.timelines import archive_gaps, newest_timeline

    timeline = newest_timeline(ha.archived()) or 1
    _old, new = ha.cluster.kill_leader()
    wait_for(f"the streamer on the new leader {new.name}", lambda: ha.slot_active_on(new), 150)
    with new.connect(DB) as conn:
        conn.execute("INSERT INTO mem (note) VALUES ('committed after the promotion')")
        row = conn.execute("SELECT count(*), clock_timestamp() FROM mem").fetchone()
        assert row is not None
        count, committed = int(row[0]), row[1]
        time.sleep(2)
        # Recovery to a time stops at the first commit after it: there must be one (and this
        # row must not be restored).
        conn.execute("INSERT INTO mem (note) VALUES ('committed after the recovery target')")
    # An incremental asked for now cannot continue the chain of the old timeline.
    backup = create_physical(ha.loaded, ha.fresh_target(), incremental=True)
    assert backup.backup.type == "full", backup.to_json()
    assert backup.full_reason and "timeline changed" in backup.full_reason
    assert (newest_timeline(ha.archived()) or 0) > timeline
    assert archive_gaps(ha.engine, ha.archived()) == []
    # The first backup (taken before both promotions) recovers past the last one.
    to_time = committed + dt.timedelta(seconds=1)
    report = run_drill(ha.loaded, ha.fresh_target(), backup_id=ha.first_backup,
                       to_time=to_time, expected_counts={"public.mem": count})
    assert report.ok, report.to_json()
    assert report.row_counts["public.mem"] == count


def test_check_names_a_gap_in_the_archive_and_the_next_incremental_is_full(
        ha: HaPhysical, cli: Any) -> None:
    """WAL lost from the archive (a segment removed, as a failed disk would): `check` and `wal
    status` name the missing segment and its LSN range, and the chain cannot continue."""
    import json

    from aegisctl.backup.physical.backups import create_physical, list_physical
    from aegisctl.backup.physical.timelines import parse_segment
    from aegisctl.backup.physical.wal import switch_and_archive, wal_status

    checked = cli("--config", str(ha.config), "check", "--only", "physical_backups",
                  "--format", "json")
    results = {r["name"]: r for r in json.loads(checked.stdout)["targets"][0]["checks"]}
    assert results["wal_archive_gaps"]["status"] == "OK", results
    # The newest backup's own segments and the drill's are archived; one more closes the one
    # after them, so a segment between two archived ones can go missing.
    switch_and_archive(ha.engine)
    ha.stop.set()  # Barman's archiver must not append while its catalogue is edited
    assert ha.thread is not None
    ha.thread.join(120)
    newest = max((b for b in list_physical(ha.engine) if b.usable), key=lambda b: b.id)
    begin = parse_segment(newest.begin_wal or "")
    segments = sorted(n for n in ha.archived() if parse_segment(n))
    victim = segments[-2]
    assert begin is not None and parse_segment(victim)[1] > begin[1]  # type: ignore[index]
    xlog = ha.engine.server_dir / "wals" / f"{ha.engine.server}-xlog.db"
    xlog.write_text("".join(line for line in xlog.read_text().splitlines(keepends=True)
                            if not line.startswith(victim)))
    (ha.engine.server_dir / "wals" / victim[:16] / victim).unlink()
    checked = cli("--config", str(ha.config), "check", "--only", "physical_backups",
                  "--format", "json")
    results = {r["name"]: r for r in json.loads(checked.stdout)["targets"][0]["checks"]}
    gap = results["wal_archive_gaps"]
    assert gap["status"] == "CRITICAL" and victim in gap["message"], gap
    assert "1 WAL segment(s) missing" in gap["message"] and "LSN" in gap["message"]
    status = wal_status(ha.loaded, ha.fresh_target())
    assert [g["first_segment"] for g in status.gaps] == [victim]
    assert any(victim in p for p in status.problems), status.problems
    # The streamer is stopped: a backup refuses to start without it, so restart it briefly.
    ha.stop = threading.Event()
    ha.thread = threading.Thread(target=_stream, args=(ha,), daemon=True)
    ha.thread.start()
    wait_for("the streamer", lambda: ha.slot_active_on(ha.cluster.leader()), 90)
    backup = create_physical(ha.loaded, ha.fresh_target(), incremental=True)
    assert backup.backup.type == "full" and backup.full_reason
    assert "gap" in backup.full_reason and victim in backup.full_reason


def test_disable_takes_the_slot_out_of_patronis_configuration(ha: HaPhysical) -> None:
    """A permanent slot dropped by SQL would come back: it leaves the DCS, and Patroni drops it
    on every member."""
    from aegisctl.backup.physical.setup import disable_physical, plan_disable

    ha.stop.set()
    assert ha.thread is not None
    ha.thread.join(120)
    plan = plan_disable(ha.loaded, ha.fresh_target())
    assert plan.slot_exists
    disable_physical(ha.loaded, ha.fresh_target(), plan)
    status, config = http_json(f"{ha.cluster.members[0].api_url}/config")
    assert status == 200 and SLOT not in (config.get("slots") or {})
    for member in ha.cluster.members:
        def gone(member: Any = member) -> bool:
            with member.connect() as conn:
                row = conn.execute("SELECT count(*) FROM pg_replication_slots "
                                   "WHERE slot_name = %s", (SLOT,)).fetchone()
            return row == (0,)
        wait_for(f"the slot dropped on {member.name}", gone, 60)


def _stream(ha: HaPhysical) -> None:
    from aegisctl.backup.physical.wal import stream_wal

    stream_wal(ha.loaded, ha.fresh_target(), stop=ha.stop, on_event=ha.events.append)


def test_a_gap_is_named_by_segment_range_and_lsn_range_across_timelines() -> None:
    from aegisctl.backup.physical.timelines import parse_history, wal_gaps

    chain = parse_history("1\t0/5000A28\tno recovery target specified\n", 2)
    assert chain is not None and [t.id for t in chain] == [1, 2]
    names = ["000000010000000000000003", "000000010000000000000004",
             "000000010000000000000005.partial", "00000002.history",
             "000000020000000000000005", "000000020000000000000006",
             "000000020000000000000009"]
    (gap,) = wal_gaps(names, chain)
    assert (gap.first_name, gap.last_name) == ("000000020000000000000007",
                                               "000000020000000000000008")
    assert (gap.start_lsn, gap.end_lsn) == ("0/7000000", "0/9000000")
    assert "2 WAL segment(s) missing" in gap.describe()
    # The switch segment is on both timelines: the old one's copy is enough there, and a
    # segment of the lost branch (timeline 1 past the switch) does not fill a gap.
    assert wal_gaps([*names[:2], "000000010000000000000005", "00000002.history",
                     "000000020000000000000006"], chain) == []
    lost_branch = ["000000010000000000000004", "000000010000000000000006",
                   "000000020000000000000005", "000000020000000000000007"]
    (gap,) = wal_gaps(lost_branch, chain)
    assert gap.first_name == "000000020000000000000006"
