"""Query helpers for tests that run a real, throwaway Prometheus (see
controlled_friction/sandbox/throwaway_prometheus.py, re-exported here)."""

from __future__ import annotations

from typing import Any

import requests

from controlled_friction.sandbox.throwaway_prometheus import (
    available as prometheus_available,
)
from controlled_friction.sandbox.throwaway_prometheus import (
    free_port,
    running_prometheus,
    targets_up,
)

__all__ = ["free_port", "prometheus_available", "query", "query_by", "running_prometheus", "targets_up"]


def query(url: str, promql: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Instant query; the result vector (each item: {"metric": {...}, "value": [ts, "number"]})."""
    resp = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=timeout)
    resp.raise_for_status()
    body = resp.json()
    if body.get("status") != "success":
        raise RuntimeError(f"query {promql!r} failed: {body}")
    return list(body["data"]["result"])


def query_by(url: str, promql: str, label: str) -> dict[str, float]:
    """Instant query whose result is keyed by one label, e.g. `sum by (track) (...)`."""
    return {item["metric"].get(label, ""): float(item["value"][1]) for item in query(url, promql)}
