"""Backups: pg_dump with manifests, verification, restore, retention and remote copies.

Modules: settings (config section), manifest (the JSON beside each backup), store (the local
folder: ids, atomic writes, audit log), tools (which pg_dump), dump (create), crypto (optional
client-side encryption), verify, restore, retention, remote (S3), lock, service (what commands
call). This package file stays empty so that loading the config does not import them.
"""
