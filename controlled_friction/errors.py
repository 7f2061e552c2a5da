"""Turn validation errors into lines a person can act on (shared by the webhook, status and CLI)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails


def readable_errors(exc: ValidationError, prefix: str = "spec") -> list[str]:
    """One line per problem: the field path as written in YAML (camelCase) and what to do about it."""
    lines = []
    for err in exc.errors():
        path = _path(err["loc"])
        lines.append(f"{prefix}{path}: {_phrase(err)}")
    return list(dict.fromkeys(lines))


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or "[" in part:
            continue  # pydantic's validator wrappers, not fields
        else:
            out += "." + (to_camel(part) if "_" in part else part)
    return out


def _phrase(err: ErrorDetails) -> str:
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    kind = err["type"]
    bounds = {
        "less_than_equal": "≤ {le}",
        "less_than": "< {lt}",
        "greater_than_equal": "≥ {ge}",
        "greater_than": "> {gt}",
    }
    if kind in bounds:
        return "must be " + bounds[kind].format(**ctx)
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown field (see `kubectl explain` for the fields)"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')} (got {err.get('input')!r})"
    if kind == "string_pattern_mismatch":
        return f"{err.get('input')!r} does not match the pattern {ctx.get('pattern')}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s)"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        return f"must be at least {ctx.get('min_length')} characters"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number (got {err.get('input')!r})"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number (got {err.get('input')!r})"
    if kind in ("bool_type", "bool_parsing"):
        return "must be true or false"
    if kind == "string_type":
        return "must be a string"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "must be an object"
    if kind == "list_type":
        return "must be a list"
    return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")


def describe(exc: ValidationError, prefix: str = "spec") -> list[str]:
    return readable_errors(exc, prefix)
