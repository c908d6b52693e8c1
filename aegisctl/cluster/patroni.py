"""Patroni's REST API: `/cluster` (every member, its role, state, lag, timeline), a member's own
`/patroni`, and the cluster-wide dynamic configuration (`/config`: read, and patched only by
`backup physical enable` to declare its permanent slot). The answers are input: validated
here into `ClusterView` before any choice is made from them. urllib only: no HTTP library
to install for this."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from aegisctl.cluster.settings import PatroniSettings
from aegisctl.errors import ConnectionFailed

log = logging.getLogger(__name__)

LEADER_ROLES = ("leader", "primary", "master")
REPLICA_ROLES = ("replica", "sync_standby", "quorum_standby")
MAX_BODY = 1024 * 1024


@dataclass
class MemberInfo:
    name: str
    role: str  # leader | replica | sync_standby | quorum_standby | standby_leader
    state: str  # running | streaming | stopped | starting | ...
    host: str
    port: int
    timeline: int | None = None
    lag: int | None = None  # bytes behind the leader; None: unknown (or the leader itself)
    api_url: str | None = None
    pending_restart: bool = False
    noloadbalance: bool = False
    nofailover: bool = False

    @property
    def is_leader(self) -> bool:
        return self.role in LEADER_ROLES

    @property
    def is_streaming_replica(self) -> bool:
        return self.role in REPLICA_ROLES and self.state == "streaming"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "state": self.state, "host": self.host,
                "port": self.port, "timeline": self.timeline, "lag_bytes": self.lag,
                "pending_restart": self.pending_restart}


@dataclass
class ClusterView:
    scope: str | None
    members: list[MemberInfo]
    paused: bool = False
    scheduled_switchover: str | None = None  # when, as Patroni says it
    source: str = ""  # the REST API that answered
    errors: list[str] = field(default_factory=list)  # the ones that did not

    @property
    def leader(self) -> MemberInfo | None:
        running = [m for m in self.members if m.is_leader and m.state == "running"]
        return running[0] if running else None

    def member(self, name: str) -> MemberInfo | None:
        return next((m for m in self.members if m.name == name), None)


def _get_json(url: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        # /primary and friends answer 503 with a body; /cluster never should.
        body = exc.read(MAX_BODY + 1)
        if url.endswith("/cluster"):
            raise ValueError(f"HTTP {exc.code}") from None
    if len(body) > MAX_BODY:
        raise ValueError("answer larger than 1 MB")
    return json.loads(body or b"null")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_member(raw: Any) -> MemberInfo:
    if not isinstance(raw, dict):
        raise ValueError("a member is not a JSON object")
    name, host, port = raw.get("name"), raw.get("host"), _int(raw.get("port"))
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError("a member has no valid name")
    if not isinstance(host, str) or not host or any(c in host for c in "/?#@ ,='\"\\"):
        raise ValueError(f"member {name!r} has no valid host")
    if port is None or not 1 <= port <= 65535:
        raise ValueError(f"member {name!r} has no valid port")
    raw_tags = raw.get("tags")
    tags: dict[str, Any] = raw_tags if isinstance(raw_tags, dict) else {}
    lag = _int(raw.get("lag"))
    return MemberInfo(
        name=name, role=str(raw.get("role") or "unknown"), state=str(raw.get("state") or "unknown"),
        host=host, port=port, timeline=_int(raw.get("timeline")),
        lag=lag if lag is not None and lag >= 0 else None,
        api_url=raw["api_url"] if isinstance(raw.get("api_url"), str) else None,
        pending_restart=raw.get("pending_restart") is True,
        noloadbalance=tags.get("noloadbalance") is True, nofailover=tags.get("nofailover") is True)


def parse_cluster(raw: Any, source: str) -> ClusterView:
    if not isinstance(raw, dict) or not isinstance(raw.get("members"), list):
        raise ValueError("not a /cluster answer (no members list)")
    switchover = raw.get("scheduled_switchover")
    when = None
    if isinstance(switchover, dict):
        when = str(switchover.get("at") or "pending")
    scope = raw.get("scope")
    return ClusterView(scope=scope if isinstance(scope, str) else None,
                       members=[parse_member(m) for m in raw["members"]],
                       paused=raw.get("pause") is True, scheduled_switchover=when, source=source)


def fetch_cluster(settings: PatroniSettings, target_name: str) -> ClusterView:
    """The cluster as the first REST API that answers sees it."""
    errors = []
    for base in settings.urls:
        url = base.rstrip("/") + "/cluster"
        try:
            view = parse_cluster(_get_json(url, settings.timeout), base)
        except (OSError, ValueError) as exc:
            errors.append(f"{base}: {_reason(exc)}")
            log.info("Patroni REST API %s did not answer /cluster: %s", base, _reason(exc))
            continue
        view.errors = errors
        return view
    raise ConnectionFailed(f"target '{target_name}': no Patroni REST API answered "
                           f"({'; '.join(errors)})",
                           hint=f"check targets.{target_name}.patroni.urls")


@dataclass
class LocalMember:
    name: str
    is_leader: bool  # /primary answered 200: running, and holding the leader lock
    paused: bool


def fetch_local_member(settings: PatroniSettings, target_name: str) -> LocalMember:
    """This host's member (patroni.local_url): its name and whether it leads right now."""
    assert settings.local_url is not None
    base = settings.local_url.rstrip("/")
    try:
        raw = _get_json(base + "/patroni", settings.timeout)
        primary = urllib.request.Request(base + "/primary", method="GET")
        try:
            with urllib.request.urlopen(primary, timeout=settings.timeout) as response:
                leads = response.status == 200
        except urllib.error.HTTPError:
            leads = False
    except (OSError, ValueError) as exc:
        raise ConnectionFailed(f"target '{target_name}': this host's Patroni ({base}) does not "
                               f"answer: {_reason(exc)}",
                               hint=f"check targets.{target_name}.patroni.local_url") from None
    patroni = raw.get("patroni") if isinstance(raw, dict) else None
    name = patroni.get("name") if isinstance(patroni, dict) else None
    if not isinstance(name, str) or not name:
        raise ConnectionFailed(f"target '{target_name}': {base}/patroni gave no member name")
    return LocalMember(name=name, is_leader=leads,
                       paused=isinstance(raw, dict) and raw.get("pause") is True)


def fetch_config(settings: PatroniSettings, target_name: str) -> tuple[dict[str, Any], str]:
    """The cluster's dynamic configuration (what `patronictl show-config` prints) and the REST
    API that answered."""
    errors = []
    for base in settings.urls:
        try:
            raw = _get_json(base.rstrip("/") + "/config", settings.timeout)
        except (OSError, ValueError) as exc:
            errors.append(f"{base}: {_reason(exc)}")
            continue
        if isinstance(raw, dict):
            return raw, base
        errors.append(f"{base}: /config is not a JSON object")
    raise ConnectionFailed(f"target '{target_name}': no Patroni REST API gave its /config "
                           f"({'; '.join(errors)})",
                           hint=f"check targets.{target_name}.patroni.urls")


def patch_config(settings: PatroniSettings, target_name: str, base: str,
                 change: dict[str, Any], how_by_hand: str) -> None:
    """PATCH the dynamic configuration (merged into it by Patroni, then applied by every member
    on its next loop). A refusal (REST API authentication, allowlist) says how to do it by
    hand with patronictl."""
    from aegisctl.errors import OperationFailed

    request = urllib.request.Request(
        base.rstrip("/") + "/config", data=json.dumps(change).encode(), method="PATCH",
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout) as response:
            response.read(MAX_BODY)
    except urllib.error.HTTPError as exc:
        raise OperationFailed(f"target '{target_name}': Patroni refused to change its "
                              f"configuration ({base}/config: HTTP {exc.code})",
                              hint=how_by_hand) from None
    except OSError as exc:
        raise ConnectionFailed(f"target '{target_name}': cannot change Patroni's "
                               f"configuration ({base}/config: {_reason(exc)})",
                               hint=how_by_hand) from None
