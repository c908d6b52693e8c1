"""High availability: Patroni clusters and multi-host targets (member choice, role guard)."""
