"""Run a real, throwaway Prometheus for a test (Debian's /usr/bin/prometheus).

    with running_prometheus(["127.0.0.1:9464"]) as url:
        ...  # query f"{url}/api/v1/query"

The server gets a temporary config and data directory and a free 127.0.0.1 port, and is killed
on exit. Targets are scraped with `honor_labels: true`, as in the sandbox, so exporters that
speak for many apps (the traffic simulator) keep their own namespace/service/track labels.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.e2e.waiting import wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def prometheus_available() -> bool:
    return Path(PROMETHEUS).is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_prometheus(targets: list[str], scrape_interval: str = "1s", startup_timeout: float = 60.0) -> Iterator[str]:
    """Yield the base URL of a Prometheus scraping `targets` (HOST:PORT, path /metrics)."""
    with tempfile.TemporaryDirectory(prefix="cf-prom-") as tmp:
        config = {
            "global": {
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "evaluation_interval": scrape_interval,
            },
            "scrape_configs": [{"job_name": "app", "honor_labels": True, "static_configs": [{"targets": targets}]}],
        }
        config_file, log_file = Path(tmp, "prometheus.yml"), Path(tmp, "prometheus.log")
        config_file.write_text(yaml.safe_dump(config))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log_file, "wb") as log:
            proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={tmp}/data",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:

            def ready() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"prometheus exited ({proc.returncode}): {log_file.read_text()[-2000:]}")
                return requests.get(f"{url}/-/ready", timeout=1).status_code == 200

            try:
                wait_for(ready, timeout=startup_timeout, interval=0.2, message="prometheus ready")
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}\nprometheus log:\n{log_file.read_text()[-2000:]}") from exc
            yield url
        finally:
            proc.kill()  # a test server: no need for a clean TSDB shutdown
            proc.wait(timeout=30)


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


def targets_up(url: str) -> bool:
    resp = requests.get(f"{url}/api/v1/targets", timeout=5)
    resp.raise_for_status()
    active = resp.json()["data"]["activeTargets"]
    return bool(active) and all(t.get("health") == "up" for t in active)
