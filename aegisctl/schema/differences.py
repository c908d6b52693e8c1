"""One difference `schema verify` found between the live catalog and the one the applied
migrations make, and the catalog parsing both verify and verify_partitions (which explains
the differences partitioning makes by design) need, so neither imports the other for it."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass
class Difference:
    kind: str  # migration | extension | table | column | index | constraint | trigger | type
    name: str
    problem: str  # missing | unexpected | different | pending | changed | not installed ...
    expected: str | None = None
    actual: str | None = None


def index_table(definition: str) -> str:
    match = re.search(r" ON (?:ONLY )?([\w\"]+) USING ", definition)
    return match.group(1).strip('"') if match else ""
