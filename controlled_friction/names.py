"""Names shared with other parts of the system (see shared/design/CONTRACT.md). Keep them stable."""

from __future__ import annotations

GROUP = "controlled-friction.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
ROLLOUT_PLURAL = "rollouts"
POLICY_PLURAL = "frictionpolicies"

PREFIX = f"{GROUP}/"
LABEL_ROLLOUT = PREFIX + "rollout"
LABEL_TRACK = PREFIX + "track"
LABEL_REVISION = PREFIX + "revision"
LABEL_TIER = PREFIX + "tier"

ANN_APPROVE = PREFIX + "approve"
ANN_APPROVALS = PREFIX + "approvals"
ANN_AUTHOR = PREFIX + "author"
# HMAC binding `author` to the rollout and revision (written with it by the webhook; not in the contract).
ANN_AUTHOR_SIGNATURE = PREFIX + "author-signature"
ANN_CHANGE_AUTHOR = PREFIX + "change-author"
ANN_AI_ASSISTED = PREFIX + "ai-assisted"
ANN_ACTION = PREFIX + "action"
# A ticket id or URL and a one-line summary of the change (format: `change_record.py`).
ANN_CHANGE_RECORD = PREFIX + "change-record"
# Deletion approvals (not in the contract): an approver writes `approve-delete: <Rollout uid>`, the
# webhook turns it into a signed entry of `delete-approvals`, as it does for `approve`/`approvals`.
ANN_APPROVE_DELETE = PREFIX + "approve-delete"
ANN_DELETE_APPROVALS = PREFIX + "delete-approvals"

SIM_PREFIX = "sim.controlled-friction.io/"
SIM_ERROR_RATE = SIM_PREFIX + "error-rate"
SIM_ORDER_DROP = SIM_PREFIX + "order-drop"
SIM_LATENCY_MS = SIM_PREFIX + "latency-ms"
SIM_FAULT_AFTER = SIM_PREFIX + "fault-after"

TRACK_STABLE = "stable"
TRACK_CANARY = "canary"

OPERATOR_NAMESPACE = "controlled-friction"
OPERATOR_SERVICE_ACCOUNT = "controlled-friction"
OPERATOR_USERNAME = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
# Kubernetes' own controllers that remove what the operator owns once its Rollout is gone.
GARBAGE_COLLECTOR_USERNAME = "system:serviceaccount:kube-system:generic-garbage-collector"

SENIOR_GROUP = "senior-engineers"
ENV_PROMETHEUS_URL = "CF_PROMETHEUS_URL"


def deployment_name(rollout: str, track: str) -> str:
    return f"{rollout}-{track}"
