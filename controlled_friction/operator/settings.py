"""Process configuration of the operator (flags/env), set by `controlled-friction run` before kopf starts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

WebhookMode = Literal["local", "service", "none"]


@dataclass
class RunSettings:
    peering: str | None = None
    priority: int = 0
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

    def load_key(self, kube: Any) -> bytes:
        from controlled_friction import signing_key

        if self.key_file:
            return Path(self.key_file).read_bytes().strip()
        from kubernetes import client

        return signing_key.load_or_create_key(namespace=self.webhook_namespace, api=client.CoreV1Api(kube.api))

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
