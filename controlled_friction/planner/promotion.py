"""Promotion (the point of no return), the steady state, and rollback."""

from __future__ import annotations

from controlled_friction.decisions import ApplyDeployment, Decision, RollbackReason
from controlled_friction.planner.steps import Steps


class Promotion(Steps):
    def promote(self, promoting: bool, freeze: str | None) -> None:
        st = self.st
        if not promoting:
            if freeze:
                self.set_phase("Paused", f"all steps done; promotion held by {freeze}")
                return
            ok, why = self.analysis_ok()
            if not ok:
                self.set_phase("Progressing", f"all steps done; promotion holding: {why}")
                return
            self.actions.append(ApplyDeployment("stable", self.revision, self.spec.template, self.spec.replicas))
            self.set_phase("Promoting", f"promoting {self.revision} to stable")
            return
        stable = self.obs.stable
        assert stable is not None
        if not stable.serving(self.spec.replicas):
            self.ensure_stable_replicas()
            self.set_phase("Promoting", f"waiting for stable {self.revision} to become available")
            return
        if not self.retire_canary():
            self.set_phase("Promoting", f"stable {self.revision} is available; setting HTTPRoute "
                           f"{self.route_name} back to stable 100%")
            return
        approvers = [a.user for a in st.approvals]
        self.history(self.revision, "Promoted", "all steps passed", approvers)
        st.stable_revision = self.revision
        st.stable_template = dict(self.spec.template)
        st.canary_revision = None
        st.canary_weight = 0
        st.current_step_index = 0
        st.step_started_at = None
        self.set_phase("Healthy", f"promoted {self.revision}; stable serves all traffic")

    def steady(self) -> Decision:
        st = self.st
        if st.canary_revision and st.phase not in ("Healthy", "RolledBack"):
            self.history(st.canary_revision, "Superseded", "template reverted to the stable revision")
            self.event("Normal", "CanaryAbandoned", f"template is back to stable {st.stable_revision}")
        self.retire_canary()
        stable = self.obs.stable
        if stable is None and not any(isinstance(a, ApplyDeployment) for a in self.actions):
            # Template equals the stable revision, so recreating stable from it is exact.
            self.actions.append(ApplyDeployment("stable", self.revision, self.spec.template, self.spec.replicas))
        self.ensure_stable_replicas()
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

    def rollback(self, reason: RollbackReason, message: str) -> Decision:
        st = self.st
        self.retire_canary()  # with a router: the route's canary weight to 0 first; pods next time
        self.ensure_stable_replicas()
        st.aborted_revision = self.revision
        st.canary_weight = 0
        self.rollback_reason = reason
        self.history(self.revision, "Aborted" if reason == "abort" else "RolledBack", message)
        self.event("Warning", "RollbackTriggered", f"revision {self.revision}: {message}")
        self.set_phase("RolledBack", f"rolled back {self.revision}: {message}")
        return self.finish()
