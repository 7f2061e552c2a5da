"""Turn validation errors into lines a person can act on."""

from __future__ import annotations

from pydantic import ValidationError
from pydantic.alias_generators import to_camel


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in ("function-after", "function-before"):
            continue
        else:
            out += ("." if out else "") + to_camel(part) if "_" in part else ("." if out else "") + part
    return out


def describe(exc: ValidationError, prefix: str = "spec") -> list[str]:
    lines = []
    for err in exc.errors():
        loc = _path(tuple(err["loc"]))
        where = f"{prefix}.{loc}" if loc else prefix
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {msg}")
    return lines
