"""The effective configuration as rows of (key, value, source), secrets redacted."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.config import LoadedConfig
from aegisctl.targets import Target, redact_dsn

if TYPE_CHECKING:
    from aegisctl.output import Block

SECRET_WORDS = ("password", "secret", "token", "api_key")


@dataclass
class ConfigRow:
    key: str
    value: Any
    source: str


@dataclass
class ConfigView:
    path: str | None
    target: str
    target_source: str
    rows: list[ConfigRow]

    def to_json(self) -> dict[str, Any]:
        return {
            "config_file": self.path,
            "target": self.target,
            "target_source": self.target_source,
            "values": {r.key: {"value": r.value, "source": r.source} for r in self.rows},
        }

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        return [
            Note(f"# config file: {self.path or '(none found: defaults)'}"),
            Note(f"# target: {self.target} ({self.target_source})"),
            Table([Column("key", "text"), Column("value", "text"), Column("source", "text")],
                  [(row.key, _cell(row.value), row.source) for row in self.rows]),
        ]


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "[]"
    return "null" if value is None else str(value)


@dataclass
class ConfigValidation:
    """`config validate` on a file that passed (a failing one is a ConfigError, exit 2)."""

    path: str
    targets: list[str]
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"valid": True, "path": self.path, "targets": self.targets}
        if self.warnings:
            data["warnings"] = self.warnings
        return data

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        return [Note(f"{self.path}: valid"), *(Note(f"warning: {w}") for w in self.warnings)]


def validation_result(loaded: LoadedConfig, warnings: list[str] | None = None
                      ) -> ConfigValidation:
    where = str(loaded.path) if loaded.path else "(no config file: defaults)"
    return ConfigValidation(path=where, targets=sorted(loaded.settings.targets),
                            warnings=list(warnings or []))


def _redact(key: str, value: Any) -> Any:
    leaf = key.rsplit(".", 1)[-1]
    if isinstance(value, str) and leaf.endswith("dsn"):
        return redact_dsn(value)
    # password_env / password_file / api_key_env name where a secret is, not the secret.
    if any(w in leaf for w in SECRET_WORDS) and not leaf.endswith(("_env", "_file")):
        return "***" if value else value
    return value


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def effective_config(loaded: LoadedConfig, target: Target) -> ConfigView:
    flat: dict[str, Any] = {}
    _flatten(dataclasses.asdict(loaded.settings), "", flat)
    if target.embedded and not flat.get("embedded.data_dir"):
        from aegisctl.paths import default_data_dir

        flat["embedded.data_dir"] = str(default_data_dir())
        loaded.sources.setdefault("embedded.data_dir", "default")
    rows = [
        ConfigRow(key, _redact(key, value), loaded.sources.get(key, "default"))
        for key, value in flat.items()
    ]
    if target.source.startswith("env") and not target.embedded:
        rows.append(ConfigRow(f"targets.{target.name}.dsn", redact_dsn(target.dsn), target.source))
    return ConfigView(
        path=str(loaded.path) if loaded.path else None,
        target=target.name,
        target_source=target.source,
        rows=rows,
    )
