"""Where physical backups join the logical ones: `backup list`, `backup prune`, `check`.

Cheap to ask: `enabled` looks for the target's Barman server files aegisctl wrote at `enable`
time and, only when there are some, reads the database's system identifier to tell whose they
are (no install, no copy of binaries), so commands on a host without physical backups pay
nothing for them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aegisctl.config import LoadedConfig
    from aegisctl.output import Block
    from aegisctl.targets import Target


def enabled(loaded: LoadedConfig, target: Target) -> bool:
    return physical_state(loaded, target)[0]


def physical_state(loaded: LoadedConfig, target: Target) -> tuple[bool, str | None]:
    """(enabled for this database, why physical backups are left out when not: None when
    they were simply never enabled). Without any Barman server for the target in its home
    (or the old default one) nothing is run or connected to."""
    from aegisctl.backup.physical.identity import candidates, place
    from aegisctl.errors import AegisError

    try:
        own, old = candidates(loaded, target)
    except AegisError:  # a target name Barman cannot use: physical backups were never enabled
        return False, None
    if not own and not old:
        return False, None
    try:
        placement = place(loaded, target)
    except AegisError as exc:
        return False, str(exc)
    return (placement.home / "barman.d" / f"{placement.server}.conf").exists(), None


@dataclass
class WithPhysical:
    """A logical result plus the physical one beside it: the JSON keeps the logical shape
    and adds a `physical` key; the table shows both."""

    logical: Any
    physical: Any

    def to_json(self) -> Any:
        body = self.logical.to_json()
        body["physical"] = self.physical.to_json()
        return body

    def to_view(self) -> list[Block]:
        blocks: list[Block] = list(self.logical.to_view())
        return blocks + list(self.physical.to_view())
