"""The FrictionPolicy CRD: cluster-wide rules that make critical rollouts stricter, never looser."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from controlled_friction.durations import Duration
from controlled_friction.models.base import LabelSelector, SpecModel, StatusModel
from controlled_friction.models.rollout import MetricSpec, PrometheusRef

Weekday = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


class ApprovalRule(SpecModel):
    count: int = Field(default=2, ge=1, le=10, description="Distinct approvals required.")
    approver_groups: list[str] = Field(
        default_factory=lambda: ["senior-engineers"],
        min_length=1,
        description="Groups whose members may approve.",
    )
    expiry: Duration = Field(
        default=86400.0, description="An approval older than this no longer counts."
    )


class DeletionRule(SpecModel):
    """Deleting a matched Rollout is approved like a revision: by others, verified, fresh."""

    count: int = Field(
        default=2, ge=1, le=10,
        description="Distinct approvals of the deletion required; the requester's own never counts.",
    )
    approver_groups: list[str] = Field(
        default_factory=lambda: ["senior-engineers"],
        min_length=1,
        description="Groups whose members may approve a deletion (controlled-friction.io/approve-delete).",
    )
    expiry: Duration = Field(
        default=3600.0, description="A deletion approval older than this no longer counts."
    )


class FreezeWindow(SpecModel):
    """A time when rollouts may not advance. Either absolute (start/end) or weekly (days + times, UTC)."""

    name: str = Field(default="freeze", description="Shown in status while the freeze holds a rollout.")
    start: datetime | None = Field(default=None, description="Absolute start (RFC 3339).")
    end: datetime | None = Field(default=None, description="Absolute end (RFC 3339).")
    days: list[Weekday] = Field(default_factory=list, description="Weekly: days the window applies (UTC).")
    start_time: str | None = Field(
        default=None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="Weekly: HH:MM UTC."
    )
    end_time: str | None = Field(
        default=None,
        pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$",
        description="Weekly: HH:MM UTC (24:00 for end of day).",
    )

    @model_validator(mode="after")
    def _one_form(self) -> FreezeWindow:
        absolute = self.start is not None or self.end is not None
        weekly = bool(self.days) or self.start_time is not None or self.end_time is not None
        if absolute == weekly:
            raise ValueError(f"freeze window {self.name!r}: give either start+end or days+startTime+endTime")
        if absolute and (self.start is None or self.end is None or self.end <= self.start):
            raise ValueError(f"freeze window {self.name!r}: needs start and end, with end after start")
        if weekly and (not self.days or self.start_time is None or self.end_time is None):
            raise ValueError(f"freeze window {self.name!r}: weekly windows need days, startTime, endTime")
        if weekly and self.end_time is not None and self.start_time is not None and self.end_time <= self.start_time:
            raise ValueError(f"freeze window {self.name!r}: endTime must be after startTime")
        return self


class FrictionRules(SpecModel):
    max_first_weight: int | None = Field(
        default=None, ge=1, le=100, description="Largest weight the first canary step may set."
    )
    min_steps: int | None = Field(
        default=None, ge=1, le=20, description="Least number of setWeight steps before promotion."
    )
    min_bake: Duration | None = Field(
        default=None, description="Least bake (timed pause) after every setWeight step."
    )
    approvals: ApprovalRule | None = Field(
        default=None, description="Approval gate required before the canary grows past its first step."
    )
    required_metrics: list[MetricSpec] = Field(
        default_factory=list, description="Metrics always analysed, whatever the Rollout declares."
    )
    max_analysis_interval: Duration | None = Field(
        default=None, description="Analysis runs at least this often."
    )
    max_quiet: Duration | None = Field(
        default=None,
        description="A canary whose metric stays quiet (too few canary requests to judge) longer than this "
        "is rolled back (the shortest of the Rollout's quietLimit and the policies' wins).",
    )
    post_promotion_watch: Duration | None = Field(
        default=None,
        description="After promotion, keep judging the service this long and roll stable back to the "
        "previous revision on failure (the longest of the Rollout's and the policies' wins).",
    )
    deletion: DeletionRule | None = Field(
        default=None,
        description="DELETE of a matched Rollout is refused until this many others approved it "
        "(annotation controlled-friction.io/approve-delete: <the Rollout's uid>).",
    )
    require_change_record: bool = Field(
        default=False,
        description="A template change must carry annotation controlled-friction.io/change-record: "
        "\"<TICKET-ID or URL> <one-line summary>\".",
    )


class PolicySelector(SpecModel):
    rollout_selector: LabelSelector | None = Field(
        default=None, description="Matches Rollouts by their own labels."
    )
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Matches Rollouts by the labels of their Namespace."
    )

    @model_validator(mode="after")
    def _some(self) -> PolicySelector:
        if self.rollout_selector is None and self.namespace_selector is None:
            raise ValueError("selector needs rolloutSelector or namespaceSelector (either may match)")
        return self

    def matches(self, rollout_labels: dict[str, str], namespace_labels: dict[str, str]) -> bool:
        by_rollout = self.rollout_selector is not None and self.rollout_selector.matches(rollout_labels)
        by_ns = self.namespace_selector is not None and self.namespace_selector.matches(namespace_labels)
        return by_rollout or by_ns


class FrictionPolicySpec(SpecModel):
    selector: PolicySelector = Field(description="Which Rollouts this policy applies to (either selector).")
    rules: FrictionRules = Field(default_factory=FrictionRules, description="Friction for every match.")
    ai_assisted: FrictionRules | None = Field(
        default=None,
        description="Extra rules when the Rollout is annotated controlled-friction.io/ai-assisted: \"true\".",
    )
    freeze_windows: list[FreezeWindow] = Field(
        default_factory=list, description="Times when matching rollouts may not advance."
    )
    prometheus: PrometheusRef = Field(default_factory=PrometheusRef, description="Default Prometheus.")


class FrictionPolicyStatus(StatusModel):
    valid: bool = Field(default=True, description="Whether the operator accepts the policy.")
    message: str = Field(default="", description="Why the policy is invalid, if it is.")


class NamedPolicy(SpecModel):
    """A policy with its name, as the planner sees it."""

    name: str
    spec: FrictionPolicySpec
