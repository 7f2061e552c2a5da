"""Has someone changed an operator-owned Deployment's pod template behind the operator's back?

The API server adds defaults to every pod template it stores, so the stored template is compared
with the one the operator would write as a subset: every field the operator sets must still hold
its value, and every list it sets must keep its length (an added container or env var is a change).
Pure; the planner decides what to do about it.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

MAX_PATHS = 5
_SUFFIX: dict[str, Decimal] = {
    "": Decimal(1), "m": Decimal("0.001"), "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9),
    "T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18), "Ki": Decimal(2**10),
    "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40), "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def _quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity's value ("500m" and "0.5" are the same CPU), else None."""
    m = _QUANTITY.match(str(value).strip())
    if not m:
        return None
    try:
        return Decimal(m.group(1)) * _SUFFIX[m.group(2) or ""]
    except InvalidOperation:
        return None


def _same_scalar(desired: Any, actual: Any) -> bool:
    if desired == actual or str(desired) == str(actual):
        return True
    # The API server canonicalises quantities (resources): compare their values.
    a, b = _quantity(desired), _quantity(actual)
    return a is not None and a == b


def changed_paths(desired: Any, actual: Any, path: str = "template") -> list[str]:
    """Paths under `desired` whose value `actual` no longer holds (empty: no drift)."""
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return [path]
        out: list[str] = []
        for key, value in desired.items():
            if key not in actual:
                if value in (None, {}, []):
                    continue  # empty values are dropped by the API server
                out.append(f"{path}.{key}")
            else:
                out += changed_paths(value, actual[key], f"{path}.{key}")
        return out
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(actual) != len(desired):
            return [path]
        out = []
        for i, (d, a) in enumerate(zip(desired, actual, strict=True)):
            label = d.get("name") if isinstance(d, dict) and isinstance(d.get("name"), str) else str(i)
            out += changed_paths(d, a, f"{path}[{label}]")
        return out
    return [] if _same_scalar(desired, actual) else [path]


def describe(paths: list[str]) -> str:
    shown = ", ".join(paths[:MAX_PATHS])
    return shown + (f" and {len(paths) - MAX_PATHS} more" if len(paths) > MAX_PATHS else "")
