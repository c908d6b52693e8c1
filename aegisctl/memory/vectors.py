"""Vectors on the wire through the pgvector package's psycopg adapter (no hand-built text).

`register(conn)` teaches a connection the vector types: parameters given as `Vector` go in
pgvector's binary format, and `vector` columns come back as `Vector`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aegisctl.errors import OperationFailed

if TYPE_CHECKING:
    import psycopg
    from pgvector import Vector


def register(conn: psycopg.Connection[Any]) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)


def to_vector(values: Sequence[float]) -> Vector:
    """A pgvector `Vector`; non-finite values (never valid in pgvector) are refused."""
    from pgvector import Vector

    floats = values if isinstance(values, list) else list(values)
    if not math.isfinite(sum(floats)):
        raise OperationFailed("an embedding contains NaN or infinite values")
    return Vector(floats)
