-- Role, the replicas of a primary with their lag, what a standby receives and replays, and
-- replication slots with the WAL they hold back. Queries that do not apply to the server's
-- role return no rows.

-- name: summary fields
SELECT CASE WHEN pg_is_in_recovery() THEN 'standby' ELSE 'primary' END AS role,
       CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END::text
           AS wal_lsn,
       CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() END::text AS replay_lsn,
       CASE WHEN pg_is_in_recovery() THEN
           CASE WHEN pg_last_wal_receive_lsn() IS NOT NULL
                     AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                ELSE round(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::numeric, 1)::float8
           END
       END AS replay_lag_seconds,
       CASE WHEN pg_is_in_recovery() THEN
           pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint
       END AS replay_lag_bytes,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS replay_paused,
       CASE WHEN pg_is_in_recovery() THEN pg_last_xact_replay_timestamp() END AS last_replayed_commit;

-- name: replicas
SELECT pid, application_name AS application, client_addr::text AS client, state, sync_state,
       pg_wal_lsn_diff(pg_current_wal_lsn(), sent_lsn)::bigint AS send_lag_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS replay_lag_bytes,
       round(extract(epoch FROM write_lag)::numeric, 3)::float8 AS write_lag_seconds,
       round(extract(epoch FROM flush_lag)::numeric, 3)::float8 AS flush_lag_seconds,
       round(extract(epoch FROM replay_lag)::numeric, 3)::float8 AS replay_lag_seconds
FROM pg_stat_replication
WHERE NOT pg_is_in_recovery()
ORDER BY application_name, pid;

-- name: receiver
SELECT status, sender_host, sender_port, slot_name, received_tli AS timeline,
       written_lsn::text AS written_lsn, flushed_lsn::text AS flushed_lsn,
       round(extract(epoch FROM now() - last_msg_receipt_time)::numeric, 1)::float8
           AS since_last_message_seconds
FROM pg_stat_wal_receiver;

-- name: slots
SELECT slot_name, slot_type, database, active, active_pid, wal_status,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                            ELSE pg_current_wal_lsn() END, restart_lsn)::bigint AS retained_wal_bytes,
       safe_wal_size AS safe_wal_bytes
FROM pg_replication_slots
ORDER BY slot_name;
