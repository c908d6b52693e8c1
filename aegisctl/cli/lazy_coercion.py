"""Options are coerced without pydantic unless a value needs it.

Typer (0.29) builds a pydantic TypeAdapter for every option it processes, even one left at
None or at its enum default: on every command, the global options alone import pydantic,
about half of `python -c "import typer"` again, before `aegisctl backup --help` can print
anything. Here each global option (and each option of a group once it is loaded, with the
--help of each command) gets a coercion that answers None and an enum default
itself (what the adapter would return: the same value) and builds typer's own coercion, as
typer would, for any other value. When typer's internals differ from what this expects,
nothing is changed and typer coerces as usual.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

_DEFERRED: list[Any] = []  # the coercion class, made once (a dataclass costs an exec)


def _deferred_class() -> Any:
    if not _DEFERRED:
        try:
            from typer._coercion import RuntimeParam, build_runtime_param
        except ImportError:  # another typer: leave its coercion alone
            _DEFERRED.append(None)
            return None
        from dataclasses import dataclass

        @dataclass(frozen=True)
        class Deferred(RuntimeParam):
            descriptor: Any

            def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
                # RuntimeParam.coerce has answered None already, as typer's own would.
                if isinstance(value, Enum) and type(value) is self.annotation:
                    return value
                real = build_runtime_param(self.descriptor)
                return real._coerce_value(value, param=param, ctx=ctx)

        _DEFERRED.append(Deferred)
    return _DEFERRED[0]


def defer_coercion(params: list[Any]) -> None:
    deferred = _deferred_class()
    if deferred is None:
        return
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", False) is not None:
            continue
        try:
            param._runtime_param = deferred(parameter_info=descriptor.parameter_info,
                                            annotation=descriptor.annotation,
                                            descriptor=descriptor)
        except (AttributeError, TypeError):
            return


def defer_tree(command: Any) -> None:
    """defer_coercion for `command` and every command below it, --help options included
    (click creates those per command on first use, from the context's option names)."""
    defer_coercion(list(getattr(command, "params", [])))
    original = getattr(command, "get_help_option", None)
    if original is not None:
        def get_help_option(ctx: Any) -> Any:
            option = original(ctx)
            if option is not None:
                defer_coercion([option])
            return option

        command.get_help_option = get_help_option
    for sub in getattr(command, "commands", {}).values():
        defer_tree(sub)
