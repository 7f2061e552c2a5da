"""The planner with sequential tests: a rejection rolls back at once, quiet holds and rolls back only at
the quiet limit, shadow metrics never act; driven by Prometheus counters (`Observations.samples`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from controlled_friction.analysis import (
    BASELINE_ORDER_RATE,
    CANARY_ERRORS_TOTAL,
    CANARY_ORDERS_TOTAL,
    CANARY_REQUESTS_TOTAL,
    ORDER_RATE,
    STABLE_ERRORS_TOTAL,
    STABLE_ORDERS_TOTAL,
    STABLE_REQUESTS_TOTAL,
)
from controlled_friction.decisions import Decision, RolloutInput
from controlled_friction.effective_plan import compute_effective_plan
from controlled_friction.measurement import Samples
from controlled_friction.models.policy import FrictionPolicySpec, NamedPolicy
from controlled_friction.models.rollout import RolloutStatus
from controlled_friction.operator import metrics, reconcile
from controlled_friction.planner import ApplyDeployment, due_metrics, plan
from controlled_friction.planner.measuring import query_context
from tests.planner_world import World, spec

ERRORS = {"name": "errors", "kind": "errorRatio", "maxRatio": 0.02, "maxIncreaseOverStable": 0.01}
STEPS = [{"setWeight": 20}, {"pause": {"duration": "20s"}}]


def deployed(metrics_: list[dict[str, object]], steps: list[dict[str, object]] = STEPS, **analysis: object) -> World:
    w = World(spec(steps, image="shop/checkout:1", metrics=metrics_, **analysis))
    w.tick()
    w.tick()
    w.spec = spec(steps, image="shop/checkout:2", metrics=metrics_, **analysis)
    w.tick()
    w.tick(advance=1)
    assert w.status.canary_weight == 20 and w.status.phase == "Progressing"
    return w


def look(w: World, canary: tuple[float, float] | None, stable: tuple[float, float] = (0, 0),
         advance: float = 2.0, at: datetime | None = None, **extra: float) -> Decision:
    """One analysis look with these cumulative counters (requests, 5xx) of canary and stable."""
    w.now += timedelta(seconds=advance)
    status = RolloutStatus.model_validate(w.status.wire())  # what a restarted operator reads
    # Orders at 0.3 per request on both tracks, and the service's order rate as before the rollout.
    values: dict[str, float | None] = {STABLE_REQUESTS_TOTAL: stable[0], STABLE_ERRORS_TOTAL: stable[1],
                                       STABLE_ORDERS_TOTAL: 0.3 * stable[0], ORDER_RATE: 10.0,
                                       BASELINE_ORDER_RATE: 10.0, **extra}
    if canary is not None:
        values[CANARY_REQUESTS_TOTAL], values[CANARY_ERRORS_TOTAL] = canary
        values[CANARY_ORDERS_TOTAL] = 0.3 * canary[0]
    assert status.effective_plan is not None
    samples = Samples(query_context("shop", "checkout", w.spec, status),
                      {m.name: dict(values) for m in status.effective_plan.metrics}, at=at)
    d = plan(RolloutInput("shop", "checkout", 1, w.labels, dict(w.annotations), w.spec, status,
                          replace(w.last_observations(), samples=samples), w.now))
    w.apply(d)
    w.last = d
    return d


def healthy_looks(w: World, n: int, start: int = 0) -> Decision:
    d = w.last
    for i in range(start, start + n):
        if w.status.canary_revision is None:
            break  # promoted
        d = look(w, (20.0 * (i + 1), 0.1 * (i + 1)), (80.0 * (i + 1), 0.4 * (i + 1)))
    assert d is not None
    return d


def test_a_rejection_rolls_back_on_the_look_that_sees_it_with_no_failure_limit_wait() -> None:
    w = deployed([ERRORS], failureLimit=5)
    healthy_looks(w, 3)
    d = look(w, (60 + 40, 0.3 + 40), (320, 1.6))  # 40 new canary requests, all 5xx
    assert d.status.phase == "RolledBack" and d.rollback == "analysis"
    assert "failed its sequential test" in d.status.message and "violated" in d.status.message
    [ms] = d.status.analysis.metrics
    assert ms.last is not None and ms.last.decisive and ms.consecutive_failures == 1


def test_a_threshold_failure_still_waits_for_the_failure_limit() -> None:
    query = {"name": "lat", "kind": "query", "query": "sum(x)", "max": 1}
    w = deployed([query], failureLimit=2)
    d = look(w, (10, 0), value=5.0)
    assert d.status.phase == "Progressing" and d.status.analysis.metrics[0].consecutive_failures == 1
    d = look(w, (20, 0), value=5.0)
    assert d.status.phase == "RolledBack" and "failed 2x" in d.status.message


def test_quiet_holds_the_bake_and_rolls_back_only_at_the_quiet_limit() -> None:
    w = deployed([ERRORS], quietLimit="40s")
    d = look(w, None, (100, 0))
    [ms] = d.status.analysis.metrics
    assert ms.last is not None and ms.last.verdict == "quiet" and ms.quiet_since == w.now
    for _ in range(9):  # 20 s bake, then holding
        d = look(w, None, (100, 0), advance=2.5)
        assert d.status.phase == "Progressing" and d.status.current_step_index == 1, d.status.message
    assert "quiet" in d.status.message and "no requests reached canary revision" in d.status.message
    assert d.rollback is None
    d = look(w, None, (100, 0), advance=20)
    assert d.status.phase == "RolledBack" and d.rollback == "quiet"
    assert "quiet for" in d.status.message and "quiet limit 40s" in d.status.message


def test_a_quiet_canary_that_gets_traffic_passes_and_advances() -> None:
    w = deployed([ERRORS], quietLimit="5m")
    for _ in range(12):
        d = look(w, None, (100, 0), advance=2)
    assert d.status.current_step_index == 1 and "holding" in d.status.message
    d = healthy_looks(w, 3)
    assert d.status.phase in ("Promoting", "Healthy"), d.status.message


def test_inconclusive_and_error_are_not_quiet() -> None:
    w = deployed([ERRORS], errorLimit=2)
    d = look(w, None, (100, 0))
    assert d.status.analysis.metrics[0].consecutive_errors == 0
    from controlled_friction.planner.measuring import record_measurements
    from tests.planner_world import verdicts

    st = record_measurements(d.status.analysis, verdicts("error", "errors"), w.now)
    assert st.metrics[0].consecutive_errors == 1 and st.metrics[0].quiet_since is not None  # kept, not reset


def test_a_shadow_metric_is_measured_but_never_rolls_back_or_holds() -> None:
    shadow = {**ERRORS, "mode": "observe"}
    w = deployed([shadow])
    d = look(w, (40, 40), (100, 0.5))  # every canary request fails
    assert d.status.phase == "Progressing" and d.rollback is None
    [ms] = d.status.analysis.metrics
    assert ms.mode == "observe" and ms.last is not None and ms.last.verdict == "fail" and ms.last.decisive
    assert any(e.reason == "ShadowMetricFailed" for e in d.events())
    for i in range(1, 13):
        if w.status.canary_revision is None:
            break
        d = look(w, (40 + 40 * i, 40 + 40 * i), (100 + 160 * i, 0.5 + i))
        assert d.rollback is None
    assert d.status.phase in ("Promoting", "Healthy") and d.status.stable_revision == w.revision


def test_a_policy_enforces_what_the_rollout_only_observes_and_shortens_the_quiet_limit() -> None:
    policy = NamedPolicy(name="strict", spec=FrictionPolicySpec.model_validate({
        "selector": {"namespaceSelector": {}},
        "rules": {"requiredMetrics": [ERRORS], "maxQuiet": "1m", "postPromotionWatch": "10m"},
    }))
    s = spec(STEPS, metrics=[{**ERRORS, "mode": "observe"}], quietLimit="5m")
    p = compute_effective_plan(s, [policy], ai_assisted=False)
    assert [m.mode for m in p.metrics] == ["enforce"]
    assert p.quiet_limit_seconds == 60 and p.post_promotion_watch_seconds == 600


def test_verdicts_are_counted_in_metrics_with_their_mode() -> None:
    w = deployed([{**ERRORS, "mode": "observe"}])
    before = w.status
    d = look(w, (40, 40), (100, 0.5))
    sample = metrics.VERDICTS.labels("errors", "fail", "observe")
    was = sample._value.get()
    reconcile._observe_metrics("shop", "checkout", before, d, w.now)
    assert sample._value.get() == was + 1


# ---------------------------------------------------------------- post-promotion watch

WATCHED = [ERRORS, {"name": "orders", "kind": "orderRateDrop", "maxDrop": 0.2, "maxBaselineDrop": 0.3}]


def promoted(watch: str = "60s") -> World:
    w = deployed(WATCHED, postPromotionWatch=watch)
    for i in range(30):
        if w.status.phase == "Healthy":
            break
        look(w, (20.0 * (i + 1), 0.1 * (i + 1)), (80.0 * (i + 1), 0.4 * (i + 1)))
    w.tick(advance=1)
    assert w.status.phase == "Healthy" and w.status.stable_revision == w.revision, w.status.message
    return w


def test_a_promotion_keeps_the_previous_stable_and_watches_the_service() -> None:
    w = promoted()
    st = w.status
    assert st.watch is not None and st.watch.revision == w.revision
    assert st.previous_stable_revision is not None and st.previous_stable_revision != w.revision
    assert st.previous_stable_template is not None
    assert "image" in str(st.previous_stable_template) and "checkout:1" in str(st.previous_stable_template)
    assert w.last is not None and w.last.next_look is not None  # woken for the watch's looks
    due = due_metrics(w.spec, st, w.now + timedelta(seconds=2))
    assert [m.name for m in due] == ["errors", "orders"]
    assert due[0].max_ratio == 0.02 and due[0].max_increase_over_stable is None  # no stable to compare with
    assert due[1].max_baseline_drop == 0.3 and due[1].max_drop is None
    assert [m.metric for m in st.watch.analysis.metrics if m.baseline_known] == []  # baselines fed as values here
    ctx = query_context("shop", "checkout", w.spec, st)
    assert ctx.canary_track == "stable" and ctx.canary_revision == w.revision


def test_a_failing_service_after_promotion_rolls_stable_back_to_the_previous_revision() -> None:
    w = promoted()
    previous = w.status.previous_stable_revision
    bad = w.revision
    look(w, (100, 0.5))  # the promoted revision's counters on the stable track: healthy at first
    assert w.status.phase == "Healthy"
    d = look(w, (140, 40.5))  # then every request fails
    assert d.status.phase == "RolledBack" and d.rollback == "watch"
    assert d.status.stable_revision == previous and d.status.aborted_revision == bad
    applied = [a for a in d.actions if isinstance(a, ApplyDeployment)]
    assert [(a.track, a.revision) for a in applied] == [("stable", previous)]
    assert any(e.reason == "PostPromotionRollback" for e in d.events())
    assert d.status.history[-1].outcome == "RolledBack" and "post-promotion" in d.status.history[-1].reason
    # the next reconcile (status read back) keeps it rolled back and stable on the previous revision
    d = w.tick(advance=1)
    assert d.status.phase == "RolledBack" and w.stable is not None and w.stable.revision == previous


def test_a_quiet_watch_ends_and_then_asks_for_no_more_looks() -> None:
    w = promoted(watch="10s")
    look(w, (100, 0.5))
    d = w.tick(advance=30)
    assert d.status.phase == "Healthy" and d.status.watch is None
    assert any(e.reason == "WatchPassed" for e in d.events())
    d = w.tick(advance=1)
    assert d.next_look is None and due_metrics(w.spec, d.status, w.now) == []


def test_no_watch_without_a_window() -> None:
    w = deployed(WATCHED)
    for i in range(30):
        if w.status.phase == "Healthy":
            break
        look(w, (20.0 * (i + 1), 0.1 * (i + 1)), (80.0 * (i + 1), 0.4 * (i + 1)))
    assert w.status.phase == "Healthy" and w.status.watch is None
    assert w.status.previous_stable_template is not None  # kept anyway



def test_a_late_look_measures_the_grid_instant_passed_and_the_next_is_not_skipped() -> None:
    from controlled_friction.planner import request_for

    w = deployed([ERRORS], interval="10s")
    first = request_for("shop", "checkout", w.spec, RolloutStatus.model_validate(w.status.wire()), w.labels, {},
                        (), (), "http://prom", w.now)
    assert first is not None and first.at is not None and first.at.timestamp() % 10 == 0 and first.at <= w.now
    look(w, (0.0, 0.0), (80.0, 0.4), advance=0, at=first.at)
    assert w.status.analysis.last_run_at == first.at  # the instant measured, not the moment it ran
    due = first.at + timedelta(seconds=10)
    w.now = due + timedelta(seconds=7.5)  # the next look runs 7.5 s late (a loaded API server)
    req = request_for("shop", "checkout", w.spec, RolloutStatus.model_validate(w.status.wire()), w.labels, {},
                      (), (), "http://prom", w.now)
    assert req is not None and req.at == due  # the instant it was due, shared with every on-time look
    d = look(w, (40.0, 0.2), (160.0, 0.8), advance=0, at=req.at)
    assert d.status.analysis.last_run_at == due
    assert d.next_look == due + timedelta(seconds=10)  # 2.5 s on, not skipped to 12.5 s on
    w.now = due + timedelta(seconds=25)  # later than an interval: the present instant, no catching up
    req = request_for("shop", "checkout", w.spec, RolloutStatus.model_validate(w.status.wire()), w.labels, {},
                      (), (), "http://prom", w.now)
    assert req is not None and req.at == due + timedelta(seconds=20)
