"""The global options are coerced without pydantic unless a value needs it.

Typer (0.29) builds a pydantic TypeAdapter for every option it processes, even one left at
None or at its enum default: on every command, the global options alone import pydantic,
about half of `python -c "import typer"` again, before `aegisctl backup --help` can print
anything. Here each global option gets a coercion that answers None and an enum default
itself (what the adapter would return: the same value) and builds typer's own coercion, as
typer would, for any other value. When typer's internals differ from what this expects,
nothing is changed and typer coerces as usual.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


def defer_coercion(params: list[Any]) -> None:
    try:
        from typer._coercion import RuntimeParam, build_runtime_param
    except ImportError:  # another typer: leave its coercion alone
        return
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

    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", False) is not None:
            continue
        try:
            param._runtime_param = Deferred(parameter_info=descriptor.parameter_info,
                                            annotation=descriptor.annotation,
                                            descriptor=descriptor)
        except (AttributeError, TypeError):
            return
