"""config.example.yaml is the reference: it must validate, and it must document every option."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

from aegisctl.config import Settings, load_config, parse_yaml

EXAMPLE = Path(__file__).parent.parent / "config.example.yaml"


def _option_paths(cls: type, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            inner = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
                tp = inner[0]  # an optional section: document its options
        if dataclasses.is_dataclass(tp):
            paths |= _option_paths(tp, path)
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            # Named entries (targets, policies...): document the entry's options once.
            paths |= _option_paths(typing.get_args(tp)[1], f"{path}.*")
        else:
            paths.add(path)
    return paths


def _documented(data: object, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths.add(path)
            paths |= _documented(value, path)
    return paths


def test_example_config_validates(clean_env) -> None:
    loaded = load_config(str(EXAMPLE))
    assert loaded.path == EXAMPLE


def test_example_config_documents_every_option() -> None:
    text = EXAMPLE.read_text()
    data, _ = parse_yaml(text, str(EXAMPLE))
    documented = _documented(data)
    # Options shown commented out (alternatives such as password_env) count as documented.
    commented = {line.strip().lstrip("#").strip().split(":")[0] for line in text.splitlines()
                 if line.strip().startswith("#") and ":" in line}
    missing = []
    for option in sorted(_option_paths(Settings)):
        if option.startswith("targets.*.checks."):
            # A target's own checks take the keys of the `checks:` section, documented there.
            option = option.removeprefix("targets.*.")
        if "*" in option:
            head, leaf = option.split(".*.", 1)
            named = [p for p in documented
                     if p.startswith(head + ".") and p.count(".") == head.count(".") + 1]
            ok = any(f"{n}.{leaf}" in documented for n in named) or leaf.split(".")[-1] in commented
        else:
            ok = option in documented or option.split(".")[-1] in commented
        if not ok:
            missing.append(option)
    assert not missing, f"options missing from config.example.yaml: {missing}"
