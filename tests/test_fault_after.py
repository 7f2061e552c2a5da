"""The simulator's delayed fault (`sim.controlled-friction.io/fault-after`): a revision behaves healthy
until its pods have served that long, counted from its first ready pod on any track, so a canary
promoted to stable keeps its clock (failures that only appear after promotion)."""

from __future__ import annotations

from controlled_friction import names
from controlled_friction.sandbox.traffic import (
    CODE_FAULT,
    FaultProfile,
    SeriesKey,
    ServiceKey,
    ServiceState,
    Track,
    TrafficConfig,
    TrafficModel,
    parse_fault_profile,
)

SHOP = ServiceKey("shop", "checkout")
FAULTY = FaultProfile(error_rate=1.0, after_seconds=30.0)


def served(model: TrafficModel, topo: dict[ServiceKey, ServiceState], seconds: float, dt: float = 0.5) -> None:
    for _ in range(round(seconds / dt)):
        model.tick(topo, dt)


def faults(model: TrafficModel, track: str) -> int:
    c = model.snapshot().series.get(SeriesKey("shop", "checkout", track, "bbbbbbbbbb"))
    return 0 if c is None else c.requests.get(CODE_FAULT, 0)


def test_the_annotation_is_parsed_and_bounded() -> None:
    parsed = parse_fault_profile({names.SIM_ERROR_RATE: "0.5", names.SIM_FAULT_AFTER: "120"})
    assert parsed.profile == FaultProfile(error_rate=0.5, after_seconds=120.0) and not parsed.problems
    bad = parse_fault_profile({names.SIM_FAULT_AFTER: "-1"})
    assert bad.profile.after_seconds == 0 and bad.problems
    assert FaultProfile(after_seconds=10).healthy  # a delay alone is no fault


def test_the_fault_starts_after_the_delay_and_survives_a_promotion() -> None:
    model = TrafficModel(TrafficConfig(rate=100.0, base_error_rate=0.0), seed=3)
    canary = {SHOP: ServiceState((Track("stable", "aaaaaaaaaa", 9), Track("canary", "bbbbbbbbbb", 1, FAULTY)))}
    served(model, canary, 20)
    assert faults(model, "canary") == 0  # healthy for its first 30 s
    # promoted after 20 s: the same revision now runs on the stable track
    promoted = {SHOP: ServiceState((Track("stable", "bbbbbbbbbb", 10, FAULTY),))}
    served(model, promoted, 9)
    assert faults(model, "stable") == 0
    served(model, promoted, 10)
    assert faults(model, "stable") > 500  # every request fails from ~30 s of service on


def test_a_revision_that_never_served_has_not_started_its_clock() -> None:
    model = TrafficModel(TrafficConfig(rate=100.0, base_error_rate=0.0), seed=4)
    idle = {SHOP: ServiceState((Track("stable", "aaaaaaaaaa", 9), Track("canary", "bbbbbbbbbb", 0, FAULTY)))}
    served(model, idle, 60)
    live = {SHOP: ServiceState((Track("stable", "aaaaaaaaaa", 9), Track("canary", "bbbbbbbbbb", 1, FAULTY)))}
    served(model, live, 20)
    assert faults(model, "canary") == 0
