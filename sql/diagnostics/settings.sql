-- The settings that matter for an agent-memory (pgvector) workload, with their units.

-- name: settings
SELECT name, current_setting(name) AS value, setting, unit, source, boot_val AS default_value,
       CASE WHEN unit = '8kB' THEN setting::bigint * 8192 WHEN unit = 'kB' THEN setting::bigint * 1024
            WHEN unit = 'MB' THEN setting::bigint * 1024 * 1024 END AS bytes
FROM pg_settings
WHERE name = ANY(%(names)s)
ORDER BY array_position(%(names)s, name);
