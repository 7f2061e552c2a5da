"""Fixtures for end-to-end tests: the real sandbox and a throwaway namespace per test.

The session fixture reuses a sandbox that is already running and never tears down one it did not
start. A sandbox it started itself is brought down at the end, unless CF_SANDBOX_KEEP=1.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator

import pytest
import yaml
from kubernetes import client, config

from controlled_friction.sandbox import cluster
from controlled_friction.sandbox.cluster import SandboxInfo
from controlled_friction.sandbox.operator_proc import (
    OperatorProcess,
    install_crds,
    remove_webhook_configurations,
)

from . import rollouts
from .waiting import wait_for


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxInfo]:
    was_running = any(st["running"] for st in cluster.status().values())
    info = cluster.up(quiet=False)
    # A stopped operator leaves its fail-closed webhook configurations behind (by design); tests that
    # need webhooks start their own operator, which registers them again.
    remove_webhook_configurations()
    yield info
    if not was_running and os.environ.get("CF_SANDBOX_KEEP") != "1":
        cluster.down(quiet=True)


@pytest.fixture(scope="session")
def kube(sandbox: SandboxInfo) -> client.ApiClient:
    """A Kubernetes API client acting as the sandbox admin."""
    return config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(sandbox.admin_kubeconfig)
    )


@pytest.fixture
def namespace(kube: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, deleted (without waiting) afterwards."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"e2e-{stem}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(kube)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods are rejected until the namespace's default ServiceAccount exists.
    wait_for(lambda: core.read_namespaced_service_account("default", name), timeout=30,
             message=f"ServiceAccount default in {name}")
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def operator(sandbox: SandboxInfo) -> Iterator[OperatorProcess]:
    """The operator as a separate process (its ServiceAccount identity, webhooks on 127.0.0.1)."""
    install_crds()
    # Policies are cluster-wide: one left by the demo or an aborted run would add friction to every test.
    cluster.kubectl("delete", "frictionpolicies", "--all", check=False)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(rollouts.critical_policy()))
    op = OperatorProcess(
        log_path=sandbox.state_dir / "logs" / "e2e-operator.log",
        webhook_port=sandbox.ports["webhook"],
        metrics_port=sandbox.ports["operator_health"],
    )
    op.start()
    op.wait_webhook_ready()
    yield op
    op.stop()
    remove_webhook_configurations()
    cluster.kubectl("delete", "frictionpolicy", rollouts.POLICY, "--ignore-not-found", check=False)


@pytest.fixture
def live_operator(operator: OperatorProcess) -> OperatorProcess:
    """The session operator, restarted first if an earlier test killed it."""
    if not operator.alive():
        operator.start()
        operator.wait_webhook_ready()
    return operator


@pytest.fixture
def make_namespace(kube: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Create more throwaway namespaces in one test (all deleted, without waiting, afterwards)."""
    core = client.CoreV1Api(kube)
    made: list[str] = []

    def make(stem: str, labels: dict[str, str] | None = None) -> str:
        name = f"e2e-{stem}-{uuid.uuid4().hex[:6]}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
        made.append(name)
        wait_for(lambda: core.read_namespaced_service_account("default", name), timeout=30,
                 message=f"ServiceAccount default in {name}")
        return name

    yield make
    for name in made:
        core.delete_namespace(name, propagation_policy="Background")
