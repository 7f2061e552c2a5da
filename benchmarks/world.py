"""A live world for benchmarks: the real planner, the traffic simulator and a real Prometheus.

`LiveRollout` plays the operator's shell for one Rollout without a cluster: each `tick` asks
`due_metrics` what to measure, asks Prometheus for it with the operator's own batched queries
(`sample`), runs `plan` with those numbers (the planner judges them, sequential tests and all) and
applies the Decision's Deployment actions to an in-memory world whose Deployments
are ready at once. The world's Deployments are the simulator's tracks, so a rollback takes the
canary out of the traffic on the next simulator tick. The status is round-tripped through its wire
form every tick, as a restarted operator would read it.

What it leaves out on purpose: the Kubernetes API (writes, watch latency) and pod start-up and
termination. Numbers measured with it are the analysis loop's latency, not the cluster's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from controlled_friction.adapters.prometheus import PrometheusClient
from controlled_friction.analysis import promql_duration
from controlled_friction.measurement import Samples
from controlled_friction.models.rollout import Measurement, RolloutSpec, RolloutStatus
from controlled_friction.names import TRACK_CANARY, TRACK_STABLE
from controlled_friction.operator.reconcile import sample
from controlled_friction.planner import (
    ApplyDeployment,
    Decision,
    DeploymentObs,
    Observations,
    RolloutInput,
    ScaleDeployment,
    due_metrics,
    plan,
)
from controlled_friction.planner.measuring import query_context
from controlled_friction.sandbox import throwaway_prometheus
from controlled_friction.sandbox.simulator import StaticSource
from controlled_friction.sandbox.traffic import HEALTHY, FaultProfile, Track


def prometheus_version() -> str:
    return throwaway_prometheus.version()


@contextlib.contextmanager
def running_prometheus(targets: list[str], scrape_interval: float, startup_timeout: float = 60.0) -> Iterator[str]:
    """A throwaway Prometheus scraping `targets`; yields its URL once every target was scraped up."""
    with throwaway_prometheus.running_prometheus(
        targets, promql_duration(scrape_interval), startup_timeout, wait_for_targets=True
    ) as url:
        yield url


# ---------------------------------------------------------------- one rollout


def app_template(name: str, version: str) -> dict[str, Any]:
    """A pod template whose revision is unique per (name, version)."""
    return {
        "metadata": {"labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": f"bench/{name}:{version}"}]},
    }


@dataclass(frozen=True)
class Tick:
    decision: Decision
    measurements: tuple[Measurement, ...]
    measure_seconds: float | None  # wall time of the Prometheus round, None when nothing was due
    finished: float  # time.monotonic() when the decision was applied


class LiveRollout:
    """One Rollout (service label = rollout name) driven by the real planner in real time."""

    def __init__(
        self,
        *,
        namespace: str,
        name: str,
        spec: RolloutSpec,
        source: StaticSource,
        client: PrometheusClient,
        rate: float | None = None,
    ) -> None:
        self.namespace, self.name, self.spec = namespace, name, spec
        self.source, self.client, self.rate = source, client, rate
        self.status = RolloutStatus()
        self.stable: DeploymentObs | None = None
        self.canary: DeploymentObs | None = None
        self.canary_faults: FaultProfile = HEALTHY
        self.new_canary_faults: FaultProfile = HEALTHY  # what a new canary revision does from its first pod
        self.canary_started: float | None = None  # time.monotonic() when the canary's pods first served

    @property
    def service(self) -> str:
        return self.spec.analysis.service or self.name

    def set_template(self, template: dict[str, Any]) -> None:
        self.spec = RolloutSpec.model_validate({**self.spec.wire(), "template": template})

    def set_canary_faults(self, faults: FaultProfile) -> None:
        """Change what the canary's pods do (the simulator serves it from its next tick)."""
        self.canary_faults = faults
        self._publish()

    def retire(self) -> None:
        self.source.remove(self.namespace, self.service)

    def tick(self) -> Tick:
        now = datetime.now(UTC)
        status = RolloutStatus.model_validate(self.status.wire())  # what a restarted operator reads
        due = due_metrics(self.spec, status, now)
        samples: Samples | None = None
        took: float | None = None
        if due:
            assert status.canary_revision is not None
            ctx = query_context(self.namespace, self.name, self.spec, status)
            known = any(m.baseline_known for m in status.analysis.metrics)
            started = time.monotonic()
            samples = sample(self.client, due, ctx, baselines=not known)
            took = time.monotonic() - started
        decision = plan(
            RolloutInput(
                namespace=self.namespace,
                name=self.name,
                generation=1,
                labels={},
                annotations={},
                spec=self.spec,
                status=status,
                obs=Observations(stable=self.stable, canary=self.canary, samples=samples),
                now=now,
            )
        )
        measurements = tuple(ms.last for ms in decision.status.analysis.metrics
                             if samples is not None and ms.last is not None and ms.last.time == now)
        self._apply(decision)
        return Tick(decision, measurements, took, time.monotonic())

    def _apply(self, decision: Decision) -> None:
        self.status = decision.status
        changed = False
        for action in decision.actions:
            if isinstance(action, ApplyDeployment):
                obs = _ready(action.revision, action.replicas)
                if action.track == TRACK_STABLE:
                    self.stable = obs
                else:
                    if self.canary is None or self.canary.revision != action.revision:
                        self.canary_faults = self.new_canary_faults  # a new canary revision's profile
                        self.canary_started = time.monotonic() if action.replicas > 0 else None
                    self.canary = obs
                changed = True
            elif isinstance(action, ScaleDeployment):
                current = self.stable if action.track == TRACK_STABLE else self.canary
                if current is None:
                    raise RuntimeError(f"planner scaled the missing {action.track} Deployment")
                obs = _ready(current.revision, action.replicas)
                if action.track == TRACK_STABLE:
                    self.stable = obs
                else:
                    self.canary = obs
                changed = True
        if changed:
            self._publish()

    def _publish(self) -> None:
        tracks = []
        if self.stable is not None and self.stable.revision:
            tracks.append(Track(TRACK_STABLE, self.stable.revision, self.stable.ready_replicas))
        if self.canary is not None and self.canary.revision:
            tracks.append(Track(TRACK_CANARY, self.canary.revision, self.canary.ready_replicas, self.canary_faults))
        self.source.set_tracks(self.namespace, self.service, tracks, self.rate)


def _ready(revision: str | None, replicas: int) -> DeploymentObs:
    """Deployments here become ready at once: no pod start-up or termination time."""
    return DeploymentObs(revision, replicas, replicas, replicas, replicas, True)
