"""Wait for CustomResourceDefinitions to be Established.

Polled rather than `kubectl wait`, which fails at once on a just-created CRD that has no conditions
yet ("status.conditions accessor error").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

_QUERY = '{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Established")].status}{"\\n"}{end}'


def wait_established(kubectl: Callable[..., Any], crds: Iterable[str], timeout: float = 60) -> None:
    wanted = list(crds)
    deadline = time.monotonic() + timeout
    while True:
        out = kubectl("get", "crd", "-o", f"jsonpath={_QUERY}", check=False).stdout
        established = {line.partition("=")[0] for line in out.splitlines() if line.endswith("=True")}
        missing = [name for name in wanted if name not in established]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRDs not Established after {timeout:.0f}s: {', '.join(missing)}")
        time.sleep(0.25)
