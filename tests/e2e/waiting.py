"""Wait on a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.5,
    message: str = "",
) -> T:
    """Call `predicate` until it returns something truthy and return that.

    Exceptions from `predicate` count as "not yet" (an API server restarting, a metric not scraped
    yet) and the last one is reported on timeout together with the last value seen.
    """
    deadline = time.monotonic() + timeout
    last_value: object = None
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last_value, last_error = value, None
        except Exception as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            detail = f"last error: {last_error!r}" if last_error else f"last value: {last_value!r}"
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}; {detail}")
        time.sleep(interval)
