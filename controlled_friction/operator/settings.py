"""Process configuration of the operator (flags/env), set by `controlled-friction run` before kopf starts."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from controlled_friction.adapters.kube import Kube

WebhookMode = Literal["local", "service", "none"]
Component = Literal["all", "controller", "webhooks"]
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def in_cluster() -> bool:
    return (SERVICE_ACCOUNT_DIR / "token").exists() and "KUBERNETES_SERVICE_HOST" in os.environ


def default_webhook_mode() -> WebhookMode:
    """Approvals are impossible without the webhooks, so never default to none: in a pod the API
    server reaches us through the chart's Service, elsewhere (a laptop, the sandbox) at 127.0.0.1."""
    return "service" if in_cluster() else "local"


@dataclass
class RunSettings:
    peering: str | None = None
    priority: int = 0
    # kopf's peer identity, chosen here so the scheduler can find itself among the peers.
    # In a pod the chart sets POD_ID (the pod's name), as kopf itself would use it.
    identity: str = field(
        default_factory=lambda: os.environ.get("POD_ID") or f"{socket.gethostname()}/{secrets.token_hex(4)}"
    )
    selector: str | None = None  # label selector: this shard reconciles only the Rollouts it matches
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    # Threads for reconciles. A reconcile mostly waits on the API server (a status write, a Deployment
    # write, an Event), so the pool bounds how many writes are in flight: at 8 a wave of 100 canaries
    # queued for tens of seconds behind each other's writes (benchmarks/scale.py).
    workers: int = int(os.environ.get("CF_WORKERS", "32"))
    webhook_mode: WebhookMode = "none"
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 9443
    # The chart sets these for releases with another name or namespace (certificate hosts, key Secret).
    webhook_service: str = field(
        default_factory=lambda: os.environ.get("CF_WEBHOOK_SERVICE", "controlled-friction-webhook")
    )
    webhook_namespace: str = field(default_factory=lambda: os.environ.get("CF_NAMESPACE", "controlled-friction"))
    cert_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("CF_CERT_DIR", "/tmp/controlled-friction-certs"))
    )
    metrics_port: int | None = 8080
    metrics_addr: str = "0.0.0.0"
    key_file: str | None = os.environ.get("CF_APPROVAL_KEY_FILE")
    # The installation's ClusterKopfPeering: it owns the webhook configurations, so uninstalling the
    # chart (which deletes it) garbage-collects them instead of leaving fail-closed webhooks behind.
    webhook_owner: str | None = field(default_factory=lambda: os.environ.get("CF_WEBHOOK_OWNER_PEERING") or None)

    def load_key(self, kube: Kube) -> bytes:
        from controlled_friction import signing_key

        if self.key_file:
            return signing_key.key_from_file(self.key_file)
        return signing_key.load_or_create_key(kube, namespace=self.webhook_namespace)

    def webhook_options(self) -> dict[str, Any]:
        from controlled_friction import certs

        hosts = [self.webhook_host] if self.webhook_mode == "local" else [
            self.webhook_service,
            f"{self.webhook_service}.{self.webhook_namespace}",
            f"{self.webhook_service}.{self.webhook_namespace}.svc",
            f"{self.webhook_service}.{self.webhook_namespace}.svc.cluster.local",
        ]
        paths = certs.generate(hosts, self.cert_dir)
        return {
            "host": self.webhook_host if self.webhook_mode == "local" else "0.0.0.0",
            "port": self.webhook_port,
            "certfile": paths.cert,
            "keyfile": paths.key,
            "cafile": paths.ca,
            "mode": self.webhook_mode,
            "service_name": self.webhook_service,
            "service_namespace": self.webhook_namespace,
        }


RUN = RunSettings()
