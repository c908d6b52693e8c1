"""Vectors on the wire through the pgvector package's psycopg adapter (no hand-built text).

`register(conn)` teaches a connection the vector types: parameters given as `Vector` go in
pgvector's binary format, and `vector` columns come back as `Vector`.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aegisctl.errors import OperationFailed

if TYPE_CHECKING:
    import psycopg
    from pgvector import Vector


def register(conn: psycopg.Connection[Any]) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)


def to_vector(values: Sequence[float] | bytes) -> Vector:
    """A pgvector `Vector`; non-finite values (never valid in pgvector) are refused. `bytes`
    are float32s in this machine's byte order, already checked (an imported line's vector)."""
    from pgvector import Vector

    if isinstance(values, bytes):
        return from_float32(values)
    floats = values if isinstance(values, list) else list(values)
    if not math.isfinite(sum(floats)):
        raise OperationFailed("an embedding contains NaN or infinite values")
    return Vector(floats)


def from_float32(packed: bytes) -> Vector:
    """A `Vector` from float32s in this machine's byte order, without making a Python float
    of each (pgvector's binary form is a 4-byte header then big-endian float32s)."""
    from pgvector import Vector

    values = array("f")
    values.frombytes(packed)
    if sys.byteorder == "little":
        values.byteswap()
    return Vector.from_binary(struct.pack(">HH", len(values), 0) + values.tobytes())
