"""Walking the effective plan's steps: weights, bakes, untimed pauses, gates and analysis steps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controlled_friction.effective_plan import active_freeze, matching_policies
from controlled_friction.models.rollout import PlannedStep
from controlled_friction.planner.gate import Gate
from controlled_friction.planner.measuring import Analysis
from controlled_friction.planner.traffic import Traffic


def until(end: datetime) -> str:
    """A step's end as the message says it: an instant, not a countdown, so the status does not
    change (and need not be written) at every look while a bake runs."""
    return f"{end.astimezone(UTC):%H:%M:%S} UTC"


def canary_replicas(replicas: int, weight: int) -> int:
    """Replicas that realise `weight` next to a full stable without a traffic router.

    The effective weight is canary / (canary + stable) ready pods, so canary = stable * w / (100 - w),
    at least 1 pod for any weight > 0 and at most `replicas` (weights above 50% are served as 50%
    until promotion). The planner asks `traffic_routing.honest_split` whether this meets a step.
    """
    if weight <= 0:
        return 0
    if weight >= 100:
        return max(replicas, 1)
    return max(1, min(max(replicas, 1), round(replicas * weight / (100 - weight))))


class Steps(Gate, Analysis, Traffic):
    def advance(self) -> None:
        self.st.current_step_index += 1
        self.st.step_started_at = self.now
        for ms in self.st.analysis.metrics:
            ms.passes_in_step = 0

    def freeze(self, promoting: bool) -> str | None:
        if promoting:
            return None
        matching = matching_policies(list(self.obs.policies), self.inp.labels, self.obs.namespace_labels)
        return active_freeze(matching, self.now)

    def walk(self, promoting: bool) -> None:
        st, plan = self.st, self.st.effective_plan
        assert plan is not None
        if st.step_started_at is None:  # status written by an older operator: start the step now
            st.step_started_at = self.now
        self.update_approval_status()
        freeze = self.freeze(promoting)
        route_hold = None if promoting else self.route_hold()
        if route_hold:  # the route cannot carry weights: stay where we are, never promote
            self.set_phase("Paused", f"step {st.current_step_index + 1}/{len(plan.steps)}: {route_hold}")
            return
        in_force = None if promoting else self.weight_step(st.current_step_index)
        held = self.keep_in_force(in_force) if in_force is not None and st.canary_weight > 0 else None
        if held:
            self.set_phase("Paused", f"step {st.current_step_index + 1}/{len(plan.steps)}: {held}")
            return
        promote_used = False
        for _ in range(len(plan.steps) + 1):
            idx = st.current_step_index
            if idx >= len(plan.steps):
                self.promote(promoting, freeze)
                return
            step = plan.steps[idx]
            where = f"step {idx + 1}/{len(plan.steps)}"
            if step.kind == "setWeight":
                weight = step.set_weight or 0
                if freeze:
                    self.set_phase("Paused", f"{where}: held by {freeze}")
                    return
                held = self.weight_hold(step)
                if held:
                    self.set_phase("Paused", f"{where}: {held}")
                    return
                if not self.canary_at_step(step):
                    self.set_phase("Progressing", f"{where}: {self.moving_to(weight)}")
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
                end = st.step_started_at + timedelta(seconds=step.pause_seconds)
                left = (end - self.now).total_seconds()
                if left > 0:
                    self.wake_at(end)
                    self.set_phase("Progressing", f"{where}: baking at {st.canary_weight}% until {until(end)}")
                    return
                ok, why = self.analysis_ok()
                if not ok:
                    self.hold_for_analysis()
                    self.set_phase("Progressing", f"{where}: bake done, holding: {why}")
                    return
            elif step.kind == "approval":
                count = self.count(step)
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
                end = st.step_started_at + timedelta(seconds=step.analysis_seconds or 0)
                left = (end - self.now).total_seconds()
                ok, why = self.analysis_ok(step.metrics, in_step=True)
                if left > 0 or not ok:
                    self.wake_at(end)
                    if left <= 0:
                        self.hold_for_analysis()
                    text = f"until {until(end)}" if left > 0 else f"holding: {why}"
                    self.set_phase("Progressing", f"{where}: analysing at {st.canary_weight}%, {text}")
                    return
            self.advance()
            self.update_approval_status()
        if self.action == "promote" and not promote_used:
            self.event("Normal", "ActionIgnored", "promote only ends an untimed pause; gates and bakes still apply")

    def weight_step(self, idx: int) -> PlannedStep | None:
        """The setWeight step whose weight is in force at step `idx` (None when `idx` sets one itself)."""
        plan = self.st.effective_plan
        assert plan is not None
        if idx < len(plan.steps) and plan.steps[idx].kind == "setWeight":
            return None
        return next((s for s in reversed(plan.steps[:idx]) if s.kind == "setWeight"), None)

    def moving_to(self, weight: int) -> str:
        if self.route_name is not None:
            return f"scaling canary and setting HTTPRoute {self.route_name} to weight {weight}%"
        return f"scaling canary to weight {weight}%"

    def promote(self, promoting: bool, freeze: str | None) -> None:
        raise NotImplementedError  # provided by Promotion
