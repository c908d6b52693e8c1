"""Where physical backups join the logical ones: `backup list`, `backup prune`, `check`.

Cheap to ask: `enabled` looks for the Barman server file aegisctl wrote at `enable` time and
touches nothing else (no install, no copy of binaries), so commands on a host without
physical backups pay nothing for them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl.backup.physical.engine import server_name
from aegisctl.paths import barman_home

if TYPE_CHECKING:
    from aegisctl.config import LoadedConfig
    from aegisctl.output import Block
    from aegisctl.targets import Target


def enabled(loaded: LoadedConfig, target: Target) -> bool:
    home = barman_home(loaded.settings)
    try:
        name = server_name(target)
    except Exception:  # a target name Barman cannot use: physical backups were never enabled
        return False
    return (home / "barman.d" / f"{name}.conf").exists()


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
