"""The Rollout CRD: a pod template plus a canary plan, and the status the operator keeps."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from controlled_friction.durations import Duration
from controlled_friction.models.base import LabelSelector, SpecModel, StatusModel
from controlled_friction.sequential import SequentialState

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MetricKind = Literal["errorRatio", "orderRateDrop", "query"]
MetricMode = Literal["enforce", "observe"]
QUERY_VARIABLES = ("namespace", "service", "rollout", "track", "revision", "interval", "window")


class PauseStep(SpecModel):
    duration: Duration | None = Field(
        default=None,
        description="How long to bake at the current weight. Omit to wait for a `promote` action.",
    )


class ApprovalStep(SpecModel):
    count: int = Field(
        default=0,
        ge=0,
        le=10,
        description="Approvals this rollout itself asks for at this gate. Policies may require more "
        "(the stricter count wins); 0 means the gate only exists if a policy requires approvals.",
    )
    approver_groups: list[str] = Field(
        default_factory=list,
        description="Groups whose members may approve. Empty: every group a matching policy's approval "
        "rule or another approval step names, or senior-engineers when none names any (never anyone).",
    )


class StepAnalysis(SpecModel):
    metrics: list[str] = Field(
        default_factory=list,
        description="Names of metrics from spec.analysis.metrics to run in this step; empty means all.",
    )
    duration: Duration = Field(
        default=60.0, description="How long the step measures; every measurement must pass."
    )


class Step(SpecModel):
    """Exactly one of setWeight, pause, approval or analysis."""

    set_weight: int | None = Field(
        default=None, ge=0, le=100, description="Percent of traffic to send to the canary."
    )
    pause: PauseStep | None = Field(default=None, description="Bake at the current weight.")
    approval: ApprovalStep | None = Field(default=None, description="Two-person approval gate.")
    analysis: StepAnalysis | None = Field(default=None, description="Run metrics for a while; must pass.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Step:
        fields = {"set_weight": "setWeight", "pause": "pause", "approval": "approval", "analysis": "analysis"}
        given = [wire for k, wire in fields.items() if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "each step must have exactly one of setWeight, pause, approval, analysis"
                + (f" (got {', '.join(given)})" if given else " (got none)")
            )
        return self

    @property
    def kind(self) -> str:
        if self.set_weight is not None:
            return "setWeight"
        if self.pause is not None:
            return "pause"
        if self.approval is not None:
            return "approval"
        return "analysis"


class CanaryStrategy(SpecModel):
    steps: list[Step] = Field(
        min_length=1, max_length=100, description="Ordered steps; promotion follows the last step."
    )
    weight_tolerance: float = Field(
        default=2.0, ge=0, le=100,
        description="Without a traffic router: percentage points the canary's share of ready pods may differ "
        "from a step's weight and still meet it. A share beyond it is reached by a stable surge (maxSurge) "
        "or the rollout holds (Paused) with a message naming the achievable weight and the fix; a policy's "
        "maxFirstWeight is never exceeded. Ignored with spec.trafficRouting (weights are exact).",
    )
    max_surge: int = Field(
        default=0, ge=0, le=1000,
        description="Without a traffic router: extra stable pods (above spec.replicas) the operator may run "
        "during the canary so that the canary's share meets a step's weight; scaled back at promotion or "
        "rollback.",
    )

    @model_validator(mode="after")
    def _weights_increase(self) -> CanaryStrategy:
        last = 0
        for i, step in enumerate(self.steps):
            if step.set_weight is None:
                continue
            if step.set_weight < last:
                raise ValueError(
                    f"steps[{i}].setWeight {step.set_weight} is lower than an earlier weight {last}; "
                    "weights must not decrease (use an abort to go back)"
                )
            last = step.set_weight
        return self


class Strategy(SpecModel):
    canary: CanaryStrategy = Field(description="Canary plan.")


class MetricSpec(SpecModel):
    """A health check. Fields used depend on `kind`."""

    name: str = Field(max_length=63, pattern=NAME_PATTERN, description="Unique name of the metric.")
    kind: MetricKind = Field(
        description="errorRatio: 5xx share of the canary; orderRateDrop: orders per request of the "
        "canary vs stable and the service's order rate vs before the rollout; query: custom PromQL."
    )
    max_ratio: float | None = Field(
        default=None, ge=0, le=1, description="errorRatio: fail when the canary's 5xx share exceeds this."
    )
    max_increase_over_stable: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="errorRatio: fail when canary 5xx share minus stable's exceeds this.",
    )
    max_drop: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="orderRateDrop: fail when the canary's orders per request are lower than "
        "stable's by more than this fraction (0.2 = 20%).",
    )
    max_baseline_drop: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="orderRateDrop: fail when the service's total order rate is lower than in the "
        "window before the rollout started by more than this fraction.",
    )
    query: str | None = Field(
        default=None,
        max_length=4096,
        description="query: PromQL returning one number. Variables: {{namespace}}, {{service}}, "
        "{{rollout}}, {{track}}, {{revision}}, {{interval}}, {{window}}.",
    )
    min: float | None = Field(default=None, description="query: fail when the value is below this.")
    max: float | None = Field(default=None, description="query: fail when the value is above this.")
    window: Duration | None = Field(
        default=None,
        description="Rate window of this metric's windowed queries (maxBaselineDrop, custom queries; "
        "default: spec.analysis.window). The sequential tests use exact counter differences, no window.",
    )
    mode: MetricMode = Field(
        default="enforce",
        description="enforce: a failing or quiet metric rolls back or holds the canary. observe (shadow): "
        "measured and shown in status and /metrics, but never rolls back, holds or gates a step.",
    )

    @model_validator(mode="after")
    def _fields_for_kind(self) -> MetricSpec:
        if self.kind == "errorRatio" and self.max_ratio is None and self.max_increase_over_stable is None:
            raise ValueError(f"metric {self.name!r}: errorRatio needs maxRatio or maxIncreaseOverStable")
        if self.kind == "orderRateDrop" and self.max_drop is None and self.max_baseline_drop is None:
            raise ValueError(f"metric {self.name!r}: orderRateDrop needs maxDrop or maxBaselineDrop")
        if self.kind == "query":
            if not self.query:
                raise ValueError(f"metric {self.name!r}: kind query needs a `query`")
            if self.min is None and self.max is None:
                raise ValueError(f"metric {self.name!r}: kind query needs `min` or `max`")
            unknown = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", self.query)) - set(QUERY_VARIABLES)
            if unknown:
                raise ValueError(
                    f"metric {self.name!r}: unknown variable(s) {sorted(unknown)} in query; "
                    f"allowed: {', '.join(QUERY_VARIABLES)}"
                )
        return self


class PrometheusRef(SpecModel):
    address: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Prometheus base URL. Default: the policy's, else env CF_PROMETHEUS_URL.",
    )


class AnalysisSpec(SpecModel):
    interval: Duration = Field(
        default=2.0,
        description="How often metrics are measured. Looking often costs no false rollbacks (the tests are "
        "anytime-valid); it only makes detection faster.",
    )
    window: Duration = Field(
        default=60.0, description="Default rate window of the windowed queries (maxBaselineDrop, custom queries)."
    )
    service: str | None = Field(
        default=None,
        description="Value of the `service` label in the app's metrics (default: the Rollout's name).",
    )
    min_requests: int = Field(
        default=20,
        ge=0,
        description="Canary requests the sequential test must have seen before errorRatio or orderRateDrop "
        "can pass; until then the metric is quiet (holds the step, never promotes).",
    )
    quiet_limit: Duration = Field(
        default=300.0,
        description="How long a metric may stay quiet (no canary requests, fewer than minRequests, or no "
        "stable traffic to compare with) before the canary is rolled back. Policies may shorten it.",
    )
    post_promotion_watch: Duration = Field(
        default=0.0,
        description="After promotion, keep judging the service (5xx share and order rate vs before the "
        "rollout) this long; on failure stable is rolled back to the previous revision. 0: no watch.",
    )
    failure_limit: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Consecutive failing measurements of a threshold check (maxBaselineDrop, custom "
        "queries) that trigger a rollback. A sequential test that rejects rolls back at once.",
    )
    inconclusive_limit: int = Field(
        default=6,
        ge=1,
        le=1000,
        description="Consecutive inconclusive measurements (a custom query or the baseline check without "
        "data) that trigger a rollback. Inconclusive measurements never let a rollout advance.",
    )
    error_limit: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Consecutive measurements with Prometheus unreachable that trigger a rollback.",
    )
    prometheus: PrometheusRef = Field(default_factory=PrometheusRef, description="Where to query.")
    metrics: list[MetricSpec] = Field(default_factory=list, max_length=20, description="Health checks.")

    @field_validator("metrics")
    @classmethod
    def _unique_names(cls, metrics: list[MetricSpec]) -> list[MetricSpec]:
        names = [m.name for m in metrics]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"metric names must be unique; repeated: {', '.join(dupes)}")
        return metrics


class ServiceSpec(SpecModel):
    name: str = Field(max_length=63, pattern=NAME_PATTERN, description="Service to create if missing.")
    port: int = Field(default=80, ge=1, le=65535, description="Service port.")
    target_port: int = Field(default=8080, ge=1, le=65535, description="Container port.")


class GatewayAPIRouting(SpecModel):
    http_route: str = Field(
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="Name of an HTTPRoute (gateway.networking.k8s.io/v1) in the Rollout's namespace. The "
        "operator sets the weights of the backendRefs to Services <rollout>-stable and <rollout>-canary in "
        "every rule that references <rollout>-stable (adding the canary backendRef if missing), to the step's "
        "weight exactly; other rules and backends are left untouched.",
    )


class TrafficRouting(SpecModel):
    gateway_api: GatewayAPIRouting | None = Field(
        default=None,
        alias="gatewayAPI",
        description="Route traffic with a Gateway API HTTPRoute: exact weights with any replica count.",
    )


class RolloutSpec(SpecModel):
    replicas: int = Field(default=1, ge=0, le=1000, description="Replicas of the stable version.")
    selector: LabelSelector = Field(description="Selects the app's pods; must match the template labels.")
    template: dict[str, Any] = Field(
        description="An ordinary pod template (metadata + spec), as in a Deployment.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True, "type": "object"},
    )
    service: ServiceSpec | None = Field(default=None, description="Service fronting both tracks.")
    traffic_routing: TrafficRouting | None = Field(
        default=None,
        description="A traffic router that sets the canary's share exactly. Without one, the weight is "
        "realised by replica counts next to a full stable.",
    )
    strategy: Strategy = Field(description="How a new revision is rolled out.")
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec, description="Metrics that guard the rollout.")

    @model_validator(mode="after")
    def _template_is_usable(self) -> RolloutSpec:
        spec = self.template.get("spec")
        if not isinstance(spec, dict) or not spec.get("containers"):
            raise ValueError("template.spec.containers must list at least one container")
        # The template is free-form in the schema, so its shape is checked here (a crash would leave
        # the Rollout neither refused nor marked Invalid).
        meta = self.template.get("metadata")
        labels = meta.get("labels") if isinstance(meta, dict) else None
        if (meta is not None and not isinstance(meta, dict)) or (labels is not None and not isinstance(labels, dict)):
            raise ValueError("template.metadata.labels must be a map of label names to values")
        labels = labels or {}
        if not self.selector.match_labels and not self.selector.match_expressions:
            raise ValueError("selector must have matchLabels or matchExpressions")
        if not self.selector.matches(labels):
            raise ValueError("selector does not match template.metadata.labels; pods would be orphaned")
        return self


# ---------------------------------------------------------------- status

Phase = Literal[
    "Pending", "Progressing", "Paused", "AwaitingApproval", "Promoting", "Healthy", "RolledBack", "Invalid"
]
Verdict = Literal["pass", "fail", "quiet", "inconclusive", "error"]


class AddedBy(StatusModel):
    policy: str = Field(description="FrictionPolicy that added or changed the step.")
    rule: str = Field(description="The policy rule that asked for it, e.g. minBake or aiAssisted.approvals.")


class PlannedApproval(StatusModel):
    count: int = Field(description="Distinct verified approvals this requirement needs.")
    groups: list[str] = Field(
        default_factory=list,
        description="Groups whose members may approve; empty means senior-engineers (never anyone).",
    )
    source: str = Field(default="rollout", description="`rollout` or the policy name.")


class PlannedStep(StatusModel):
    """One step of the effective plan, with who put it there."""

    kind: Literal["setWeight", "pause", "approval", "analysis"] = Field(description="What the step does.")
    set_weight: int | None = Field(default=None, description="setWeight: percent of traffic for the canary.")
    pause_seconds: float | None = Field(
        default=None, description="pause: seconds to bake; absent means wait for a `promote` action."
    )
    approvals: list[PlannedApproval] = Field(
        default_factory=list, description="approval: requirements that must all hold at this gate."
    )
    metrics: list[str] = Field(
        default_factory=list, description="analysis: metrics measured in this step; empty means all."
    )
    analysis_seconds: float | None = Field(default=None, description="analysis: seconds the step measures.")
    added_by: list[AddedBy] = Field(
        default_factory=list, description="Policy rules that added or changed this step; empty if the Rollout's own."
    )


class EffectivePlan(StatusModel):
    steps: list[PlannedStep] = Field(
        default_factory=list,
        description="The steps the operator follows: the Rollout's own, made stricter by policies.",
    )
    policies: list[str] = Field(default_factory=list, description="FrictionPolicies that match this Rollout.")
    metrics: list[MetricSpec] = Field(
        default_factory=list, description="Metrics analysed: the Rollout's plus those policies require."
    )
    metric_sources: dict[str, list[str]] = Field(
        default_factory=dict, description="Metric name -> who asked for it: `rollout` and/or policy names."
    )
    analysis_interval_seconds: float | None = Field(
        default=None, description="min(spec.analysis.interval, every policy's maxAnalysisInterval)."
    )
    quiet_limit_seconds: float | None = Field(
        default=None, description="min(spec.analysis.quietLimit, every policy's maxQuiet)."
    )
    post_promotion_watch_seconds: float | None = Field(
        default=None, description="max(spec.analysis.postPromotionWatch, every policy's postPromotionWatch)."
    )
    approval_expiry_seconds: float | None = Field(
        default=None, description="Approvals older than this many seconds no longer count (shortest policy expiry)."
    )
    ai_assisted: bool = Field(
        default=False, description="The change is AI-assisted, so the policies' aiAssisted rules apply."
    )
    frozen_reason: str | None = Field(
        default=None, description="The freeze window holding the rollout, if one is in force."
    )


class Measurement(StatusModel):
    metric: str = Field(description="Name of the metric measured.")
    verdict: Verdict = Field(
        description="pass, fail, quiet (too few canary requests to judge: holds, quietLimit rolls back), "
        "inconclusive (no data) or error (Prometheus unreachable)."
    )
    value: float | None = Field(default=None, description="The measured value, if any.")
    bound: str | None = Field(default=None, description="The bound it was checked against, e.g. ≤ 0.05.")
    message: str = Field(default="", description="Explanation of the verdict.")
    time: datetime | None = Field(default=None, description="When it was measured.")
    decisive: bool = Field(
        default=False, description="The sequential test rejected 'healthy': rolls back at once (no failureLimit)."
    )
    evidence: float | None = Field(
        default=None, description="Sequential test: evidence (e-value) against 'healthy' so far."
    )
    threshold: float | None = Field(
        default=None, description="Sequential test: the evidence that rolls back, 1/alpha."
    )
    canary_requests: float | None = Field(
        default=None, description="Sequential test: canary requests the test has seen (achieved sample size)."
    )
    needed_requests: float | None = Field(
        default=None,
        description="Sequential test: about how many canary requests it needs to catch its design effect "
        "(twice as far from healthy as the bound allows).",
    )


class CounterTotals(StatusModel):
    """Cumulative counters of one look, so the next look can take exact differences."""

    canary_requests: float | None = Field(default=None, description="Canary revision's requests counter.")
    canary_events: float | None = Field(default=None, description="Canary's 5xx (errorRatio) or orders counter.")
    stable_requests: float | None = Field(default=None, description="Stable track's requests counter.")
    stable_events: float | None = Field(default=None, description="Stable's 5xx or orders counter.")


class RestartedTest(StatusModel):
    """A sequential test started later in the canary (the j-th restart), so a fault that appears after
    a long healthy stretch is not held back by the evidence that stretch gave for "healthy"."""

    index: int = Field(description="j: its weight in the combined evidence is restartBudget * 6/(pi^2 j^2).")
    test: SequentialState = Field(description="The test, started at look `index` x the restart period.")


class MetricState(StatusModel):
    metric: str = Field(description="Name of the metric.")
    mode: MetricMode = Field(default="enforce", description="enforce, or observe (shadow: never rolls back).")
    consecutive_failures: int = Field(default=0, description="Failing measurements in a row (failureLimit rolls back).")
    consecutive_inconclusive: int = Field(
        default=0, description="Inconclusive measurements in a row (inconclusiveLimit rolls back)."
    )
    consecutive_errors: int = Field(
        default=0, description="Measurements in a row with Prometheus unreachable (errorLimit rolls back)."
    )
    passes_in_step: int = Field(default=0, description="Passing measurements since the current step began.")
    last: Measurement | None = Field(default=None, description="The latest measurement.")
    baseline: float | None = Field(
        default=None, description="orderRateDrop: the service's order rate (per second) before the rollout."
    )
    baseline_known: bool = Field(
        default=False, description="Whether the pre-rollout baseline was measured (it may be absent: no orders)."
    )
    quiet_since: datetime | None = Field(
        default=None, description="Since when the metric has been quiet without a break (quietLimit rolls back)."
    )
    totals: CounterTotals | None = Field(
        default=None, description="The cumulative counters at the latest look (the next look's starting point)."
    )
    sequential: SequentialState | None = Field(
        default=None, description="The anytime-valid test of this metric for the canary revision."
    )
    restarts: list[RestartedTest] = Field(
        default_factory=list, description="The latest restarted tests (their evidence adds to the main test's)."
    )


class AnalysisState(StatusModel):
    last_run_at: datetime | None = Field(
        default=None, description="The instant the last measurement is of (an instant of the analysis grid).")
    metrics: list[MetricState] = Field(default_factory=list, description="Per-metric counters and last measurement.")


class PostPromotionWatch(StatusModel):
    """After a promotion: the service is still judged until `until`; a failure rolls stable back."""

    revision: str = Field(description="The promoted revision being watched.")
    since: datetime = Field(description="When the watch started (the promotion).")
    until: datetime = Field(description="When the watch ends if nothing failed.")
    analysis: AnalysisState = Field(
        default_factory=AnalysisState, description="The watch's own measurements (5xx ceiling, order rate vs before)."
    )


class CountedApproval(StatusModel):
    user: str = Field(description="Verified username of the approver.")
    time: datetime = Field(description="When the approval was given.")


class HistoryEntry(StatusModel):
    revision: str = Field(description="The canary revision this entry is about.")
    outcome: Literal["Promoted", "RolledBack", "Aborted", "Superseded"] = Field(
        description="How the revision's rollout ended."
    )
    at: datetime = Field(description="When it ended.")
    reason: str = Field(default="", description="Why, e.g. the failing metric and its value.")
    approvers: list[str] = Field(default_factory=list, description="Users whose approvals counted.")
    author: str | None = Field(default=None, description="Who made the template change.")
    change_record: str | None = Field(
        default=None, description="The change record (controlled-friction.io/change-record) the revision carried."
    )


class Condition(StatusModel):
    type: str = Field(description="Healthy, Progressing, RolledBack or Valid.")
    status: Literal["True", "False", "Unknown"] = Field(description="Whether the condition holds.")
    reason: str = Field(default="", description="Machine-readable reason (the phase).")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: datetime | None = Field(default=None, description="When the status last changed.")


class RolloutStatus(StatusModel):
    phase: Phase = Field(
        default="Pending",
        description="Pending, Progressing, Paused, AwaitingApproval, Promoting, Healthy, RolledBack or Invalid.",
    )
    message: str = Field(default="", description="Why the rollout is where it is, for people.")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation of the spec this status was computed from."
    )
    stable_revision: str | None = Field(
        default=None, description="Revision (hash of spec.template) run by the stable Deployment."
    )
    canary_revision: str | None = Field(
        default=None, description="Revision run by the canary Deployment while a rollout is under way."
    )
    replicas: int | None = Field(
        default=None,
        description="Pods of the Rollout's selector (scale subresource statusReplicasPath, read by "
        "`kubectl scale` and HorizontalPodAutoscalers).",
    )
    selector: str | None = Field(
        default=None,
        description="The Rollout's pod selector as a label-selector string (scale subresource "
        "labelSelectorPath; an HPA uses it to find the pods).",
    )
    canary_weight: int = Field(default=0, description="Weight of the current step, once in force.")
    effective_weight: float = Field(
        default=0.0,
        description="The canary's share of traffic, percent: of the HTTPRoute rule's weights with a traffic "
        "router, else of ready pods.",
    )
    route_weight: int | None = Field(
        default=None,
        description="Canary weight set on the HTTPRoute (spec.trafficRouting), as last read back; absent "
        "without a router, or while the route is missing or its rules disagree.",
    )
    current_step_index: int = Field(default=0, description="Index of the current step in effectivePlan.steps.")
    step_started_at: datetime | None = Field(default=None, description="When the current step began.")
    rollout_started_at: datetime | None = Field(
        default=None, description="When the canary revision started; the end of the pre-rollout baseline window."
    )
    approvals: list[CountedApproval] = Field(
        default_factory=list, description="Verified approvals counted for the canary revision."
    )
    approvals_summary: str = Field(default="-", description="Counted/required approvals, e.g. 1/2.")
    stable_template: dict[str, Any] | None = Field(
        default=None,
        description="Pod template of the stable revision, so stable can be restored after an edit behind "
        "the operator's back (drift) or rolled back to after a promotion.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True, "type": "object"},
    )
    aborted_revision: str | None = Field(
        default=None, description="Revision rolled back or aborted; it stays at weight 0 until a `retry` action."
    )
    previous_stable_revision: str | None = Field(
        default=None, description="The stable revision before the last promotion (a post-promotion rollback target)."
    )
    previous_stable_template: dict[str, Any] | None = Field(
        default=None,
        description="Pod template of previousStableRevision, so a post-promotion rollback survives a restart.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True, "type": "object"},
    )
    watch: PostPromotionWatch | None = Field(
        default=None, description="The post-promotion watch in progress, if any."
    )
    effective_plan: EffectivePlan | None = Field(
        default=None, description="The plan in force: spec.strategy made stricter by matching policies."
    )
    analysis: AnalysisState = Field(default_factory=AnalysisState, description="State of the metric analysis.")
    history: list[HistoryEntry] = Field(default_factory=list, description="How earlier revisions ended, oldest first.")
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions derived from the phase.")


class RolloutObject(StatusModel):
    """A whole Rollout as read from the API (spec validated separately so bad specs surface as Invalid)."""

    metadata: dict[str, Any]
    spec: dict[str, Any] = Field(default_factory=dict)
    status: dict[str, Any] = Field(default_factory=dict)
