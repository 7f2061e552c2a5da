"""What the planner reads and what it decides: plain, immutable types shared by the planner, the shell,
the workload builders and the admission rules (none of which needs the planner to name them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

from controlled_friction.measurement import Samples
from controlled_friction.models.approval import ApprovalEntry
from controlled_friction.models.policy import NamedPolicy, PolicySelector
from controlled_friction.models.rollout import Measurement, RolloutSpec, RolloutStatus

Track = Literal["stable", "canary"]

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
    # The pod template as the API server holds it (with its defaults), to notice edits made behind
    # the operator's back; None when the shell did not look.
    template: dict[str, object] | None = field(default=None, compare=False)

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
    # Whether `author` carries the webhook's signature for this rollout and revision. Fails closed:
    # without a verified author nobody can be excluded, so no approval counts until the shell says so.
    author_verified: bool = False
    # What Prometheus answered for the metrics that were due (numbers or errors); the planner judges.
    samples: Samples | None = None
    # Verdicts judged elsewhere (benchmarks, tests); folded in like the ones judged from `samples`.
    measurements: tuple[Measurement, ...] = ()
    # Why the API server refuses the Deployment this revision needs (a server-side dry run said so).
    workload_rejected: str | None = None
    # The HTTPRoute named by spec.trafficRouting.gatewayAPI.httpRoute as the watch-fed index holds it
    # (None: missing, or no router named). Only read when the spec names a route.
    route: dict[str, Any] | None = field(default=None, compare=False)
    # Which of the per-track Services `<rollout>-stable` / `<rollout>-canary` exist (router only).
    track_services: frozenset[str] = frozenset()


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
class PatchRoute:
    """Apply this JSON patch (RFC 6902, from `traffic_routing.route_weight_patch`) to the HTTPRoute
    `name`: it sets only the weights of the rollout's backendRefs, `weight` percent to the canary."""

    name: str
    weight: int
    patch: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class RecordEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class ClearAction:
    """Remove the one-shot `action` annotation whose value was handled."""

    value: str


Action = ApplyDeployment | ScaleDeployment | EnsureService | PatchRoute | RecordEvent | ClearAction

RollbackReason = Literal["abort", "analysis", "quiet", "watch", "drift"]


@dataclass(frozen=True)
class Decision:
    status: RolloutStatus
    actions: tuple[Action, ...]
    # The next instant the planner must look again even if nothing changes (bake end, next analysis,
    # approval expiry, freeze end); None: only a change of something it reads can alter the decision.
    next_look: datetime | None = None
    # Set when this decision rolls the canary back, for the shell's counters (never parsed from text).
    rollback: RollbackReason | None = None
    # Owned Deployments whose template was edited behind the operator's back and is being restored.
    drift: tuple[Track, ...] = ()
    # True when `next_look` is only a routine look (the analysis grid, the resync), not a deadline: the
    # shell runs changes and deadlines first when it cannot run everything at once.
    next_look_routine: bool = False

    def events(self) -> list[RecordEvent]:
        return [a for a in self.actions if isinstance(a, RecordEvent)]
