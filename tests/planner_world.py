"""A tiny pure world for driving the planner in tests: Deployments become ready at once.

It stands in for the cluster only in unit tests of pure logic; end-to-end tests use the real sandbox.
Every tick round-trips the status through its wire form, as a restarted operator would read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from controlled_friction import names, traffic_routing
from controlled_friction.decisions import PatchRoute
from controlled_friction.models.approval import ApprovalEntry, sign, verify
from controlled_friction.models.policy import NamedPolicy
from controlled_friction.models.rollout import Measurement, RolloutSpec, RolloutStatus
from controlled_friction.planner import (
    ApplyDeployment,
    ApprovalObs,
    Decision,
    DeploymentObs,
    EnsureService,
    InvalidPolicy,
    Observations,
    RolloutInput,
    ScaleDeployment,
    plan,
)
from controlled_friction.revision import revision_of

KEY = b"test-key"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def template(image: str = "shop/checkout:1", **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "checkout"}, "annotations": dict(annotations)},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }


def spec(steps: list[dict[str, Any]], image: str = "shop/checkout:1", replicas: int = 10,
         metrics: list[dict[str, Any]] | None = None, **analysis: Any) -> RolloutSpec:
    return RolloutSpec.model_validate(
        {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "checkout"}},
            "template": template(image),
            "strategy": {"canary": {"steps": steps}},
            "analysis": {"metrics": metrics or [], **analysis},
        }
    )


def approval(user: str, revision: str, groups: tuple[str, ...] = (names.SENIOR_GROUP,),
             at: datetime = T0, rollout: str = "shop/checkout", key: bytes = KEY) -> ApprovalEntry:
    return sign(ApprovalEntry(user=user, groups=list(groups), revision=revision, time=at, rollout=rollout), key)


@dataclass
class World:
    spec: RolloutSpec
    now: datetime = T0
    status: RolloutStatus = field(default_factory=RolloutStatus)
    stable: DeploymentObs | None = None
    canary: DeploymentObs | None = None
    stable_template_revision_history: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)
    policies: tuple[NamedPolicy, ...] = ()
    invalid_policies: tuple[InvalidPolicy, ...] = ()
    approvals: list[ApprovalEntry] = field(default_factory=list)
    ready: bool = True  # Deployments become ready immediately
    author_verified: bool = True  # the shell's check of the webhook's author signature
    last: Decision | None = None
    # The HTTPRoute (spec.trafficRouting) as the watch shows it; PatchRoute actions are applied to it
    # when `route_follows` (a missing route stays missing).
    route: dict[str, Any] | None = None
    route_follows: bool = True
    route_writes: list[PatchRoute] = field(default_factory=list)
    services: set[str] = field(default_factory=set)

    @property
    def revision(self) -> str:
        return revision_of(self.spec.template)

    def tick(self, measurements: tuple[Measurement, ...] = (), advance: float = 0.0) -> Decision:
        self.now += timedelta(seconds=advance)
        status = RolloutStatus.model_validate(self.status.wire())  # what a restarted operator reads
        inp = RolloutInput(
            namespace="shop",
            name="checkout",
            generation=1,
            labels=self.labels,
            annotations=dict(self.annotations),
            spec=self.spec,
            status=status,
            obs=replace(self.last_observations(), measurements=measurements),
            now=self.now,
        )
        decision = plan(inp)
        self.apply(decision)
        self.last = decision
        return decision

    def last_observations(self) -> Observations:
        return Observations(
            stable=self.stable,
            canary=self.canary,
            namespace_labels=self.namespace_labels,
            policies=self.policies,
            invalid_policies=self.invalid_policies,
            approvals=tuple(ApprovalObs(a, verify(a, KEY)) for a in self.approvals),
            author_verified=self.author_verified,
            route=self.route,
            track_services=frozenset(self.services),
        )

    def apply(self, decision: Decision) -> None:
        self.status = decision.status
        self.annotations.pop(names.ANN_ACTION, None)
        for a in decision.actions:
            if isinstance(a, ApplyDeployment):
                obs = self._dep(a.revision, a.replicas)
                if a.track == "stable":
                    self.stable = obs
                    self.stable_template_revision_history.append(a.revision)
                else:
                    self.canary = obs
            elif isinstance(a, ScaleDeployment):
                cur = self.stable if a.track == "stable" else self.canary
                assert cur is not None, f"scale of missing {a.track}"
                new = self._dep(cur.revision, a.replicas)
                if a.track == "stable":
                    self.stable = new
                else:
                    self.canary = new
            elif isinstance(a, EnsureService):
                self.services.add(a.name)
            elif isinstance(a, PatchRoute):
                self.route_writes.append(a)
                if self.route is not None and self.route_follows:
                    self.route = traffic_routing.apply_json_patch(self.route, list(a.patch))

    def _dep(self, revision: str | None, replicas: int) -> DeploymentObs:
        ready = replicas if self.ready else 0
        return DeploymentObs(revision, replicas, ready, ready, replicas if self.ready else 0, True)


def passing(*metric_names: str, at: datetime = T0) -> tuple[Measurement, ...]:
    return tuple(
        Measurement(metric=n, verdict="pass", value=0.0, bound="", message="ok", time=at) for n in metric_names
    )


def verdicts(verdict: str, *metric_names: str, value: float = 0.5) -> tuple[Measurement, ...]:
    return tuple(
        Measurement.model_validate({"metric": n, "verdict": verdict, "value": value, "bound": "≤ 0.02",
                                    "message": f"{n} {verdict}"})
        for n in metric_names
    )
