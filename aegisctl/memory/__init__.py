"""Agent memory: embedding providers, search, and ingestion.

Memories live in two tables with separate SERIAL ids, so a memory is addressed as
`episodic:123` or `semantic:45` (see `refs.py`).
"""
