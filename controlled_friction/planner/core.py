"""The planner's entry point and the top of its state machine: first revision, steady state, or a canary."""

from __future__ import annotations

from datetime import datetime

from controlled_friction import names
from controlled_friction.decisions import Action, ApplyDeployment, Decision, RecordEvent, RolloutInput, Track
from controlled_friction.drift import changed_paths, describe
from controlled_friction.effective_plan import compute_effective_plan, is_ai_assisted, matching_policies
from controlled_friction.models.rollout import AnalysisState, RolloutStatus
from controlled_friction.planner.base import set_conditions
from controlled_friction.planner.promotion import Promotion
from controlled_friction.validation import name_problems, policy_hold, spec_problems
from controlled_friction.workloads import pod_template


def invalid(status: RolloutStatus, message: str, generation: int, now: datetime, *, what: str = "spec") -> Decision:
    """A rollout that cannot be acted on: say why, touch no workload."""
    new = status.model_copy(deep=True)
    text = f"invalid {what}: {message}"
    actions: list[Action] = []
    if new.phase != "Invalid" or new.message != text:
        actions.append(RecordEvent("Warning", "InvalidSpec" if what == "spec" else "InvalidPolicy", text))
    new.phase = "Invalid"
    new.message = text
    new.observed_generation = generation
    set_conditions(new, now)
    return Decision(new, tuple(actions))


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
    return Planner(inp).run()


class Planner(Promotion):
    def run(self) -> Decision:
        self.ensure_service()
        self.ensure_track_services()
        st = self.st
        if st.stable_revision is None:
            if self.obs.stable is not None and self.obs.stable.revision:
                st.stable_revision = self.obs.stable.revision  # status was lost: adopt what runs
            else:
                # The first revision ever goes straight to stable: there is nothing to compare with.
                self.actions.append(ApplyDeployment("stable", self.revision, self.spec.template, self.spec.replicas))
                st.stable_revision = self.revision
                self.event("Normal", "StableCreated", f"first revision {self.revision} deployed as stable")
        if self.revision == st.stable_revision and st.stable_template is None:
            st.stable_template = dict(self.spec.template)  # the template is the stable one: keep it
        self.revert_drift()
        if self.revision == st.stable_revision:
            return self.steady()
        return self.canary()

    def revert_drift(self) -> None:
        """Put back an owned Deployment whose pod template was edited behind the operator's back."""
        st, name = self.st, self.inp.name
        stable, canary = self.obs.stable, self.obs.canary
        promoting = stable is not None and stable.revision == self.revision != st.stable_revision
        if (stable is not None and stable.template is not None and st.stable_template is not None
                and st.stable_revision is not None and not promoting):
            want = pod_template(st.stable_template, name, "stable", st.stable_revision)
            paths = changed_paths(want, stable.template)
            if paths:
                self.actions.append(ApplyDeployment("stable", st.stable_revision, st.stable_template,
                                                    self.spec.replicas))
                self._drift("stable", paths)
        if (canary is not None and canary.template is not None and canary.replicas > 0
                and st.canary_revision == self.revision and canary.revision == self.revision):
            want = pod_template(self.spec.template, name, "canary", self.revision)
            paths = changed_paths(want, canary.template)
            if paths:
                self.actions.append(ApplyDeployment("canary", self.revision, self.spec.template, canary.replicas))
                self._drift("canary", paths)

    def _drift(self, track: Track, paths: list[str]) -> None:
        self.drifted.append(track)
        self.event("Warning", "DriftReverted",
                   f"{names.deployment_name(self.inp.name, track)} was changed outside the Rollout "
                   f"({describe(paths)}); restored. Change the Rollout instead: kubectl edit rollout {self.inp.name}")

    def start_canary(self, reason: str) -> None:
        st, inp = self.st, self.inp
        if st.canary_revision and st.canary_revision != self.revision and st.phase not in ("Healthy", "RolledBack"):
            self.history(st.canary_revision, "Superseded", f"replaced by {self.revision}")
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
        st.watch = None  # a new canary ends any post-promotion watch
        st.approvals = []
        st.approvals_summary = "-"
        policies = ", ".join(st.effective_plan.policies) or "none"
        self.event(
            "Normal",
            "CanaryStarted",
            f"{reason}: revision {self.revision}, {len(st.effective_plan.steps)} steps, policies: {policies}",
        )

    def canary(self) -> Decision:
        st = self.st
        if st.canary_revision != self.revision:
            if self.revision == st.aborted_revision and self.action != "retry":
                st.canary_revision = self.revision
            else:
                self.start_canary("new template")
        if self.revision == st.aborted_revision:
            if self.action != "retry":
                self.retire_canary()
                self.ensure_stable_replicas()
                st.canary_weight = 0
                if st.phase != "RolledBack":
                    self.set_phase("RolledBack", f"revision {self.revision} was rolled back; change the "
                                   "template or use the retry action")
                return self.finish()
            st.aborted_revision = None
            self.start_canary("retry")
        elif self.action == "retry":
            self.event("Normal", "ActionIgnored", "retry ignored: the current revision was not rolled back")
        assert st.effective_plan is not None

        promoting = self.obs.stable is not None and self.obs.stable.revision == self.revision
        if self.action == "abort":
            if promoting:
                self.event("Warning", "ActionIgnored", "abort ignored: promotion has already started")
            else:
                return self.rollback("abort", "aborted by the abort action")

        self.fold_measurements()
        if not promoting:
            verdict = self.analysis_rollback_reason()
            if verdict:
                return self.rollback(*verdict)
        self.report_approval_problems()
        self.walk(promoting)
        return self.finish()

