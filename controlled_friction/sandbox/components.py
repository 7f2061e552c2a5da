"""What each sandbox process is: its command line, its port and how to tell it is healthy.

Pure descriptions; starting and stopping is `cluster.py`'s job. Order matters: a component only
depends on components listed before it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import controlled_friction
from controlled_friction.sandbox import layout
from controlled_friction.sandbox.build import binary
from controlled_friction.sandbox.layout import HOST, POD_CIDR, SERVICE_CIDR, Paths

PROMETHEUS_BIN = Path("/usr/bin/prometheus")
SIMULATOR_MODULE = "controlled_friction.sandbox.simulator"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Opt-in for benchmarks: path of an audit policy file; kube-apiserver then writes a JSON audit log to
# `<logs>/kube-apiserver-audit.log` (benchmarks/scale.py counts the operator's requests by verb there).
ENV_AUDIT_POLICY = "CF_SANDBOX_AUDIT_POLICY"
# "0" starts the simulator without its latency histogram (the scale benchmark sets it; see exposition).
ENV_SIM_LATENCY = "CF_SANDBOX_SIM_LATENCY"
# Client rate limits of the sandbox's own controllers. The defaults (20 QPS, burst 30) make the
# deployment/replicaset controllers and the scheduler the bottleneck long before the operator at
# hundreds of Rollouts (a wave of 1,000 canaries is 1,000 ReplicaSets and 2,000 pods).
CONTROLLER_QPS = ["--kube-api-qps=200", "--kube-api-burst=400"]


@dataclass(frozen=True)
class Component:
    name: str
    argv: list[str]
    port: int
    health_url: str
    startup_timeout: float
    # "ca": verify with the sandbox CA; "self-signed": TLS without verification (the component
    # made its own throwaway cert); None: plain HTTP.
    tls: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def _url(scheme: str, port: int, path: str = "") -> str:
    return f"{scheme}://{HOST}:{port}{path}"


def etcd(p: Paths) -> Component:
    port, peer = layout.port("etcd"), layout.port("etcd_peer")
    peer_url = _url("http", peer)
    return Component(
        name="etcd",
        argv=[
            str(binary("etcd")),
            "--name=sandbox",
            f"--data-dir={p.etcd_data}",
            f"--listen-client-urls={_url('http', port)}",
            f"--advertise-client-urls={_url('http', port)}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=sandbox={peer_url}",
            "--initial-cluster-state=new",
            # A throwaway test cluster on a 2-core box: skip fsync, keep the database small.
            "--unsafe-no-fsync=true",
            "--quota-backend-bytes=2147483648",
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=5m",
            "--log-level=warn",
        ],
        port=port,
        health_url=_url("http", port, "/health"),
        startup_timeout=30,
    )


def kube_apiserver(p: Paths) -> Component:
    port = layout.port("apiserver")
    return Component(
        name="kube-apiserver",
        argv=[
            str(binary("kube-apiserver")),
            f"--etcd-servers={_url('http', layout.port('etcd'))}",
            f"--bind-address={HOST}",
            f"--advertise-address={HOST}",
            f"--secure-port={port}",
            f"--tls-cert-file={p.serving_cert}",
            f"--tls-private-key-file={p.serving_key}",
            f"--client-ca-file={p.ca_cert}",
            f"--token-auth-file={p.tokens}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,"
            "DefaultStorageClass,ResourceQuota,MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            "--service-account-max-token-expiration=8760h",
            # 127.0.0.1 is not a valid Endpoints address; nothing in the sandbox needs the
            # `kubernetes` Service's endpoints, so do not reconcile them (avoids log spam).
            "--endpoint-reconciler-type=none",
            # Reach Services (webhooks in `service` mode) through their EndpointSlices: there is no
            # kube-proxy here to route a ClusterIP.
            "--enable-aggregator-routing=true",
            "--allow-privileged=true",
            "--event-ttl=1h",
            "--profiling=false",
            *_audit_flags(p),
        ],
        port=port,
        health_url=_url("https", port, "/readyz"),
        startup_timeout=120,
        tls="ca",
    )


def audit_log(p: Paths) -> Path:
    return p.logs / "kube-apiserver-audit.log"


def _audit_flags(p: Paths) -> list[str]:
    policy = os.environ.get(ENV_AUDIT_POLICY)
    if not policy:
        return []
    return [
        f"--audit-policy-file={policy}",
        f"--audit-log-path={audit_log(p)}",
        "--audit-log-format=json",
        "--audit-log-mode=batch",  # never block a request on the log
        "--audit-log-maxsize=4000",  # MB; no rotation during a benchmark (the state dir goes at `down`)
    ]


def kube_controller_manager(p: Paths) -> Component:
    port = layout.port("controller_manager")
    return Component(
        name="kube-controller-manager",
        argv=[
            str(binary("kube-controller-manager")),
            f"--kubeconfig={p.admin_kubeconfig}",
            f"--bind-address={HOST}",
            f"--secure-port={port}",
            f"--cert-dir={p.certs_scratch / 'controller-manager'}",
            "--leader-elect=false",  # one instance; a restart must not wait for a lease to expire
            f"--service-account-private-key-file={p.sa_key}",
            f"--root-ca-file={p.ca_cert}",
            "--cluster-name=cf-sandbox",
            "--concurrent-deployment-syncs=10",
            "--concurrent-replicaset-syncs=10",
            *CONTROLLER_QPS,
            "--profiling=false",
        ],
        port=port,
        health_url=_url("https", port, "/healthz"),
        startup_timeout=90,
        tls="self-signed",
    )


def kube_scheduler(p: Paths) -> Component:
    port = layout.port("scheduler")
    return Component(
        name="kube-scheduler",
        argv=[
            str(binary("kube-scheduler")),
            f"--kubeconfig={p.admin_kubeconfig}",
            f"--bind-address={HOST}",
            f"--secure-port={port}",
            f"--cert-dir={p.certs_scratch / 'scheduler'}",
            "--leader-elect=false",
            *CONTROLLER_QPS,
            "--profiling=false",
        ],
        port=port,
        health_url=_url("https", port, "/healthz"),
        startup_timeout=90,
        tls="self-signed",
    )


def kwok(p: Paths) -> Component:
    port = layout.port("kwok")
    return Component(
        name="kwok",
        argv=[
            str(binary("kwok")),
            f"--kubeconfig={p.admin_kubeconfig}",
            f"--config={p.kwok_config}",
            # Only the fake nodes (bootstrap.nodes); a real kubelet node (`realnode`) is its own.
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--server-address={HOST}:{port}",
            f"--cidr={POD_CIDR}",
            "--node-ip=10.0.0.1",
            "--node-lease-duration-seconds=40",
        ],
        port=port,
        health_url=_url("http", port, "/healthz"),
        startup_timeout=60,
    )


def simulator(p: Paths) -> Component:
    port = layout.port("simulator")
    # Make the package importable however the sandbox was launched (installed or from a checkout).
    src_root = str(Path(controlled_friction.__file__).resolve().parent.parent)
    return Component(
        name="simulator",
        argv=[
            sys.executable, "-m", SIMULATOR_MODULE,
            "--kubeconfig", str(p.admin_kubeconfig),
            "--listen", f"{HOST}:{port}",
            *(["--no-latency"] if os.environ.get(ENV_SIM_LATENCY) == "0" else []),
        ],
        port=port,
        health_url=_url("http", port, "/metrics"),
        startup_timeout=60,
        env={"PYTHONPATH": src_root, "PYTHONUNBUFFERED": "1"},
    )


def prometheus(p: Paths) -> Component:
    port = layout.port("prometheus")
    return Component(
        name="prometheus",
        argv=[
            str(PROMETHEUS_BIN),
            f"--config.file={p.prometheus_config}",
            f"--storage.tsdb.path={p.prometheus_data}",
            "--storage.tsdb.retention.time=6h",
            f"--web.listen-address={HOST}:{port}",
            "--web.enable-lifecycle",  # tests reload the config with POST /-/reload
            "--log.level=warn",
        ],
        port=port,
        health_url=_url("http", port, "/-/ready"),
        startup_timeout=60,
    )


def prometheus_config() -> str:
    """Scrape the traffic simulator every second; it exposes the contract's app metrics."""
    doc = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "simulator",
                # The simulator speaks for many apps: keep its namespace/service/track labels as is.
                "honor_labels": True,
                "static_configs": [{"targets": [f"{HOST}:{layout.port('simulator')}"]}],
            }
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def all_components(p: Paths) -> list[Component]:
    """In start order."""
    return [
        etcd(p), kube_apiserver(p), kube_controller_manager(p), kube_scheduler(p), kwok(p),
        simulator(p), prometheus(p),
    ]


NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "simulator",
         "prometheus")
