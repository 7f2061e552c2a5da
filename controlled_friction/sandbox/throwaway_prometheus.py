"""A real, throwaway Prometheus (Debian's /usr/bin/prometheus) for tests and benchmarks.

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
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import requests
import yaml

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def available() -> bool:
    return Path(PROMETHEUS).is_file()


def version() -> str:
    out = subprocess.run([PROMETHEUS, "--version"], capture_output=True, text=True, timeout=30, check=False)
    first = (out.stdout or out.stderr).splitlines()
    return first[0] if first else "unknown"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def targets_up(url: str) -> bool:
    resp = requests.get(f"{url}/api/v1/targets", timeout=5)
    resp.raise_for_status()
    active = resp.json()["data"]["activeTargets"]
    return bool(active) and all(t.get("health") == "up" for t in active)


def _poll(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll (exceptions count as "not yet") until `predicate` holds or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except RuntimeError:
            raise  # the server died: waiting longer cannot help
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}" + (f": {last!r}" if last else ""))


@contextlib.contextmanager
def running_prometheus(
    targets: list[str],
    scrape_interval: str = "1s",
    startup_timeout: float = 60.0,
    wait_for_targets: bool = False,
) -> Iterator[str]:
    """Yield the base URL of a Prometheus scraping `targets` (HOST:PORT, path /metrics) once it is
    ready (and, with `wait_for_targets`, once every target has been scraped up)."""
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
                if requests.get(f"{url}/-/ready", timeout=1).status_code != 200:
                    return False
                return targets_up(url) if wait_for_targets else True

            try:
                _poll(ready, startup_timeout, "Prometheus to scrape its targets" if wait_for_targets else
                      "Prometheus ready")
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}\nprometheus log:\n{log_file.read_text()[-2000:]}") from exc
            yield url
        finally:
            proc.kill()  # throwaway data: no need for a clean TSDB shutdown
            proc.wait(timeout=30)
