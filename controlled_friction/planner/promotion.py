"""Promotion (the point of no return), the steady state, and rollback."""

from __future__ import annotations

from datetime import timedelta

from controlled_friction.decisions import ApplyDeployment, Decision, RollbackReason
from controlled_friction.models.rollout import AnalysisState, MetricState, PostPromotionWatch
from controlled_friction.planner.measuring import analysis_interval, watch_metrics
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
            # Worded as the wait that follows, so the next looks find nothing new to write.
            self.set_phase("Promoting", self.promoting_message())
            return
        stable = self.obs.stable
        assert stable is not None
        if not stable.serving(self.spec.replicas):
            self.ensure_stable_replicas()
            self.set_phase("Promoting", self.promoting_message())
            return
        if not self.retire_canary():
            self.set_phase("Promoting", f"stable {self.revision} is available; setting HTTPRoute "
                           f"{self.route_name} back to stable 100%")
            return
        approvers = [a.user for a in st.approvals]
        self.history(self.revision, "Promoted", "all steps passed", approvers)
        if st.stable_revision != self.revision:  # keep what a post-promotion rollback goes back to
            st.previous_stable_revision, st.previous_stable_template = st.stable_revision, st.stable_template
        st.stable_revision = self.revision
        st.stable_template = dict(self.spec.template)
        st.canary_revision = None
        st.canary_weight = 0
        st.current_step_index = 0
        st.step_started_at = None
        self.start_watch()
        self.set_phase("Healthy", self.healthy_message())

    def healthy_message(self) -> str:
        """One wording for Healthy, derived from the status (the promotion and every later look say the
        same, so a look after a promotion has nothing new to write)."""
        st = self.st
        last = st.history[-1] if st.history else None
        promoted = last is not None and last.revision == st.stable_revision and last.outcome == "Promoted"
        text = (f"promoted {st.stable_revision}; stable serves all traffic" if promoted
                else f"stable {st.stable_revision} serves all traffic")
        if st.watch is not None:
            text += (f"; watching it until {st.watch.until:%H:%M:%S} UTC "
                     f"(rolls back to {st.previous_stable_revision} on failure)")
        return text

    def promoting_message(self) -> str:
        return f"promoting {self.revision}: waiting for stable {self.revision} to become available"

    def start_watch(self) -> None:
        """Keep judging the promoted revision for the plan's post-promotion watch, if any."""
        st, plan = self.st, self.st.effective_plan
        seconds = plan.post_promotion_watch_seconds if plan is not None else None
        if not seconds or plan is None or not watch_metrics(plan) or st.previous_stable_template is None:
            st.watch = None
            return
        # The pre-rollout baselines carry over: the watch compares the service with before the rollout.
        kept = [MetricState(metric=m.metric, baseline=m.baseline, baseline_known=True)
                for m in st.analysis.metrics if m.baseline_known]
        until = self.now + timedelta(seconds=seconds)
        st.watch = PostPromotionWatch(revision=self.revision, since=self.now, until=until,
                                      analysis=AnalysisState(metrics=kept))
        self.wake_at(self.now + timedelta(seconds=analysis_interval(self.spec, plan)), routine=True)

    def watch(self) -> Decision | None:
        """During a post-promotion watch: roll stable back to the previous revision on failure."""
        st, w = self.st, self.st.watch
        assert w is not None
        if st.stable_revision != w.revision:
            st.watch = None
            return None
        if self.now >= w.until:
            st.watch = None
            self.event("Normal", "WatchPassed", f"post-promotion watch of {w.revision} passed")
            return None
        why = self.fold_watch()
        if why is None:
            return None
        prev, template = st.previous_stable_revision, st.previous_stable_template
        if prev is None or template is None:
            st.watch = None
            self.event("Warning", "WatchFailed", f"post-promotion watch of {w.revision} failed but no previous "
                       f"stable revision is kept to roll back to: {why}")
            return None
        bad = w.revision
        self.actions.append(ApplyDeployment("stable", prev, template, self.spec.replicas))
        st.stable_revision, st.stable_template = prev, template
        st.previous_stable_revision = st.previous_stable_template = None
        st.aborted_revision = st.canary_revision = bad  # the template stays at `bad`: RolledBack until changed
        st.watch = None
        self.rollback_reason = "watch"
        message = f"post-promotion watch: {why}"
        self.history(bad, "RolledBack", message)
        self.event("Warning", "PostPromotionRollback", f"stable rolled back from {bad} to {prev}: {why}")
        self.set_phase("RolledBack", f"rolled back promoted {bad} to {prev}: {message}")
        return self.finish()

    def steady(self) -> Decision:
        st = self.st
        if st.watch is not None and st.phase == "Healthy":
            decided = self.watch()
            if decided is not None:
                return decided
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
            self.set_phase("Healthy", self.healthy_message())
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
