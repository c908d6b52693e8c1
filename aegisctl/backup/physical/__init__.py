"""Physical backups, WAL streaming and point-in-time recovery, driven through Barman."""
