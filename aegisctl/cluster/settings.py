"""The `targets.<name>.patroni` section: a Patroni cluster's REST APIs and how aegisctl picks a
member from them. Validated once here (URLs, the DSN template) before anything connects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import urlparse

from aegisctl.errors import ConfigError

# The config loader's markers (as in aegisctl.backup.settings: importing aegisctl.config here
# would be circular).
Duration = Annotated[float, "duration"]
Size = Annotated[int, "size"]

HOST_FIELDS = ("{host}", "{port}")


@dataclass
class PatroniSettings:
    # The members' REST APIs; any one that answers gives the whole cluster (/cluster).
    urls: list[str] = field(default_factory=list)
    # Per-member DSNs by Patroni member name, instead of the {host}:{port} template in `dsn`.
    members: dict[str, str] = field(default_factory=dict)
    # The REST API of the member on this host (usually http://127.0.0.1:8008): scheduled jobs
    # run only where it is the leader; elsewhere a run is recorded "skipped: not leader".
    local_url: str | None = None
    # One REST request's timeout.
    timeout: Duration = 3.0
    # Reads that may use a replica use one streaming within this many bytes of the leader.
    max_lag: Size = 16 * 1024 * 1024


def check_patroni_settings(name: str, dsn: str | None, patroni: PatroniSettings | None,
                           origin: str) -> None:
    where = f"{origin}: targets.{name}"
    if patroni is None:
        if dsn and any(part in dsn for part in HOST_FIELDS):
            raise ConfigError(f"{where}.dsn: {{host}}/{{port}} are filled from a Patroni "
                              "cluster, and this target has no patroni section",
                              hint=f"add targets.{name}.patroni.urls, or write the host")
        return
    if not patroni.urls:
        raise ConfigError(f"{where}.patroni.urls: list at least one member's REST API",
                          hint="e.g. [http://10.0.0.1:8008, http://10.0.0.2:8008]")
    for index, url in enumerate([*patroni.urls, *([patroni.local_url] if patroni.local_url
                                                  else [])]):
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            key = f"urls[{index}]" if index < len(patroni.urls) else "local_url"
            raise ConfigError(f"{where}.patroni.{key}: {url!r} is not an http(s):// URL of a "
                              "Patroni REST API")
    if patroni.timeout <= 0:
        raise ConfigError(f"{where}.patroni.timeout: must be more than 0")
    if not patroni.members and not (dsn and "{host}" in dsn):
        raise ConfigError(f"{where}: a Patroni target needs a dsn template with {{host}} "
                          "(and {port}) or patroni.members with one DSN per member",
                          hint="e.g. dsn: postgresql://agent@{host}:{port}/aegis")
    for member, member_dsn in patroni.members.items():
        if any(part in member_dsn for part in HOST_FIELDS):
            raise ConfigError(f"{where}.patroni.members.{member}: write the member's own host "
                              "and port (templates are for `dsn`)")
