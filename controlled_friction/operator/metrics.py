"""The operator's own /metrics (prometheus-client)."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram, start_http_server

ROLLOUTS_BY_PHASE = Gauge(
    "controlled_friction_rollouts", "Rollouts by phase, as last reconciled.", ["namespace", "rollout", "phase"]
)
ROLLBACKS = Counter("controlled_friction_rollbacks_total", "Automatic and manual rollbacks.", ["namespace", "reason"])
VERDICTS = Counter(
    "controlled_friction_verdicts_total",
    "Analysis measurements by metric, verdict and mode (enforce, or observe for shadow metrics).",
    ["metric", "verdict", "mode"],
)
GATE_WAIT = Histogram(
    "controlled_friction_gate_wait_seconds",
    "Time from reaching an approval gate to leaving it (approved, aborted or rolled back).",
    buckets=(10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
PROMOTIONS = Counter("controlled_friction_promotions_total", "Revisions promoted to stable.", ["namespace"])
RECONCILE_SECONDS = Histogram(
    "controlled_friction_reconcile_duration_seconds",
    "Time to reconcile one Rollout (observe, analyse, plan, write).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_SECONDS = Histogram(
    "controlled_friction_reconcile_queue_seconds",
    "Time a Rollout waited for a worker: from the instant it was due (something it reads changed, or "
    "the instant the planner asked for) to the start of its reconcile.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
KUBE_REQUEST_SECONDS = Histogram(
    "controlled_friction_kube_request_duration_seconds",
    "The operator's requests to the Kubernetes API as the operator sees them (connection, API server "
    "queueing and work), by verb and resource.",
    ["verb", "resource"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_ERRORS = Counter(
    "controlled_friction_reconcile_errors_total", "Reconciles that failed and will be retried.", ["kind"]
)
DRIFT_REVERTED = Counter(
    "controlled_friction_drift_reverted_total",
    "Owned Deployments restored after their template was changed outside the Rollout.", ["namespace", "track"]
)
PROMETHEUS_QUERIES = Counter(
    "controlled_friction_prometheus_queries_total", "Queries sent to Prometheus (batched across Rollouts)."
)
ADMISSION_SECONDS = Histogram(
    "controlled_friction_admission_duration_seconds",
    "Time to answer one admission request, in the webhook server (the API server's own view, "
    "apiserver_admission_webhook_admission_duration_seconds, adds the network and its own waits).",
    ["webhook"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5),
)
EVENTS_DROPPED = Counter(
    "controlled_friction_events_dropped_total", "Events not recorded because too many were already waiting."
)
CONFLICTS = Counter("controlled_friction_conflicts_total", "409 conflicts handled by re-reading and re-planning.")

_PHASES = ("Pending", "Progressing", "Paused", "AwaitingApproval", "Promoting", "Healthy", "RolledBack", "Invalid")


def set_phase(namespace: str, rollout: str, phase: str) -> None:
    for p in _PHASES:
        ROLLOUTS_BY_PHASE.labels(namespace, rollout, p).set(1 if p == phase else 0)


def forget(namespace: str, rollout: str) -> None:
    for p in _PHASES:
        with contextlib.suppress(KeyError):
            ROLLOUTS_BY_PHASE.remove(namespace, rollout, p)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr)
