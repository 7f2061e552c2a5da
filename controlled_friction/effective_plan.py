"""The effective plan: a Rollout's own canary steps made stricter by every matching FrictionPolicy.

Pure functions, no I/O and no clock reads; the planner calls them on every reconcile, so the same
inputs always give the same plan (policies are sorted by name first).

How policies make a plan stricter (never looser):

* Sources. Every matching policy contributes its `rules`; when the Rollout is AI-assisted
  (annotation `controlled-friction.io/ai-assisted: "true"`) it also contributes its `aiAssisted` rules,
  merged the same way (stricter wins) and recorded as `aiAssisted.<rule>`. With no source the plan is
  exactly the Rollout's own steps (an `approval` step with count 0 asks nothing and is dropped).
* The rules apply in this order, each on the result of the previous one:
  1. `maxFirstWeight` (the smallest wins): the first setWeight with a weight above 0 is lowered to the
     cap and the original weight follows as the next setWeight, so the rollout still reaches it. With
     no positive setWeight at all, a setWeight at the cap goes at the start (after any setWeight 0).
  2. `minSteps` (the largest wins), counted as distinct weights above 0: while too few, the largest gap
     between consecutive weights, or between the last weight and 100 (promotion), is split at its
     midpoint (rounded down). The first (lowest) of equal gaps is split first. Only when no such gap
     is 2 or wider is the gap from 0 to the first weight split (a lower first weight is stricter).
     With 1..100 available and minSteps <= 20 this always succeeds; if a future limit asked for more
     weights than integers exist, splitting stops at the densest ladder possible.
  3. `approvals`: each rule is a requirement (count, groups, source = policy name) that must hold
     independently of the others, at one gate after the first positive setWeight and before the next
     setWeight (or before promotion). The Rollout's own first approval step in that segment becomes the
     gate (even with count 0); otherwise a gate is inserted at the end of the segment. A Rollout
     approval step with count > 0 adds its own requirement (source `rollout`); naming no groups, it
     requires the groups the admission webhook lets approve this Rollout (every approval rule's and
     asking approval step's groups, or `approvers.DEFAULT_GROUPS` when none names any), never anyone.
     The approval expiry is the shortest of the rules'.
  4. `minBake` (the largest wins): after every setWeight above 0, before the next setWeight, approval
     step or promotion, there must be a timed pause of at least minBake. The longest timed pause there
     is lengthened if short; with none (untimed pauses wait for a human and never count as bake), a
     pause is inserted right after the setWeight. A minBake of 0 asks nothing.
  5. `requiredMetrics`: added to the analysed metrics; a Rollout metric of the same name that measures
     the same thing (same kind, and same query for `query`) keeps the stricter bounds (lowest max-type,
     highest min-type). A same-named metric that measures something else is kept, and the policy's is
     added as `<policy>-<name>`. Analysis steps that list metrics explicitly also run the required ones.
  6. `maxAnalysisInterval`: `analysis_interval_seconds` = the smallest of the Rollout's interval and
     every rule's. `maxQuiet`: `quiet_limit_seconds` = the smallest of the Rollout's `quietLimit` and every
     rule's. `postPromotionWatch`: `post_promotion_watch_seconds` = the longest of the Rollout's and every
     rule's (a required metric's `mode: enforce` also wins over the Rollout's `observe`).
* Every step a policy added or changed lists `added_by: [{policy, rule}]`, naming each rule that asked
  for the change; `metric_sources` maps each metric to `rollout` and/or the policies that require it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise

from controlled_friction.approvers import required_groups
from controlled_friction.models.policy import FrictionRules, NamedPolicy
from controlled_friction.models.rollout import (
    AddedBy,
    EffectivePlan,
    MetricSpec,
    PlannedApproval,
    PlannedStep,
    RolloutSpec,
    Step,
)
from controlled_friction.names import ANN_AI_ASSISTED

AI_PREFIX = "aiAssisted."
ROLLOUT_SOURCE = "rollout"
# Bounds where a lower value is stricter, and where a higher one is.
_MAX_BOUNDS = ("max_ratio", "max_increase_over_stable", "max_drop", "max_baseline_drop", "max")
_MIN_BOUNDS = ("min",)
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class _Source:
    """One set of rules: a policy's `rules`, or its `aiAssisted` rules (prefix `aiAssisted.`)."""

    policy: str
    prefix: str
    rules: FrictionRules

    def by(self, rule: str) -> AddedBy:
        return AddedBy(policy=self.policy, rule=self.prefix + rule)


# ---------------------------------------------------------------- selection


def matching_policies(
    policies: list[NamedPolicy], rollout_labels: dict[str, str], namespace_labels: dict[str, str]
) -> list[NamedPolicy]:
    """Policies whose rolloutSelector or namespaceSelector matches, sorted by name."""
    found = [p for p in policies if p.spec.selector.matches(rollout_labels, namespace_labels)]
    return sorted(found, key=lambda p: p.name)


def is_ai_assisted(annotations: dict[str, str]) -> bool:
    # Case-insensitive on purpose: "True" must not slip past the AI rules.
    return annotations.get(ANN_AI_ASSISTED, "").strip().lower() == "true"


def active_freeze(policies: list[NamedPolicy], now: datetime) -> str | None:
    """Why rollouts may not advance at `now` (first window by policy name), or None."""
    utc = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    hhmm = utc.strftime("%H:%M")
    day = _WEEKDAYS[utc.weekday()]
    for policy in sorted(policies, key=lambda p: p.name):
        for window in policy.spec.freeze_windows:
            if window.start is not None and window.end is not None:
                inside = _utc(window.start) <= utc < _utc(window.end)
            else:
                inside = (
                    day in window.days
                    and window.start_time is not None
                    and window.end_time is not None
                    and window.start_time <= hhmm < window.end_time  # zero-padded HH:MM sorts as text
                )
            if inside:
                return f"freeze window '{window.name}' of policy '{policy.name}'"
    return None


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


# ---------------------------------------------------------------- the plan


def compute_effective_plan(spec: RolloutSpec, policies: list[NamedPolicy], ai_assisted: bool) -> EffectivePlan:
    """The Rollout's plan made stricter by `policies` (the matching ones); see the module docstring."""
    ordered = sorted(policies, key=lambda p: p.name)
    sources = _sources(ordered, ai_assisted)
    approvers = _rollout_approvers(spec, sources)
    steps = [_translate(step, approvers) for step in spec.strategy.canary.steps]
    steps = _apply_max_first_weight(steps, sources)
    steps = _apply_min_steps(steps, sources)
    steps, expiry = _apply_approvals(steps, sources)
    steps = [s for s in steps if s.kind != "approval" or s.approvals]  # a gate asking nothing is no gate
    steps = _apply_min_bake(steps, sources)
    metrics, metric_sources, required = _merge_metrics(spec.analysis.metrics, sources)
    _add_required_to_analysis_steps(steps, required)
    intervals = [s.rules.max_analysis_interval for s in sources if s.rules.max_analysis_interval is not None]
    quiet = [s.rules.max_quiet for s in sources if s.rules.max_quiet is not None]
    watch = [s.rules.post_promotion_watch for s in sources if s.rules.post_promotion_watch is not None]
    return EffectivePlan(
        steps=steps,
        policies=[p.name for p in ordered],
        metrics=metrics,
        metric_sources=metric_sources,
        analysis_interval_seconds=min([spec.analysis.interval, *intervals]),
        quiet_limit_seconds=min([spec.analysis.quiet_limit, *quiet]),
        post_promotion_watch_seconds=max([spec.analysis.post_promotion_watch, *watch]),
        approval_expiry_seconds=expiry,
        ai_assisted=ai_assisted,
    )


def _sources(policies: list[NamedPolicy], ai_assisted: bool) -> list[_Source]:
    out: list[_Source] = []
    for policy in policies:
        out.append(_Source(policy.name, "", policy.spec.rules))
        if ai_assisted and policy.spec.ai_assisted is not None:
            out.append(_Source(policy.name, AI_PREFIX, policy.spec.ai_assisted))
    return out


def _rollout_approvers(spec: RolloutSpec, sources: list[_Source]) -> list[str]:
    """Whom the admission webhook lets approve this Rollout (`admission.approver_groups`): the groups of
    every approval rule and of every own approval step that asks for approvals, or the default when
    none names any."""
    named = [g for s in sources if s.rules.approvals is not None for g in s.rules.approvals.approver_groups]
    own = [step.approval for step in spec.strategy.canary.steps if step.approval and step.approval.count > 0]
    named += [g for a in own for g in a.approver_groups]
    return required_groups(named)


def _translate(step: Step, rollout_approvers: list[str]) -> PlannedStep:
    if step.set_weight is not None:
        return PlannedStep(kind="setWeight", set_weight=step.set_weight)
    if step.pause is not None:
        return PlannedStep(kind="pause", pause_seconds=step.pause.duration)
    if step.approval is not None:
        # Count 0 stays for now as a place a policy gate may attach to; dropped later if still empty.
        own = step.approval
        groups = [g for g in own.approver_groups if g] or list(rollout_approvers)
        reqs = [PlannedApproval(count=own.count, groups=groups, source=ROLLOUT_SOURCE)]
        return PlannedStep(kind="approval", approvals=reqs if own.count > 0 else [])
    assert step.analysis is not None
    return PlannedStep(kind="analysis", metrics=list(step.analysis.metrics), analysis_seconds=step.analysis.duration)


def _is_exposure(step: PlannedStep) -> bool:
    """A setWeight that actually sends traffic to the canary (setWeight 0 exposes nothing)."""
    return step.kind == "setWeight" and (step.set_weight or 0) > 0


def _first_exposure(steps: list[PlannedStep]) -> int | None:
    return next((i for i, s in enumerate(steps) if _is_exposure(s)), None)


def _apply_max_first_weight(steps: list[PlannedStep], sources: list[_Source]) -> list[PlannedStep]:
    limits = [(s, s.rules.max_first_weight) for s in sources if s.rules.max_first_weight is not None]
    if not limits:
        return steps
    cap = min(limit for _, limit in limits)
    out = list(steps)
    first = _first_exposure(out)
    if first is None:
        # No canary step at all: promotion would be the first exposure. Start at the cap instead,
        # after any setWeight 0 so weights never decrease.
        last_zero = max((i for i, s in enumerate(out) if s.kind == "setWeight"), default=-1)
        by = [s.by("maxFirstWeight") for s, _ in limits]
        out.insert(last_zero + 1, PlannedStep(kind="setWeight", set_weight=cap, added_by=by))
        return out
    original = out[first].set_weight or 0
    if original <= cap:
        return out
    by = [s.by("maxFirstWeight") for s, limit in limits if limit < original]
    # The lowered first step goes in front; the Rollout's own step (with its bake) follows it.
    out.insert(first, PlannedStep(kind="setWeight", set_weight=cap, added_by=list(by)))
    out[first + 1].added_by.extend(by)
    return out


def _apply_min_steps(steps: list[PlannedStep], sources: list[_Source]) -> list[PlannedStep]:
    wanted = [(s, s.rules.min_steps) for s in sources if s.rules.min_steps is not None]
    if not wanted:
        return steps
    target = max(n for _, n in wanted)
    out = list(steps)
    while True:
        ladder = _ladder(out)
        if len(ladder) >= target:
            return out
        split = _split_point(out, ladder)
        if split is None:  # every integer weight already used; cannot happen while minSteps <= 20
            return out
        pos, weight = split
        by = [s.by("minSteps") for s, n in wanted if n > len(ladder)]
        out.insert(pos, PlannedStep(kind="setWeight", set_weight=weight, added_by=by))


def _ladder(steps: list[PlannedStep]) -> list[tuple[int, int]]:
    """(index of first step, weight) for each distinct weight above 0, in plan order."""
    seen: list[tuple[int, int]] = []
    for i, step in enumerate(steps):
        if _is_exposure(step) and (not seen or seen[-1][1] != step.set_weight):
            seen.append((i, step.set_weight or 0))
    return seen


def _split_point(steps: list[PlannedStep], ladder: list[tuple[int, int]]) -> tuple[int, int] | None:
    """Where to insert a new weight and which: the midpoint of the largest gap."""
    if not ladder:
        last_zero = max((i for i, s in enumerate(steps) if s.kind == "setWeight"), default=-1)
        return last_zero + 1, 50
    # (low, high, insert position): before the first step of `high`, or at the end for promotion.
    gaps = [(a[1], b[1], b[0]) for a, b in pairwise(ladder)]
    gaps.append((ladder[-1][1], 100, len(steps)))
    low, high, pos = gaps[0]
    for gap in gaps[1:]:
        if gap[1] - gap[0] > high - low:
            low, high, pos = gap
    if high - low < 2:
        low, high, pos = 0, ladder[0][1], ladder[0][0]
        if high - low < 2:
            return None
    return pos, (low + high) // 2


def _apply_approvals(steps: list[PlannedStep], sources: list[_Source]) -> tuple[list[PlannedStep], float | None]:
    rules = [(s, s.rules.approvals) for s in sources if s.rules.approvals is not None]
    if not rules:
        return steps, None
    reqs: list[PlannedApproval] = []
    for s, rule in rules:
        req = PlannedApproval(count=rule.count, groups=list(rule.approver_groups), source=s.policy)
        same = next((r for r in reqs if r.source == req.source and set(r.groups) == set(req.groups)), None)
        if same is None:
            reqs.append(req)
        else:  # the same policy asking twice for the same groups: the higher count covers both
            same.count = max(same.count, req.count)
    out = list(steps)
    first = _first_exposure(out)
    if first is None:  # no canary weight before promotion: any place in the plan gates it
        start, end = 0, len(out)
    else:
        start = first + 1
        end = next((i for i in range(start, len(out)) if out[i].kind == "setWeight"), len(out))
    gate = next((i for i in range(start, end) if out[i].kind == "approval"), None)
    if gate is None:
        out.insert(end, PlannedStep(kind="approval"))
        gate = end
    out[gate].approvals.extend(reqs)
    out[gate].added_by.extend(s.by("approvals") for s, _ in rules)
    return out, min(rule.expiry for _, rule in rules)


def _apply_min_bake(steps: list[PlannedStep], sources: list[_Source]) -> list[PlannedStep]:
    bakes = [(s, s.rules.min_bake) for s in sources if s.rules.min_bake]
    if not bakes:
        return steps
    need = max(b for _, b in bakes)
    out = list(steps)
    i = 0
    while i < len(out):
        if _is_exposure(out[i]):
            end = next((j for j in range(i + 1, len(out)) if out[j].kind in ("setWeight", "approval")), len(out))
            timed = [j for j in range(i + 1, end) if out[j].kind == "pause" and out[j].pause_seconds is not None]
            if not timed:
                by = [s.by("minBake") for s, _ in bakes]
                out.insert(i + 1, PlannedStep(kind="pause", pause_seconds=need, added_by=by))
            else:
                longest = out[max(timed, key=lambda j: out[j].pause_seconds or 0.0)]
                current = longest.pause_seconds or 0.0
                if current < need:
                    longest.pause_seconds = need
                    longest.added_by.extend(s.by("minBake") for s, b in bakes if b > current)
        i += 1
    return out


# ---------------------------------------------------------------- metrics


def _merge_metrics(
    own: list[MetricSpec], sources: list[_Source]
) -> tuple[list[MetricSpec], dict[str, list[str]], dict[str, list[AddedBy]]]:
    """All metrics to analyse, who asked for each, and the rules that require each (by final name)."""
    metrics = list(own)
    where = {m.name: i for i, m in enumerate(metrics)}
    asked: dict[str, list[str]] = {m.name: [ROLLOUT_SOURCE] for m in own}
    required: dict[str, list[AddedBy]] = {}
    for s in sources:
        for metric in s.rules.required_metrics:
            i = where.get(metric.name)
            if i is not None and _same_measurement(metrics[i], metric):
                metrics[i] = _stricter(metrics[i], metric)
                name = metric.name
            else:
                # A different check under a taken name must not replace the Rollout's: keep both.
                name = metric.name if i is None else _free_name(f"{s.policy}-{metric.name}", where)
                where[name] = len(metrics)
                metrics.append(metric.model_copy(update={"name": name}))
            if s.policy not in asked.setdefault(name, []):
                asked[name].append(s.policy)
            by = s.by("requiredMetrics")
            if by not in required.setdefault(name, []):
                required[name].append(by)
    return metrics, asked, required


def _same_measurement(a: MetricSpec, b: MetricSpec) -> bool:
    if a.kind != b.kind:
        return False
    return a.kind != "query" or (a.query or "").strip() == (b.query or "").strip()


def _stricter(a: MetricSpec, b: MetricSpec) -> MetricSpec:
    update: dict[str, float] = {}
    for field in (*_MAX_BOUNDS, *_MIN_BOUNDS):
        values = [v for v in (getattr(a, field), getattr(b, field)) if v is not None]
        if values:
            update[field] = min(values) if field in _MAX_BOUNDS else max(values)
    merged = a.model_copy(update=update)
    if "enforce" in (a.mode, b.mode):  # a shadow metric never weakens one a policy enforces
        merged = merged.model_copy(update={"mode": "enforce"})
    return merged


def _free_name(wanted: str, taken: dict[str, int]) -> str:
    """A valid, unused metric name (lowercase alphanumerics and '-', at most 63 characters)."""
    base = re.sub(r"[^a-z0-9-]+", "-", wanted.lower()).strip("-")[:63].strip("-") or "metric"
    name, n = base, 2
    while name in taken:
        suffix = f"-{n}"
        name = base[: 63 - len(suffix)].strip("-") + suffix
        n += 1
    return name


def _add_required_to_analysis_steps(steps: list[PlannedStep], required: dict[str, list[AddedBy]]) -> None:
    # An empty list already means "all metrics"; an explicit list must not leave policy metrics out.
    for step in steps:
        if step.kind != "analysis" or not step.metrics:
            continue
        for name, bys in required.items():
            if name not in step.metrics:
                step.metrics.append(name)
                step.added_by.extend(b for b in bys if b not in step.added_by)
