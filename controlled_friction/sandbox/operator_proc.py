"""Run the operator as a separate process against the sandbox (for the demo and end-to-end tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from controlled_friction.sandbox import cluster
from controlled_friction.sandbox.crd_wait import wait_established


def crd_manifests() -> str:
    """The CRDs as packaged with the code (generated from the pydantic models)."""
    pkg = resources.files("controlled_friction") / "crds"
    return "\n---\n".join(p.read_text() for p in sorted(pkg.iterdir(), key=lambda p: p.name)
                          if p.name.endswith(".yaml"))


def install_crds() -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=crd_manifests())
    wait_established(cluster.kubectl, ("rollouts.controlled-friction.io", "frictionpolicies.controlled-friction.io"))


@dataclass
class OperatorProcess:
    """`controlled-friction run` as the operator's ServiceAccount, with the webhook on 127.0.0.1."""

    log_path: Path
    webhook_port: int
    metrics_port: int = 0
    peering: str | None = None
    priority: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    # e.g. ["--component", "webhooks"]; a --webhook-mode here replaces the default one
    flags: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "controlled_friction.cli.main", "run",
            "--kubeconfig", str(cluster.kubeconfig_path("operator")),
            "--webhook-mode", "local", "--webhook-host", "127.0.0.1", "--webhook-port", str(self.webhook_port),
            "--metrics-port", str(self.metrics_port), "--health-port", "0",
        ]
        if self.peering:
            cmd += ["--peering", self.peering, "--priority", str(self.priority)]
        if "--webhook-mode" in self.flags:
            i = cmd.index("--webhook-mode")
            del cmd[i:i + 2]
        return cmd + self.flags

    def start(self) -> None:
        info = cluster.info()
        env = {
            **os.environ,
            "CF_PROMETHEUS_URL": info.prometheus_url,
            "CF_CERT_DIR": str(info.state_dir / "operator-certs"),
            **self.extra_env,
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def wait_webhook_ready(self, timeout: float = 60) -> None:
        """Wait until kopf has registered its webhook configurations and serves them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"operator exited; log:\n{self.tail()}")
            out = cluster.kubectl("get", "mutatingwebhookconfigurations", "-o", "name", check=False).stdout
            # The configuration may be left over from an earlier run: also wait for our server to listen.
            if "controlled-friction" in out and _listening(self.webhook_port):
                return
            time.sleep(0.5)
        raise TimeoutError(f"webhook not registered after {timeout}s; log:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def remove_webhook_configurations() -> None:
    """Drop the webhook configurations kopf registered, so a stopped operator blocks no writes."""
    for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        out = cluster.kubectl("get", kind, "-o", "name", check=False).stdout.split()
        mine = [n for n in out if "controlled-friction" in n]
        if mine:
            cluster.kubectl("delete", *mine, "--ignore-not-found", check=False)
