"""Where the sandbox keeps its state and which 127.0.0.1 ports it uses: all in one place.

Every port is ``CF_SANDBOX_PORT_BASE`` (default 16440) plus a fixed offset, so a second sandbox
(or a port clash) is one environment variable away. The state directory is
``$CF_SANDBOX_DIR`` or ``~/.cache/controlled-friction/sandbox``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from controlled_friction.sandbox.build import cache_root

HOST = "127.0.0.1"
DEFAULT_PORT_BASE = 16440
ENV_STATE_DIR = "CF_SANDBOX_DIR"
ENV_PORT_BASE = "CF_SANDBOX_PORT_BASE"

# Offsets from the port base. `webhook` and `operator_health` are not used by the sandbox itself;
# they are reserved so the operator run against the sandbox has known, clash-free ports.
PORT_OFFSETS: dict[str, int] = {
    "etcd": 0,
    "etcd_peer": 1,
    "kwok": 2,
    "apiserver": 3,
    "controller_manager": 4,
    "scheduler": 5,
    "prometheus": 6,
    "simulator": 7,
    "webhook": 8,
    "operator_health": 9,
    # The real node's kubelet (`sandbox up --real-node`): its API on the bridge, healthz on 127.0.0.1.
    "kubelet": 10,
    "kubelet_healthz": 11,
}

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # first address of SERVICE_CIDR: the `kubernetes` Service
POD_CIDR = "10.244.0.0/16"


def port_base() -> int:
    raw = os.environ.get(ENV_PORT_BASE)
    if not raw:
        return DEFAULT_PORT_BASE
    base = int(raw)
    if not 1024 <= base <= 65535 - len(PORT_OFFSETS):
        raise ValueError(f"{ENV_PORT_BASE}={raw} leaves no room for {len(PORT_OFFSETS)} ports")
    return base


def port(name: str) -> int:
    return port_base() + PORT_OFFSETS[name]


def state_dir() -> Path:
    raw = os.environ.get(ENV_STATE_DIR)
    return Path(raw).expanduser() if raw else cache_root() / "sandbox"


@dataclass(frozen=True)
class Paths:
    """Files inside the state directory; computed, never stored."""

    root: Path

    @property
    def marker(self) -> Path:
        # Its presence is what lets `down` delete the directory: never rmtree a stranger's dir.
        return self.root / "sandbox.json"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca_cert(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.pki / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.pki / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.pki / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.pki / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.pki / "sa.pub"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens.csv"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def kubeconfigs(self) -> Path:
        return self.root / "kubeconfigs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def prometheus_data(self) -> Path:
        return self.root / "prometheus"

    @property
    def prometheus_config(self) -> Path:
        return self.root / "prometheus.yml"

    @property
    def kwok_config(self) -> Path:
        return self.root / "kwok.yaml"

    @property
    def certs_scratch(self) -> Path:
        # kube-controller-manager and kube-scheduler write self-signed serving certs here.
        return self.root / "certs"

    @property
    def bootstrap_stamp(self) -> Path:
        return self.root / "bootstrap.sha256"

    def pid_file(self, component: str) -> Path:
        return self.run / f"{component}.json"

    def log_file(self, component: str) -> Path:
        return self.logs / f"{component}.log"


def paths() -> Paths:
    return Paths(state_dir())
