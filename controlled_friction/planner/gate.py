"""The approval gate inside the planner: counting approvals for the revision at hand, and saying
why some do not count."""

from __future__ import annotations

from controlled_friction import names
from controlled_friction.approvals import ApprovalCount, count_approvals
from controlled_friction.models.rollout import PlannedStep
from controlled_friction.planner.base import Base

UNVERIFIED_AUTHOR = (
    "the author of revision {revision} was not recorded by the admission webhook (the template changed "
    "while it was bypassed, or the author annotations were edited); change spec.template again with the "
    "webhook running"
)


class Gate(Base):
    def report_approval_problems(self) -> None:
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

    def count(self, step: PlannedStep) -> ApprovalCount:
        plan = self.st.effective_plan
        assert plan is not None
        if not self.obs.author_verified:
            need = max((r.count for r in step.approvals), default=0)
            why = UNVERIFIED_AUTHOR.format(revision=self.revision)
            return ApprovalCount([], False, f"0/{need}", f"a verified author before any approval counts: {why}")
        result = count_approvals(
            step.approvals,
            self.obs.approvals,
            rollout_key=f"{self.inp.namespace}/{self.inp.name}",
            revision=self.revision,
            annotations=self.inp.annotations,
            expiry_seconds=plan.approval_expiry_seconds,
            now=self.now,
        )
        self.wake_at(result.expires_at)  # the count drops then
        return result

    def update_approval_status(self) -> None:
        plan = self.st.effective_plan
        assert plan is not None
        gates = [s for s in plan.steps if s.kind == "approval"]
        if not gates:
            self.st.approvals, self.st.approvals_summary = [], "-"
            return
        idx = self.st.current_step_index
        upcoming = [s for s in plan.steps[idx:] if s.kind == "approval"]
        count = self.count(upcoming[0] if upcoming else gates[-1])
        self.st.approvals, self.st.approvals_summary = count.counted, count.summary
