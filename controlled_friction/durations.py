"""Go-style durations ("90s", "2m", "1h30m", "500ms") or plain seconds, as used in the CRDs."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
MAX_DURATION_SECONDS = 7 * 24 * 3600.0


def parse_duration(value: Any) -> float:
    """Seconds for a duration string or number; raises ValueError with a message a person can act on."""
    if isinstance(value, bool):
        raise ValueError("duration must be a string like '30s', '2m', '1h30m' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for m in _PART.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if pos != len(text) or not text:
                raise ValueError(f"invalid duration {value!r}: use forms like '30s', '2m', '1h30m'")
    else:
        raise ValueError(f"invalid duration {value!r}: use forms like '30s', '2m', '1h30m'")
    if seconds < 0:
        raise ValueError(f"duration {value!r} is negative")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"duration {value!r} is longer than 7 days; use an untimed pause instead")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    total = round(seconds)
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s or total == 0 else "")
    return out


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "description": "Duration such as '30s', '2m', '1h30m', or a number of seconds.",
        }
    ),
]
