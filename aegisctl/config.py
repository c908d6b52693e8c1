"""YAML + environment -> typed, validated settings.

The key names follow ../shared/config-sketch.yaml: they are a contract that the README, scripts
and tests rely on. Every value remembers where it came from so `config show` can say so.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from aegisctl.backup.physical.settings import check_physical_settings
from aegisctl.backup.settings import BackupSettings
from aegisctl.cluster.settings import PatroniSettings, check_patroni_settings
from aegisctl.diagnostics.settings import ChecksSettings, check_thresholds
from aegisctl.errors import ConfigError
from aegisctl.maintenance.partition_settings import PartitionSpec, check_partition_settings
from aegisctl.maintenance.settings import MaintenanceSettings
from aegisctl.memory.settings import MemorySettings
from aegisctl.retention.settings import (
    CleanupSettings,
    check_cleanup_settings,
    check_partition_retention,
)
from aegisctl.scheduling.jobs import check_schedule
from aegisctl.scheduling.settings import JobSettings, SchedulerSettings
from aegisctl.units import parse_duration, parse_size

log = logging.getLogger(__name__)

# Markers for Annotated fields whose YAML form is a string with a unit.
DURATION = "duration"
SIZE = "size"
Duration = Annotated[float, DURATION]
Size = Annotated[int, SIZE]

DEFAULT_EXTENSIONS = ["vector", "pg_trgm", "fuzzystrmatch", "pg_stat_statements", "pgcrypto"]

# The embedding dimension's one range, for the config, `schema init --embedding-dim` and the
# embedding provider: pgvector's HNSW index takes at most 2000 dimensions of `vector` and 4000
# of `halfvec` (aegisctl indexes embedding::halfvec(N) above 2000).
MIN_EMBEDDING_DIM = 1
MAX_VECTOR_INDEX_DIM = 2000
MAX_EMBEDDING_DIM = 4000
# The dimension of a new database when neither the config nor --embedding-dim says.
DEFAULT_EMBEDDING_DIM = 1536


def check_embedding_dim_range(dim: int, where: str) -> int:
    """`dim` when it is inside the one supported range, else a ConfigError naming `where`."""
    if not MIN_EMBEDDING_DIM <= dim <= MAX_EMBEDDING_DIM:
        raise ConfigError(
            f"{where}: embedding dimension {dim} is out of range: pgvector's HNSW index "
            f"supports {MIN_EMBEDDING_DIM} to {MAX_VECTOR_INDEX_DIM} dimensions as vector and up "
            f"to {MAX_EMBEDDING_DIM} as halfvec",
            hint=f"choose a model (or a `dimensions` setting) of at most {MAX_EMBEDDING_DIM} "
            "dimensions",
        )
    return dim


@dataclass
class TargetSettings:
    dsn: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    role: Literal["primary", "replica"] = "primary"
    # A Patroni cluster: each command picks its member from /cluster (aegisctl.cluster).
    patroni: PatroniSettings | None = None
    # `aegisctl check` on a primary: fewer streaming standbys than this is CRITICAL.
    expected_replicas: int | None = None
    # This target's own `checks:` (skip, thresholds), merged over the global `checks:` section
    # when the config is loaded: a key set here wins, `skip` lists are added together.
    checks: ChecksSettings | None = None
    # The unpooled connection for session work (migrations, dumps, WAL, CONCURRENTLY, VACUUM,
    # advisory locks) when `dsn` goes through a pooler; what sits on `dsn` (auto: found once
    # per run); PgBouncer's admin console, read by `check`.
    direct_dsn: str | None = None
    pooler: Literal["auto", "none", "session", "transaction"] = "auto"
    pgbouncer_admin_dsn: str | None = None


@dataclass
class EmbeddedSettings:
    # None -> $XDG_DATA_HOME/aegisctl/pgdata, or /var/lib/aegisctl/pgdata when run as root.
    data_dir: str | None = None
    database: str = "aegis"
    # PostgreSQL refuses to run as root: as root the server runs as this system user.
    run_as: str = "aegisctl"


@dataclass
class RetrySettings:
    attempts: int = 4
    initial_delay: Duration = 0.5
    max_delay: Duration = 8.0


@dataclass
class TimeoutSettings:
    statement_timeout: Duration = 0.0
    lock_timeout: Duration = 0.0


@dataclass
class TimeoutClasses:
    # Interactive reads (health, search, diagnostics): fail fast rather than hang a terminal.
    query: TimeoutSettings = field(default_factory=lambda: TimeoutSettings(60.0, 5.0))
    # Schema changes: never cut a migration short, but never queue behind a long lock either.
    ddl: TimeoutSettings = field(default_factory=lambda: TimeoutSettings(0.0, 10.0))
    # VACUUM, REINDEX, cleanup: long by nature.
    maintenance: TimeoutSettings = field(default_factory=lambda: TimeoutSettings(0.0, 30.0))


@dataclass
class ConnectionSettings:
    connect_timeout: Duration = 10.0
    retry: RetrySettings = field(default_factory=RetrySettings)
    timeouts: TimeoutClasses = field(default_factory=TimeoutClasses)


@dataclass
class SchemaSettings:
    # Unset: the database's recorded dimension (it is the truth once `schema init` chose one),
    # and DEFAULT_EMBEDDING_DIM (1536) for a new database.
    embedding_dim: int | None = None
    extensions: list[str] = field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    # How long `schema migrate`/`init` wait for another run's migration lock (--wait-lock).
    lock_wait: Duration = 60.0


@dataclass
class RoleSpec:
    name: str
    password_env: str | None = None
    password_file: str | None = None


@dataclass
class RolesSettings:
    app: RoleSpec = field(default_factory=lambda: RoleSpec(name="aegis_app"))
    readonly: RoleSpec = field(default_factory=lambda: RoleSpec(name="aegis_readonly"))


@dataclass
class EmbeddingSettings:
    # openai | local | none; unset -> local when the wordllama extra is installed, else none.
    provider: Literal["openai", "local", "none"] | None = None
    base_url: str = "https://api.openai.com/v1"
    model: str = "text-embedding-3-small"
    api_key_env: str | None = "OPENAI_API_KEY"
    # Sent to the endpoint when set; unset -> the database's embedding dimension is expected.
    dimensions: int | None = None
    batch_size: int = 64
    timeout: Duration = 30.0
    retries: int = 4
    max_retry_wait: Duration = 60.0


@dataclass
class RerankSettings:
    """An optional cross-encoder behind `POST {base_url}/rerank` (query + documents -> scores),
    applied to hybrid's fused top `top_n`."""

    base_url: str
    model: str
    top_n: int = 20
    api_key_env: str | None = None
    timeout: Duration = 10.0
    retries: int = 1


@dataclass
class SearchSettings:
    ef_search: int = 100
    # semantic | keyword | hybrid; unset -> hybrid with a provider, keyword without one.
    default_mode: Literal["semantic", "keyword", "hybrid"] | None = None
    limit: int = 10
    # Below this many estimated matching rows a filtered search is exact (no index).
    exact_below: int = 1000
    iterative_scan: Literal["strict_order", "relaxed_order", "off"] = "strict_order"
    # Hybrid fusion (aegisctl/memory/search/fusion.py), defaults chosen on bench/relevance.py.
    rrf_k: int = 30
    candidates: int = 40  # rows each signal contributes to hybrid fusion, whatever --limit
    semantic_weight: float = 1.0
    keyword_weight: float = 0.75
    exact_term_boost: float = 1.0  # first-place votes for holding the query's identifiers
    dedupe: float = 0.8  # word-trigram overlap that folds a near-identical hit; 0 = off
    # Query-adaptive fusion: each signal's weight follows how strong it is for this query.
    adaptive: bool = True
    # The first hit of the signal that is sure of itself keeps a place in hybrid's top 2.
    safeguard: bool = True
    rerank: RerankSettings | None = None


@dataclass
class Settings:
    targets: dict[str, TargetSettings] = field(default_factory=dict)
    default_target: str | None = None
    embedded: EmbeddedSettings = field(default_factory=EmbeddedSettings)
    connection: ConnectionSettings = field(default_factory=ConnectionSettings)
    schema: SchemaSettings = field(default_factory=SchemaSettings)
    roles: RolesSettings = field(default_factory=RolesSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    schedule: dict[str, JobSettings] = field(default_factory=dict)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    checks: ChecksSettings = field(default_factory=ChecksSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)
    maintenance: MaintenanceSettings = field(default_factory=MaintenanceSettings)
    cleanup: CleanupSettings = field(default_factory=CleanupSettings)
    partitions: dict[str, PartitionSpec] = field(default_factory=dict)


@dataclass
class LoadedConfig:
    settings: Settings
    path: Path | None
    # dotted key path -> where the value came from ("config.yaml:12", "env AEGISCTL_DSN").
    sources: dict[str, str]


# ---------------------------------------------------------------------------------------------
# Finding the file


def candidate_paths(env: dict[str, str]) -> list[Path]:
    config_home = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")) / ".config")
    return [
        Path("aegisctl.yaml"),
        Path(config_home).expanduser() / "aegisctl" / "config.yaml",
        Path("/etc/aegisctl/config.yaml"),
    ]


def find_config(explicit: str | None, env: dict[str, str]) -> Path | None:
    """--config, then $AEGISCTL_CONFIG, then the usual places; the first found wins."""
    for given, origin in ((explicit, "--config"), (env.get("AEGISCTL_CONFIG"), "AEGISCTL_CONFIG")):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise ConfigError(
                    f"config file {path} (from {origin}) does not exist",
                    hint="check the path, or omit it to use the defaults",
                )
            return path
    for path in candidate_paths(env):
        if path.is_file():
            return path
    return None


# ---------------------------------------------------------------------------------------------
# Parsing


def _yaml_lines(node: Any, prefix: str, lines: dict[str, int], origin: str) -> None:
    """Record the line of every key, and refuse duplicate keys (YAML would keep the last)."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            path = f"{prefix}.{key}" if prefix else key
            if key in seen:
                raise ConfigError(
                    f"{origin}:{key_node.start_mark.line + 1}: duplicate key '{path}'",
                    hint="keep one of them",
                )
            seen.add(key)
            lines[path] = key_node.start_mark.line + 1
            _yaml_lines(value_node, path, lines, origin)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = f"{prefix}[{index}]"
            lines[path] = item.start_mark.line + 1
            _yaml_lines(item, path, lines, origin)


# A config file is a few hundred values. Anchors and aliases are allowed (to share a block),
# but aliases of aliases multiply: nine levels of nine aliases expand to 387 million nodes
# (the "billion laughs"). The expanded size is counted on the node graph before anything
# walks it, and a file beyond this bound is refused.
MAX_YAML_NODES = 10_000


def _expanded_size(node: Any, origin: str, sizes: dict[int, int], active: set[int]) -> int:
    """How many nodes `node` stands for once every alias is expanded (memoised per node, so
    counting costs one visit of the graph, however large the expansion)."""
    import yaml

    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in active:
        raise ConfigError(
            f"{origin}:{node.start_mark.line + 1}: an alias refers to its own anchor "
            "(a recursive structure)"
        )
    active.add(key)
    total = 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            total += _expanded_size(key_node, origin, sizes, active)
            total += _expanded_size(value_node, origin, sizes, active)
            if total > MAX_YAML_NODES:
                break
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            total += _expanded_size(item, origin, sizes, active)
            if total > MAX_YAML_NODES:
                break
    active.discard(key)
    sizes[key] = total
    if total > MAX_YAML_NODES:
        raise ConfigError(
            f"{origin}:{node.start_mark.line + 1}: the YAML expands to more than "
            f"{MAX_YAML_NODES:,} values through its aliases (*name); a config file needs far "
            "fewer",
            hint="write the values out, or use fewer nested aliases",
        )
    return total


def parse_yaml(text: str, origin: str) -> tuple[dict[str, Any], dict[str, int]]:
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _expanded_size(root, origin, {}, set())
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark else origin
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: YAML error: {exc}") from exc
    finally:
        loader.dispose()
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of keys, not a {_kind(data)}")
    lines: dict[str, int] = {}
    _yaml_lines(root, "", lines, origin)
    return data, lines


# ---------------------------------------------------------------------------------------------
# Validation: YAML values -> the dataclasses above, with the full key path in every error


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "mapping",
    }.get(type(value), type(value).__name__)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        if DURATION in meta:
            return "a duration like 30s, 15m, 2h or 14d"
        if SIZE in meta:
            return "a size like 100GB"
        return _describe(base)
    if origin in (Union, types.UnionType):
        parts = [_describe(a) for a in get_args(tp) if a is not type(None)]
        return " or ".join(parts) + " (or null)" * (type(None) in get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_describe(get_args(tp)[0])}s"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


class _Validator:
    def __init__(self, origin: str, lines: dict[str, int]) -> None:
        self.origin = origin
        self.lines = lines

    def fail(self, path: str, message: str) -> ConfigError:
        line = self.lines.get(path)
        where = f"{self.origin}:{line}" if line else self.origin
        return ConfigError(f"{where}: {path}: {message}")

    def expected(self, path: str, tp: Any, value: Any) -> ConfigError:
        return self.fail(path, f"expected {_describe(tp)}, got {_kind(value)} {value!r}")

    def convert(self, value: Any, tp: Any, path: str) -> Any:
        origin = get_origin(tp)
        if origin is Annotated:
            base, *meta = get_args(tp)
            if DURATION in meta or SIZE in meta:
                parse = parse_duration if DURATION in meta else parse_size
                try:
                    return parse(value)
                except (ValueError, TypeError) as exc:
                    if "too long" in str(exc):  # well-formed, but beyond what dates can hold
                        raise self.fail(path, str(exc)) from None
                    raise self.expected(path, tp, value) from None
            return self.convert(value, base, path)
        if origin in (Union, types.UnionType):
            args = get_args(tp)
            if value is None:
                if type(None) in args:
                    return None
                raise self.expected(path, tp, value)
            (inner,) = [a for a in args if a is not type(None)]
            return self.convert(value, inner, path)
        if origin is Literal:
            if value not in get_args(tp):
                raise self.expected(path, tp, value)
            return value
        if origin is list:
            if not isinstance(value, list):
                raise self.expected(path, tp, value)
            (item_type,) = get_args(tp)
            return [self.convert(v, item_type, f"{path}[{i}]") for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                raise self.expected(path, tp, value)
            _, item_type = get_args(tp)
            return {str(k): self.convert(v, item_type, f"{path}.{k}") for k, v in value.items()}
        if dataclasses.is_dataclass(tp):
            return self.build(value, tp, path)
        if tp is bool:
            if not isinstance(value, bool):
                raise self.expected(path, tp, value)
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.expected(path, tp, value)
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.expected(path, tp, value)
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise self.expected(path, tp, value)
            return value
        raise TypeError(f"unsupported config type {tp!r} at {path}")

    def build(self, value: Any, cls: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise self.expected(path or "(top level)", cls, value)
        hints = get_type_hints(cls, include_extras=True)
        known = [f.name for f in dataclasses.fields(cls)]
        kwargs: dict[str, Any] = {}
        for key, item in value.items():
            key = str(key)
            key_path = f"{path}.{key}" if path else key
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                suggestion = f"did you mean '{close[0]}'? " if close else ""
                raise self.fail(
                    key_path,
                    f"unknown key; {suggestion}expected one of: {', '.join(known)}",
                )
            kwargs[key] = self.convert(item, hints[key], key_path)
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a required field is missing
            missing = [
                f.name
                for f in dataclasses.fields(cls)
                if f.name not in kwargs
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            ]
            raise self.fail(path, f"missing required key(s): {', '.join(missing)}") from exc


def _record_sources(
    data: Any, prefix: str, origin: str, lines: dict[str, int], sources: dict[str, str]
) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            _record_sources(value, path, origin, lines, sources)
    else:
        line = lines.get(prefix)
        sources[prefix] = f"{origin}:{line}" if line else origin


def _merge_target_checks(data: dict[str, Any]) -> dict[str, Any]:
    """Each target's `checks:` overlaid on the global `checks:` (so a target states only what
    differs), before validation builds the typed settings from it."""
    targets = data.get("targets")
    base = data.get("checks")
    if not isinstance(targets, dict) or not isinstance(base, dict | None):
        return data
    merged_targets: dict[str, Any] = {}
    for name, spec in targets.items():
        if isinstance(spec, dict) and isinstance(spec.get("checks"), dict):
            spec = {**spec, "checks": _overlay(base or {}, spec["checks"])}
        merged_targets[name] = spec
    return {**data, "targets": merged_targets}


def _overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if key == "skip" and isinstance(value, list) and isinstance(base.get(key), list):
            out[key] = [*base[key], *(v for v in value if v not in base[key])]
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _overlay(base[key], value)
        else:
            out[key] = value
    return out


def validate(data: dict[str, Any], origin: str, lines: dict[str, int] | None = None) -> Settings:
    data = _merge_target_checks(data)
    settings: Settings = _Validator(origin, lines or {}).build(data, Settings, "")
    _check_consistency(settings, origin)
    return settings


def _check_consistency(settings: Settings, origin: str) -> None:
    _check_memory_settings(settings, origin)
    check_schedule(settings, origin)
    check_thresholds(settings.checks, origin)
    check_cleanup_settings(settings.cleanup, origin)
    check_partition_settings(settings.partitions, origin)
    check_partition_retention(settings.cleanup, settings.partitions, origin)
    check_physical_settings(settings.backup.physical, origin)
    if settings.default_target and settings.default_target not in settings.targets:
        known = ", ".join(settings.targets) or "none"
        raise ConfigError(
            f"{origin}: default_target '{settings.default_target}' is not among the targets "
            f"(configured: {known})"
        )
    for name, target in settings.targets.items():
        if target.checks is not None:
            check_thresholds(target.checks, f"{origin}: targets.{name}")
        if target.expected_replicas is not None and target.expected_replicas < 0:
            raise ConfigError(f"{origin}: targets.{name}.expected_replicas: must be 0 or more")
        if target.password_env and target.password_file:
            raise ConfigError(
                f"{origin}: targets.{name}: give password_env or password_file, not both"
            )
        check_patroni_settings(name, target.dsn, target.patroni, origin)
    if settings.schema.embedding_dim is not None:
        check_embedding_dim_range(settings.schema.embedding_dim, f"{origin}: schema.embedding_dim")


def _check_memory_settings(settings: Settings, origin: str) -> None:
    emb, search = settings.embedding, settings.search
    if emb.dimensions is not None:
        check_embedding_dim_range(emb.dimensions, f"{origin}: embedding.dimensions")
    for key, value, low in (("embedding.batch_size", emb.batch_size, 1),
                            ("embedding.retries", emb.retries, 0),
                            ("search.ef_search", search.ef_search, 1),
                            ("search.limit", search.limit, 1),
                            ("search.exact_below", search.exact_below, 0),
                            ("search.rrf_k", search.rrf_k, 1),
                            ("memory.max_line_bytes", settings.memory.max_line_bytes, 1),
                            ("search.candidates", search.candidates, 1),
                            ("search.semantic_weight", search.semantic_weight, 0),
                            ("search.keyword_weight", search.keyword_weight, 0),
                            ("search.exact_term_boost", search.exact_term_boost, 0),
                            ("search.dedupe", search.dedupe, 0)):
        if value < low:
            raise ConfigError(f"{origin}: {key}: must be at least {low}, got {value}")
    if search.dedupe > 1:
        raise ConfigError(f"{origin}: search.dedupe: a share between 0 and 1, got {search.dedupe}")
    if search.candidates > 1000:
        raise ConfigError(f"{origin}: search.candidates: at most 1000")
    if search.ef_search > 1000:
        raise ConfigError(f"{origin}: search.ef_search: pgvector allows at most 1000")
    if search.rerank is not None:
        _check_rerank(search.rerank, origin)
    gate = settings.memory.reembed_eval
    if gate is not None and not 0 <= gate.max_drop <= 1:
        raise ConfigError(f"{origin}: memory.reembed_eval.max_drop: a share between 0 and 1, "
                          f"got {gate.max_drop}")


def _check_rerank(rerank: RerankSettings, origin: str) -> None:
    if not rerank.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{origin}: search.rerank.base_url: an http(s) URL, got "
                          f"'{rerank.base_url}'")
    if not 1 <= rerank.top_n <= 1000:
        raise ConfigError(f"{origin}: search.rerank.top_n: between 1 and 1000, got "
                          f"{rerank.top_n}")
    if rerank.retries < 0 or rerank.timeout <= 0:
        raise ConfigError(f"{origin}: search.rerank: retries must be at least 0 and timeout "
                          "positive")


# ---------------------------------------------------------------------------------------------
# Loading: file + environment


def load_config(
    explicit_path: str | None = None,
    env: dict[str, str] | None = None,
) -> LoadedConfig:
    env = dict(os.environ) if env is None else env
    path = find_config(explicit_path, env)
    sources: dict[str, str] = {}
    if path is None:
        log.info("no config file found: using the defaults")
        settings = Settings()
    else:
        log.info("reading the config file %s", path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text") from exc
        data, lines = parse_yaml(text, str(path))
        settings = validate(data, str(path), lines)
        _record_sources(data, "", str(path), lines, sources)
    apply_environment(settings, env, sources)
    return LoadedConfig(settings=settings, path=path, sources=sources)


def apply_environment(settings: Settings, env: dict[str, str], sources: dict[str, str]) -> None:
    """AEGISCTL_* variables override the file; documented in config.example.yaml."""
    if env.get("AEGISCTL_DATA_DIR"):
        settings.embedded.data_dir = env["AEGISCTL_DATA_DIR"]
        sources["embedded.data_dir"] = "env AEGISCTL_DATA_DIR"
    if env.get("AEGISCTL_TARGET"):
        settings.default_target = env["AEGISCTL_TARGET"]
        sources["default_target"] = "env AEGISCTL_TARGET"
    # AEGISCTL_DSN is applied when a target is chosen (targets.resolve_target): it replaces the
    # chosen target's DSN, whichever --target picks.


def to_dict(settings: Settings) -> dict[str, Any]:
    return dataclasses.asdict(settings)
