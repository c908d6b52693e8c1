"""aegisctl: the operations command-line tool for an agent-memory PostgreSQL + pgvector database."""

__version__ = "0.1.0"
