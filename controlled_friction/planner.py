"""The pure planner: spec + status + observations + now -> new status and actions.

Every rollout decision is taken here and nowhere else. The planner does no I/O and reads no clock,
so the shell (kopf handlers) can be restarted at any moment: everything needed to resume (step
index, bake start, analysis counters, approvals counted, aborted revision) is in the status it
returns. Actions are declarative ("the canary has N replicas of revision R"), so re-applying them
after a crash is harmless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, NamedTuple

from controlled_friction import names
from controlled_friction.analysis import query_problems
from controlled_friction.effective_plan import (
    active_freeze,
    compute_effective_plan,
    is_ai_assisted,
    matching_policies,
)
from controlled_friction.models.approval import ApprovalEntry
from controlled_friction.models.policy import NamedPolicy, PolicySelector
from controlled_friction.models.rollout import (
    AnalysisState,
    Condition,
    CountedApproval,
    EffectivePlan,
    HistoryEntry,
    Measurement,
    MetricSpec,
    MetricState,
    Phase,
    PlannedApproval,
    PlannedStep,
    RolloutSpec,
    RolloutStatus,
)
from controlled_friction.revision import revision_of

HISTORY_LIMIT = 20
CLOCK_SKEW = timedelta(minutes=5)
ACTIONS = ("promote", "abort", "retry")
UNVERIFIED_AUTHOR = (
    "the author of revision {revision} was not recorded by the admission webhook (the template changed "
    "while it was bypassed, or the author annotations were edited); change spec.template again with the "
    "webhook running"
)

# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class DeploymentObs:
    """What the shell saw of one of the operator's Deployments."""

    revision: str | None
    replicas: int
    ready_replicas: int = 0
    available_replicas: int = 0
    updated_replicas: int = 0
    up_to_date: bool = True  # status.observedGeneration >= metadata.generation

    def serving(self, replicas: int) -> bool:
        return (
            self.up_to_date
            and self.replicas == replicas
            and self.updated_replicas >= replicas
            and self.ready_replicas >= replicas
            and self.available_replicas >= replicas
        )


@dataclass(frozen=True)
class ApprovalObs:
    entry: ApprovalEntry
    signature_ok: bool


class InvalidPolicy(NamedTuple):
    """A FrictionPolicy that failed validation; `selector` is None when it is what cannot be read."""

    name: str
    selector: PolicySelector | None
    message: str


def policy_hold(invalid_policies: tuple[InvalidPolicy, ...], labels: dict[str, str],
                namespace_labels: dict[str, str]) -> str | None:
    """Why invalid policies hold a rollout, if they do: one whose selector matches it, or cannot be
    read, holds it (fail closed: a typo in a policy never drops its friction)."""
    held = [f"policy {p.name} is invalid ({p.message})" for p in invalid_policies
            if p.selector is None or p.selector.matches(labels, namespace_labels)]
    return "; ".join(held) + " — held until the policy is fixed" if held else None


@dataclass(frozen=True)
class Observations:
    stable: DeploymentObs | None = None
    canary: DeploymentObs | None = None
    service_exists: bool = True
    namespace_labels: dict[str, str] = field(default_factory=dict)
    policies: tuple[NamedPolicy, ...] = ()
    invalid_policies: tuple[InvalidPolicy, ...] = ()
    approvals: tuple[ApprovalObs, ...] = ()
    approval_problems: tuple[str, ...] = ()
    # Whether `author` carries the webhook's signature for this rollout and revision. The shell always
    # sets it; without a verified author nobody can be excluded, so no approval counts.
    author_verified: bool = True
    measurements: tuple[Measurement, ...] = ()
    # Why the API server refuses the Deployment this revision needs (a server-side dry run said so).
    workload_rejected: str | None = None


@dataclass(frozen=True)
class RolloutInput:
    namespace: str
    name: str
    generation: int
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: RolloutSpec
    status: RolloutStatus
    obs: Observations
    now: datetime


# ---------------------------------------------------------------- outputs

Track = Literal["stable", "canary"]


@dataclass(frozen=True)
class ApplyDeployment:
    """Create or update `<rollout>-<track>` with this template, revision and replica count."""

    track: Track
    revision: str
    template: dict[str, object]
    replicas: int


@dataclass(frozen=True)
class ScaleDeployment:
    track: Track
    replicas: int


@dataclass(frozen=True)
class EnsureService:
    name: str
    port: int
    target_port: int
    selector: dict[str, str]


@dataclass(frozen=True)
class RecordEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class ClearAction:
    """Remove the one-shot `action` annotation whose value was handled."""

    value: str


Action = ApplyDeployment | ScaleDeployment | EnsureService | RecordEvent | ClearAction


@dataclass(frozen=True)
class Decision:
    status: RolloutStatus
    actions: tuple[Action, ...]

    def events(self) -> list[RecordEvent]:
        return [a for a in self.actions if isinstance(a, RecordEvent)]


# ---------------------------------------------------------------- pure helpers


def canary_replicas(replicas: int, weight: int) -> int:
    """Replicas that realise `weight` next to a full stable without a traffic router.

    The effective weight is canary / (canary + stable) ready pods, so canary = stable * w / (100 - w),
    at least 1 pod for any weight > 0 and at most `replicas` (weights above 50% are served as 50%
    until promotion).
    """
    if weight <= 0:
        return 0
    if weight >= 100:
        return max(replicas, 1)
    return max(1, min(max(replicas, 1), round(replicas * weight / (100 - weight))))


def effective_weight(stable: DeploymentObs | None, canary: DeploymentObs | None) -> float:
    s = stable.ready_replicas if stable else 0
    c = canary.ready_replicas if canary else 0
    return round(100.0 * c / (s + c), 1) if s + c else 0.0


def analysis_interval(spec: RolloutSpec, plan: EffectivePlan | None) -> float:
    interval = spec.analysis.interval
    if plan is not None and plan.analysis_interval_seconds:
        interval = min(interval, plan.analysis_interval_seconds)
    return max(interval, 1.0)


def due_metrics(spec: RolloutSpec, status: RolloutStatus, now: datetime) -> list[MetricSpec]:
    """Metrics the shell must measure this tick (empty when the canary gets no traffic or not yet due)."""
    plan = status.effective_plan
    if plan is None or not plan.metrics or status.canary_revision is None:
        return []
    if status.phase not in ("Progressing", "Paused", "AwaitingApproval") or status.canary_weight <= 0:
        return []
    last = status.analysis.last_run_at
    if last is not None and (now - last).total_seconds() < analysis_interval(spec, plan) - 0.05:
        return []
    return list(plan.metrics)


def record_measurements(state: AnalysisState, measurements: tuple[Measurement, ...], now: datetime) -> AnalysisState:
    """Fold this tick's measurements into the per-metric consecutive counters."""
    if not measurements:
        return state
    by_name = {m.metric: m.model_copy() for m in state.metrics}
    for meas in measurements:
        cur = by_name.get(meas.metric) or MetricState(metric=meas.metric)
        if meas.verdict == "pass":
            cur.consecutive_failures = cur.consecutive_inconclusive = cur.consecutive_errors = 0
            cur.passes_in_step += 1
        elif meas.verdict == "fail":
            cur.consecutive_failures += 1
            cur.consecutive_inconclusive = cur.consecutive_errors = 0
        elif meas.verdict == "inconclusive":
            cur.consecutive_inconclusive += 1
            cur.consecutive_errors = 0
        else:
            cur.consecutive_errors += 1
        cur.last = meas
        by_name[meas.metric] = cur
    return AnalysisState(last_run_at=now, metrics=sorted(by_name.values(), key=lambda m: m.metric))


@dataclass(frozen=True)
class ApprovalCount:
    counted: list[CountedApproval]
    met: bool
    summary: str
    missing: str


def count_approvals(
    requirements: list[PlannedApproval],
    approvals: tuple[ApprovalObs, ...],
    *,
    rollout_key: str,
    revision: str,
    barred: set[str],
    expiry_seconds: float | None,
    now: datetime,
) -> ApprovalCount:
    """Verified, unexpired, distinct, non-author approvals of this revision, checked per requirement."""
    valid: dict[str, ApprovalEntry] = {}
    for obs in approvals:
        e = obs.entry
        if not obs.signature_ok or e.revision != revision or e.rollout != rollout_key:
            continue
        if e.user in barred or e.time > now + CLOCK_SKEW:
            continue
        if expiry_seconds is not None and (now - e.time).total_seconds() > expiry_seconds:
            continue
        if e.user not in valid or e.time < valid[e.user].time:
            valid[e.user] = e
    # Counted: approvals that satisfy at least one requirement (all verified ones when none has groups).
    eligible = {
        u: e for u, e in valid.items()
        if not requirements or any(not r.groups or set(r.groups) & set(e.groups) for r in requirements)
    }
    counted = [CountedApproval(user=u, time=e.time) for u, e in sorted(eligible.items())]
    missing = []
    for req in requirements:
        ok = [u for u, e in valid.items() if not req.groups or set(req.groups) & set(e.groups)]
        if len(ok) < req.count:
            groups = ", ".join(req.groups) or "any group"
            missing.append(f"{req.count - len(ok)} more from {groups} (required by {req.source})")
    need = max((r.count for r in requirements), default=0)
    summary = f"{len(counted)}/{need}" if need else "-"
    return ApprovalCount(counted, not missing, summary, "; ".join(missing))


def invalid(status: RolloutStatus, message: str, generation: int, now: datetime, *, what: str = "spec") -> Decision:
    """A rollout that cannot be acted on: say why, touch no workload."""
    new = status.model_copy(deep=True)
    actions: list[Action] = []
    text = f"invalid {what}: {message}"
    if new.phase != "Invalid" or new.message != text:
        actions.append(RecordEvent("Warning", "InvalidSpec" if what == "spec" else "InvalidPolicy", text))
    new.phase = "Invalid"
    new.message = text
    new.observed_generation = generation
    _set_conditions(new, now)
    return Decision(new, tuple(actions))


def spec_problems(spec: RolloutSpec) -> list[str]:
    """Rules the schema cannot express that pydantic did not already enforce."""
    return query_problems(spec.analysis.metrics, "spec.analysis.metrics") + step_metric_problems(spec)


def step_metric_problems(spec: RolloutSpec) -> list[str]:
    """Analysis steps naming metrics the Rollout does not declare (admission refuses them too)."""
    problems = []
    known = {m.name for m in spec.analysis.metrics}
    for i, step in enumerate(spec.strategy.canary.steps):
        if step.analysis is not None:
            unknown = [n for n in step.analysis.metrics if n not in known]
            if unknown:
                problems.append(
                    f"spec.strategy.canary.steps[{i}].analysis.metrics: unknown metric(s) {unknown}; "
                    "declare them in spec.analysis.metrics"
                )
    return problems


# ---------------------------------------------------------------- the planner


def name_problems(name: str) -> list[str]:
    """The Rollout's name becomes a label value on its pods, so it must fit one."""
    if len(name) > 63:
        return [f"metadata.name: at most 63 characters, as it becomes the value of the {names.LABEL_ROLLOUT} "
                f"label of the pods ({len(name)} given); choose a shorter name"]
    return []


def plan(inp: RolloutInput) -> Decision:
    held = policy_hold(inp.obs.invalid_policies, inp.labels, inp.obs.namespace_labels)
    if held:
        return invalid(inp.status, held, inp.generation, inp.now, what="policy")
    problems = spec_problems(inp.spec) + name_problems(inp.name)
    if inp.obs.workload_rejected:
        problems.append(f"spec.template: the API server refuses the Deployment made from it: "
                        f"{inp.obs.workload_rejected}")
    if problems:
        return invalid(inp.status, "; ".join(problems), inp.generation, inp.now)
    return _Planner(inp).run()


class _Planner:
    def __init__(self, inp: RolloutInput) -> None:
        self.inp = inp
        self.spec = inp.spec
        self.obs = inp.obs
        self.now = inp.now
        self.st = inp.status.model_copy(deep=True)
        self.before_phase: Phase = inp.status.phase
        self.actions: list[Action] = []
        self.revision = revision_of(inp.spec.template)
        self.action = self._take_action()

    # -- plumbing

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.actions.append(RecordEvent(type_, reason, message))

    def set_phase(self, phase: Phase, message: str) -> None:
        self.st.phase = phase
        self.st.message = message

    def _take_action(self) -> str | None:
        raw = self.inp.annotations.get(names.ANN_ACTION)
        if raw is None:
            return None
        self.actions.append(ClearAction(raw))
        value = raw.strip().lower()
        if value not in ACTIONS:
            self.event("Warning", "UnknownAction", f"ignored action {raw!r}; use one of {', '.join(ACTIONS)}")
            return None
        return value

    def _history(self, revision: str, outcome: str, reason: str, approvers: list[str] | None = None) -> None:
        entry = HistoryEntry.model_validate(
            {
                "revision": revision,
                "outcome": outcome,
                "at": self.now,
                "reason": reason,
                "approvers": approvers or [],
                "author": self.inp.annotations.get(names.ANN_AUTHOR),
            }
        )
        self.st.history = [*self.st.history, entry][-HISTORY_LIMIT:]

    def finish(self) -> Decision:
        unique: list[Action] = []
        for a in self.actions:  # several branches may ask for the same scale; send it once
            if a not in unique:
                unique.append(a)
        self.actions = unique
        self.st.observed_generation = self.inp.generation
        self.st.effective_weight = effective_weight(self.obs.stable, self.obs.canary)
        if self.st.phase != self.before_phase:
            kind: Literal["Normal", "Warning"] = (
                "Warning" if self.st.phase in ("RolledBack", "Invalid") else "Normal"
            )
            self.event(kind, self.st.phase, self.st.message)
        _set_conditions(self.st, self.now)
        return Decision(self.st, tuple(self.actions))

    # -- workloads

    def _ensure_service(self) -> None:
        svc = self.spec.service
        if svc is not None and not self.obs.service_exists:
            self.actions.append(
                EnsureService(svc.name, svc.port, svc.target_port, dict(self.spec.selector.match_labels))
            )

    def _scale_canary_to_zero(self) -> None:
        if self.obs.canary is not None and self.obs.canary.replicas != 0:
            self.actions.append(ScaleDeployment("canary", 0))

    def _ensure_stable_replicas(self) -> None:
        if self.obs.stable is not None and self.obs.stable.replicas != self.spec.replicas:
            self.actions.append(ScaleDeployment("stable", self.spec.replicas))

    # -- main flow

    def run(self) -> Decision:
        self._ensure_service()
        st = self.st
        if st.stable_revision is None:
            if self.obs.stable is not None and self.obs.stable.revision:
                st.stable_revision = self.obs.stable.revision  # status was lost: adopt what runs
            else:
                # The first revision ever goes straight to stable: there is nothing to compare with.
                self.actions.append(ApplyDeployment("stable", self.revision, self.spec.template, self.spec.replicas))
                st.stable_revision = self.revision
                self.event("Normal", "StableCreated", f"first revision {self.revision} deployed as stable")
        if self.revision == st.stable_revision:
            return self._steady()
        return self._canary()

    def _steady(self) -> Decision:
        st = self.st
        if st.canary_revision and st.phase not in ("Healthy", "RolledBack"):
            self._history(st.canary_revision, "Superseded", "template reverted to the stable revision")
            self.event("Normal", "CanaryAbandoned", f"template is back to stable {st.stable_revision}")
        self._scale_canary_to_zero()
        stable = self.obs.stable
        if stable is None and not any(isinstance(a, ApplyDeployment) for a in self.actions):
            # Template equals the stable revision, so recreating stable from it is exact.
            self.actions.append(ApplyDeployment("stable", self.revision, self.spec.template, self.spec.replicas))
        self._ensure_stable_replicas()
        st.canary_revision = None
        st.canary_weight = 0
        st.current_step_index = 0
        st.step_started_at = None
        st.approvals = []
        st.approvals_summary = "-"
        if stable is not None and stable.serving(self.spec.replicas):
            self.set_phase("Healthy", f"stable {st.stable_revision} serves all traffic")
        else:
            self.set_phase("Progressing", f"waiting for stable {st.stable_revision} to become available")
        return self.finish()

    def _start_canary(self, reason: str) -> None:
        st, inp = self.st, self.inp
        if st.canary_revision and st.canary_revision != self.revision and st.phase not in ("Healthy", "RolledBack"):
            self._history(st.canary_revision, "Superseded", f"replaced by {self.revision}")
        matching = sorted(
            matching_policies(list(self.obs.policies), inp.labels, self.obs.namespace_labels),
            key=lambda p: p.name,
        )
        st.effective_plan = compute_effective_plan(self.spec, matching, is_ai_assisted(inp.annotations))
        st.canary_revision = self.revision
        st.current_step_index = 0
        st.step_started_at = self.now
        st.rollout_started_at = self.now
        st.canary_weight = 0
        st.analysis = AnalysisState()
        st.approvals = []
        st.approvals_summary = "-"
        policies = ", ".join(st.effective_plan.policies) or "none"
        self.event(
            "Normal",
            "CanaryStarted",
            f"{reason}: revision {self.revision}, {len(st.effective_plan.steps)} steps, policies: {policies}",
        )

    def _rollback(self, reason: str, message: str) -> Decision:
        st = self.st
        self._scale_canary_to_zero()
        self._ensure_stable_replicas()
        st.aborted_revision = self.revision
        st.canary_weight = 0
        self._history(self.revision, "Aborted" if reason == "Aborted" else "RolledBack", message)
        self.event("Warning", "RollbackTriggered", f"revision {self.revision}: {message}")
        self.set_phase("RolledBack", f"rolled back {self.revision}: {message}")
        return self.finish()

    def _canary(self) -> Decision:
        st = self.st
        if st.canary_revision != self.revision:
            if self.revision == st.aborted_revision and self.action != "retry":
                st.canary_revision = self.revision
            else:
                self._start_canary("new template")
        if self.revision == st.aborted_revision:
            if self.action != "retry":
                self._scale_canary_to_zero()
                self._ensure_stable_replicas()
                st.canary_weight = 0
                if st.phase != "RolledBack":
                    self.set_phase("RolledBack", f"revision {self.revision} was rolled back; change the "
                                   "template or use the retry action")
                return self.finish()
            st.aborted_revision = None
            self._start_canary("retry")
        elif self.action == "retry":
            self.event("Normal", "ActionIgnored", "retry ignored: the current revision was not rolled back")
        assert st.effective_plan is not None

        promoting = self.obs.stable is not None and self.obs.stable.revision == self.revision
        if self.action == "abort":
            if promoting:
                self.event("Warning", "ActionIgnored", "abort ignored: promotion has already started")
            else:
                return self._rollback("Aborted", "aborted by the abort action")

        st.analysis = record_measurements(st.analysis, self.obs.measurements, self.now)
        if not promoting:
            verdict = self._analysis_rollback_reason()
            if verdict:
                return self._rollback("Analysis", verdict)
        self._report_approval_problems()
        self._walk(promoting)
        return self.finish()

    def _analysis_rollback_reason(self) -> str | None:
        a = self.spec.analysis
        for ms in self.st.analysis.metrics:
            last = ms.last
            detail = f"{last.message} (value {last.value}, bound {last.bound})" if last else ""
            if ms.consecutive_failures >= a.failure_limit:
                return f"metric {ms.metric} failed {ms.consecutive_failures}x: {detail}"
            if ms.consecutive_errors >= a.error_limit:
                return f"metric {ms.metric}: Prometheus unavailable for {ms.consecutive_errors} measurements"
            if ms.consecutive_inconclusive >= a.inconclusive_limit:
                return f"metric {ms.metric}: inconclusive {ms.consecutive_inconclusive}x in a row: {detail}"
        return None

    def _analysis_ok(self, names_: list[str] | None = None, in_step: bool = False) -> tuple[bool, str]:
        plan = self.st.effective_plan
        assert plan is not None
        wanted = [m.name for m in plan.metrics if names_ is None or not names_ or m.name in names_]
        states = {m.metric: m for m in self.st.analysis.metrics}
        for name in wanted:
            ms = states.get(name)
            if ms is None or ms.last is None:
                return False, f"waiting for a first measurement of {name}"
            if ms.last.verdict != "pass":
                return False, f"{name} is {ms.last.verdict}: {ms.last.message}"
            if in_step and ms.passes_in_step < 1:
                return False, f"waiting for a passing measurement of {name} in this step"
        return True, ""

    def _report_approval_problems(self) -> None:
        bad = [o.entry.user for o in self.obs.approvals if not o.signature_ok]
        if bad:
            self.event(
                "Warning",
                "ApprovalIgnored",
                f"ignored approvals with no valid signature (not recorded by the admission webhook): "
                f"{', '.join(sorted(set(bad)))}",
            )
        for p in self.obs.approval_problems:
            self.event("Warning", "ApprovalIgnored", p)
        plan = self.st.effective_plan
        if not self.obs.author_verified and plan is not None and any(s.kind == "approval" for s in plan.steps):
            why = UNVERIFIED_AUTHOR.format(revision=self.revision)
            self.event("Warning", "AuthorNotVerified", f"no approval counts: {why}")
        if names.ANN_APPROVE in self.inp.annotations:
            self.event(
                "Warning",
                "ApprovalNotVerified",
                "the approve annotation is still on the Rollout: the admission webhook did not record it, "
                "so it does not count",
            )

    def _count(self, step: PlannedStep) -> ApprovalCount:
        plan = self.st.effective_plan
        assert plan is not None
        ann = self.inp.annotations
        if not self.obs.author_verified:
            need = max((r.count for r in step.approvals), default=0)
            why = UNVERIFIED_AUTHOR.format(revision=self.revision)
            return ApprovalCount([], False, f"0/{need}", f"a verified author before any approval counts: {why}")
        barred = {u for u in (ann.get(names.ANN_AUTHOR), ann.get(names.ANN_CHANGE_AUTHOR)) if u}
        return count_approvals(
            step.approvals,
            self.obs.approvals,
            rollout_key=f"{self.inp.namespace}/{self.inp.name}",
            revision=self.revision,
            barred=barred,
            expiry_seconds=plan.approval_expiry_seconds,
            now=self.now,
        )

    def _update_approval_status(self) -> None:
        plan = self.st.effective_plan
        assert plan is not None
        gates = [s for s in plan.steps if s.kind == "approval"]
        if not gates:
            self.st.approvals, self.st.approvals_summary = [], "-"
            return
        idx = self.st.current_step_index
        upcoming = [s for s in plan.steps[idx:] if s.kind == "approval"]
        count = self._count(upcoming[0] if upcoming else gates[-1])
        self.st.approvals, self.st.approvals_summary = count.counted, count.summary

    def _advance(self) -> None:
        self.st.current_step_index += 1
        self.st.step_started_at = self.now
        for ms in self.st.analysis.metrics:
            ms.passes_in_step = 0

    def _walk(self, promoting: bool) -> None:
        st, plan = self.st, self.st.effective_plan
        assert plan is not None
        if st.step_started_at is None:  # status written by an older operator: start the step now
            st.step_started_at = self.now
        self._update_approval_status()
        freeze = None if promoting else active_freeze(
            matching_policies(list(self.obs.policies), self.inp.labels, self.obs.namespace_labels), self.now
        )
        promote_used = False
        for _ in range(len(plan.steps) + 1):
            idx = st.current_step_index
            if idx >= len(plan.steps):
                self._promote(promoting, freeze)
                return
            step = plan.steps[idx]
            where = f"step {idx + 1}/{len(plan.steps)}"
            if step.kind == "setWeight":
                weight = step.set_weight or 0
                if freeze:
                    self.set_phase("Paused", f"{where}: held by {freeze}")
                    return
                if not self._canary_at(weight):
                    self.set_phase("Progressing", f"{where}: scaling canary to weight {weight}%")
                    return
                st.canary_weight = weight
            elif step.kind == "pause" and step.pause_seconds is None:
                if self.action == "promote" and not promote_used:
                    promote_used = True
                    self.event("Normal", "Promoted", f"{where}: pause ended by the promote action")
                else:
                    self.set_phase("Paused", f"{where}: paused at {st.canary_weight}%; use the promote action")
                    return
            elif step.kind == "pause":
                assert st.step_started_at is not None and step.pause_seconds is not None
                left = step.pause_seconds - (self.now - st.step_started_at).total_seconds()
                if left > 0:
                    self.set_phase("Progressing", f"{where}: baking at {st.canary_weight}%, {math.ceil(left)}s left")
                    return
                ok, why = self._analysis_ok()
                if not ok:
                    self.set_phase("Progressing", f"{where}: bake done, holding: {why}")
                    return
            elif step.kind == "approval":
                count = self._count(step)
                st.approvals, st.approvals_summary = count.counted, count.summary
                if not count.met:
                    who = ", ".join(a.user for a in count.counted) or "nobody yet"
                    self.set_phase(
                        "AwaitingApproval",
                        f"{where}: approvals {count.summary} for revision {self.revision} ({who}); "
                        f"need {count.missing}",
                    )
                    return
                self.event("Normal", "Approved", f"{where}: gate passed by {', '.join(a.user for a in count.counted)}")
            else:  # analysis step
                assert st.step_started_at is not None
                left = (step.analysis_seconds or 0) - (self.now - st.step_started_at).total_seconds()
                ok, why = self._analysis_ok(step.metrics, in_step=True)
                if left > 0 or not ok:
                    text = f"{math.ceil(left)}s left" if left > 0 else f"holding: {why}"
                    self.set_phase("Progressing", f"{where}: analysing at {st.canary_weight}%, {text}")
                    return
            self._advance()
            self._update_approval_status()
        if self.action == "promote" and not promote_used:
            self.event("Normal", "ActionIgnored", "promote only ends an untimed pause; gates and bakes still apply")

    def _canary_at(self, weight: int) -> bool:
        """Ask for the canary replicas of `weight`; True once they are all ready."""
        want = canary_replicas(self.spec.replicas, weight)
        canary = self.obs.canary
        if canary is None or canary.revision != self.revision:
            self.actions.append(ApplyDeployment("canary", self.revision, self.spec.template, want))
            return False
        if canary.replicas != want:
            self.actions.append(ScaleDeployment("canary", want))
            return False
        self._ensure_stable_replicas()
        return canary.serving(want)

    def _promote(self, promoting: bool, freeze: str | None) -> None:
        st = self.st
        if not promoting:
            if freeze:
                self.set_phase("Paused", f"all steps done; promotion held by {freeze}")
                return
            ok, why = self._analysis_ok()
            if not ok:
                self.set_phase("Progressing", f"all steps done; promotion holding: {why}")
                return
            self.actions.append(ApplyDeployment("stable", self.revision, self.spec.template, self.spec.replicas))
            self.set_phase("Promoting", f"promoting {self.revision} to stable")
            return
        stable = self.obs.stable
        assert stable is not None
        if not stable.serving(self.spec.replicas):
            self._ensure_stable_replicas()
            self.set_phase("Promoting", f"waiting for stable {self.revision} to become available")
            return
        self._scale_canary_to_zero()
        approvers = [a.user for a in st.approvals]
        self._history(self.revision, "Promoted", "all steps passed", approvers)
        st.stable_revision = self.revision
        st.canary_revision = None
        st.canary_weight = 0
        st.current_step_index = 0
        st.step_started_at = None
        self.set_phase("Healthy", f"promoted {self.revision}; stable serves all traffic")


def _set_conditions(st: RolloutStatus, now: datetime) -> None:
    wanted = {
        "Healthy": ("True" if st.phase == "Healthy" else "False", st.phase),
        "Progressing": (
            "True" if st.phase in ("Progressing", "Paused", "AwaitingApproval", "Promoting") else "False",
            st.phase,
        ),
        "RolledBack": ("True" if st.phase == "RolledBack" else "False", st.phase),
        "Valid": ("False" if st.phase == "Invalid" else "True", st.phase),
    }
    old = {c.type: c for c in st.conditions}
    out = []
    for ctype, (status, reason) in wanted.items():
        prev = old.get(ctype)
        changed = prev is None or prev.status != status
        out.append(
            Condition.model_validate(
                {
                    "type": ctype,
                    "status": status,
                    "reason": reason,
                    "message": st.message if status == "True" or ctype == "Valid" else "",
                    "lastTransitionTime": now if changed or prev is None else prev.last_transition_time,
                }
            )
        )
    st.conditions = out
