"""The pure planner: spec + status + observations + now -> new status, actions and the next instant
it must look again.

Every rollout decision is taken here and nowhere else. The planner does no I/O and reads no clock,
so the shell can be restarted at any moment: everything needed to resume (step index, bake start,
analysis counters, approvals counted, aborted revision) is in the status it returns. Actions are
declarative ("the canary has N replicas of revision R"), so re-applying them after a crash is harmless.

One module per concern over a shared state (`base.Base`), like Argo Rollouts' canary/pause/analysis
files: `steps` walks the plan, `gate` counts approvals, `measuring` schedules analysis and folds
verdicts, `promotion` promotes and rolls back, `core` is the entry point.
"""

from __future__ import annotations

from controlled_friction.approvals import ApprovalCount, count_approvals
from controlled_friction.decisions import (
    Action,
    ApplyDeployment,
    ApprovalObs,
    ClearAction,
    Decision,
    DeploymentObs,
    EnsureService,
    InvalidPolicy,
    Observations,
    RecordEvent,
    RolloutInput,
    ScaleDeployment,
)
from controlled_friction.planner.base import HISTORY_LIMIT, effective_weight
from controlled_friction.planner.core import invalid, plan
from controlled_friction.planner.gate import UNVERIFIED_AUTHOR
from controlled_friction.planner.measuring import (
    analysis_interval,
    due_metrics,
    next_analysis_at,
    record_measurements,
    request_for,
)
from controlled_friction.planner.steps import canary_replicas
from controlled_friction.validation import name_problems, policy_hold, spec_problems

__all__ = [
    "HISTORY_LIMIT",
    "UNVERIFIED_AUTHOR",
    "Action",
    "ApplyDeployment",
    "ApprovalCount",
    "ApprovalObs",
    "ClearAction",
    "Decision",
    "DeploymentObs",
    "EnsureService",
    "InvalidPolicy",
    "Observations",
    "RecordEvent",
    "RolloutInput",
    "ScaleDeployment",
    "analysis_interval",
    "canary_replicas",
    "count_approvals",
    "due_metrics",
    "effective_weight",
    "invalid",
    "name_problems",
    "next_analysis_at",
    "plan",
    "policy_hold",
    "record_measurements",
    "request_for",
    "spec_problems",
]
