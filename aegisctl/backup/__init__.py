"""Backups: pg_dump with manifests, verification, restore, retention and remote copies.

Modules: settings (config section), manifest (the JSON beside each backup, and its one
validating loader), store (the local folder: ids, what a backup owns, atomic writes, audit
log), tools (which pg_dump; pg_restore's error), dump (create), crypto (optional client-side
encryption), verify, restore, retention (the policy as a pure function), prune (plan, confirm,
delete exactly the plan), listing (`backup list`), status (facts for `check`), remote (S3),
lock, service (what commands call). This package file stays empty so that loading the config
does not import them.
"""
