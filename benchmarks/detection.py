"""How fast does the planner roll back a bad canary, and how often does it roll back a good one --
next to the judgement rules of Argo Rollouts, Flagger and Kayenta (emulated) on the same data.

    .venv/bin/python -m benchmarks.detection [--runs 10] [--sim-runs 200] [--no-live] [--json PATH]
    .venv/bin/python -m benchmarks.detection --only-ours [--profile tuned|critical] [--from-start] ...

By default (side by side, `benchmarks.compare`, ~15 min live + a few minutes simulated): our live
trials below with the critical example's analysis, and at the same time, on the same Prometheus,
canaries kept in traffic for 10 minutes whose recorded counters every judge then decides on
(`benchmarks.replay`), plus hundreds of canaries in simulated time; tables per judge and ours/theirs.
`--only-ours` runs only the live trials of our operator, described next.

One real Prometheus (Debian's /usr/bin/prometheus) scrapes one traffic simulator every 2 s. Every
trial is its own service (stable 4 replicas + canary 1 = 20% weight, revisions unique per trial),
driven by the real planner through `benchmarks.world.LiveRollout`, with measurements from the real
Prometheus through the operator's `measure`. After a warm-up (canary at 20% for a full rate window
plus two scrapes, and the latest measurement of every metric passing) the canary's fault profile
is switched at a random instant (the fault onset); the trial records the wall time until the
planner's Decision has phase RolledBack. Healthy trials never get a fault and count rollbacks.

Scenarios: hard-5xx (canary answers 100% 5xx), hard-orders (canary loses 99% of orders), soft-5xx
(canary 2% 5xx vs stable 0.5%), healthy (both 0.5% 5xx noise). Target: hard faults p95 <= 15 s.
The benchmark prints whether the target was met; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from benchmarks.world import LiveRollout, app_template, prometheus_version, running_prometheus
from controlled_friction.adapters.prometheus import PrometheusClient
from controlled_friction.models.rollout import RolloutSpec
from controlled_friction.names import TRACK_CANARY
from controlled_friction.planner import canary_replicas
from controlled_friction.sandbox.simulator import StaticSource, serve
from controlled_friction.sandbox.traffic import CODE_FAULT, FaultProfile, SeriesKey, TrafficConfig, TrafficModel

NAMESPACE = "bench"
STABLE_REPLICAS = 4
CANARY_WEIGHT = 20
BASE_ERROR_RATE = 0.005  # stable's 5xx share (the simulator's healthy noise), also the canary's baseline
SOFT_CANARY_ERROR = 0.02
HARD_TARGET_P95 = 15.0
SCRAPE_INTERVAL = 2.0
OPERATOR_TICK = 2.0  # the operator's kopf timer interval (CF_TICK_SECONDS default)
STEPS: list[dict[str, Any]] = [{"setWeight": CANARY_WEIGHT}, {"pause": {"duration": "10m"}}]
ANALYSIS: dict[str, Any] = {
    "interval": "2s",
    "window": "10s",  # noise is handled by the significance test, so a short window only speeds detection
    "metrics": [
        {"name": "error-ratio", "kind": "errorRatio", "maxRatio": 0.05, "maxIncreaseOverStable": 0.01},
        {"name": "orders", "kind": "orderRateDrop", "maxDrop": 0.3},
    ],
}


@dataclass(frozen=True)
class Scenario:
    name: str
    faults: FaultProfile | None  # None: healthy, never injected
    hard: bool
    what: str


SCENARIOS = (
    Scenario("hard-5xx", FaultProfile(error_rate=1.0), True, "canary answers 100% 5xx"),
    Scenario("hard-orders", FaultProfile(order_drop=0.99), True, "canary loses 99% of orders"),
    # The simulator fails a request with probability base + error_rate, so +1.5% gives 2% vs 0.5%.
    Scenario(
        "soft-5xx",
        FaultProfile(error_rate=SOFT_CANARY_ERROR - BASE_ERROR_RATE),
        False,
        f"canary {SOFT_CANARY_ERROR:.1%} 5xx vs stable {BASE_ERROR_RATE:.1%}",
    ),
    Scenario("healthy", None, False, f"no fault; both tracks {BASE_ERROR_RATE:.1%} 5xx noise"),
)
Outcome = Literal["detected", "missed", "survived", "false-rollback", "warmup-rollback", "warmup-timeout", "error"]
START_ATTEMPTS = 3  # canary revisions a trial may start when healthy ones are rolled back before warm-up


CRITICAL_EXAMPLE = "examples/rollout-critical.yaml"
CANARY_EXTRA: dict[str, Any] = {}  # strategy.canary fields besides steps (the critical example's maxSurge)


def _critical_example() -> dict[str, Any]:
    import pathlib

    import yaml

    root = pathlib.Path(__file__).resolve().parent.parent
    doc: dict[str, Any] = yaml.safe_load((root / CRITICAL_EXAMPLE).read_text())
    return doc


def critical_steps() -> list[dict[str, Any]]:
    """The critical example's steps (the plan an unguarded release would follow)."""
    return list(_critical_example()["spec"]["strategy"]["canary"]["steps"])


def critical_profile() -> dict[str, Any]:
    """spec.analysis of the critical example, unchanged (its policy requires the same order-rate metric)."""
    doc = _critical_example()
    global CANARY_EXTRA
    CANARY_EXTRA = {k: v for k, v in doc["spec"]["strategy"]["canary"].items() if k != "steps"}
    return dict(doc["spec"]["analysis"])


def use_profile(name: str) -> dict[str, Any]:
    """Set the topology of a profile and return its spec.analysis. critical: the critical example at the
    sandbox's defaults: 10 stable replicas + 1 canary pod for its first step (setWeight 5 = ~9%), 50
    req/s, Prometheus scraping every 1 s."""
    global STABLE_REPLICAS, CANARY_WEIGHT, SCRAPE_INTERVAL, STEPS
    if name == "tuned":
        return dict(ANALYSIS)
    # The example's first step is 5% (the policy's maxFirstWeight): 1 canary pod next to 10 + 9 surge
    # stable pods (its maxSurge).
    STABLE_REPLICAS, CANARY_WEIGHT, SCRAPE_INTERVAL = 10, 5, 1.0
    STEPS = [{"setWeight": CANARY_WEIGHT}, {"pause": {"duration": "10m"}}]
    return critical_profile()


def rollout_spec(name: str, analysis: dict[str, Any]) -> RolloutSpec:
    return RolloutSpec.model_validate(
        {
            "replicas": STABLE_REPLICAS,
            "selector": {"matchLabels": {"app": name}},
            "template": app_template(name, "1"),
            "strategy": {"canary": {"steps": STEPS, **CANARY_EXTRA}},
            "analysis": analysis,
        }
    )


@dataclass(frozen=True)
class Settings:
    runs: int
    timeout: float
    healthy_seconds: float
    warmup_timeout: float
    concurrency: int
    rate: float
    tick: float
    seed: int | None
    verbose: bool
    analysis: dict[str, Any]  # spec.analysis on the wire
    scenarios: tuple[Scenario, ...]
    from_start: bool = False  # the fault is in the canary revision from its first pod (no warm-up)


@dataclass
class TrialResult:
    scenario: str
    run: int
    service: str
    outcome: Outcome = "error"
    warmup_s: float | None = None  # canary start -> warm
    detect_s: float | None = None  # fault onset -> Decision with phase RolledBack
    first_fail_s: float | None = None  # fault onset -> first tick with a failing measurement
    observed_s: float | None = None  # healthy: time observed after warm-up
    canary_age_s: float | None = None  # time the canary had been at its weight when the trial ended
    canary_starts: int = 0  # canary revisions started (a start-up rollback starts a fresh one)
    startup_rollbacks: list[dict[str, Any]] = field(default_factory=list)  # rollbacks before warm: age, message
    message: str = ""  # the rollback message, or why the trial ended otherwise
    fault_5xx: int = 0  # requests the canary answered 500 because of its fault (blast radius)
    lost_orders: int = 0  # orders the canary lost to its fault (blast radius)
    measure_s: list[float] = field(default_factory=list)  # duration of each Prometheus round


# ---------------------------------------------------------------- one trial


def run_trial(scenario: Scenario, run: int, s: Settings, source: StaticSource, model: TrafficModel,
              prometheus_url: str) -> TrialResult:
    service = f"{scenario.name}-{run:02d}"
    result = TrialResult(scenario.name, run, service)
    rng = random.Random(None if s.seed is None else f"{s.seed}/{service}")
    rollout = LiveRollout(
        namespace=NAMESPACE,
        name=service,
        spec=rollout_spec(service, s.analysis),
        source=source,
        client=PrometheusClient(prometheus_url),
        rate=s.rate,
    )
    window = rollout.spec.analysis.window
    try:
        time.sleep(rng.uniform(0, s.tick))  # spread the trials' ticks over the scrape cycle
        for _ in range(5):  # the first revision goes straight to stable; instantly ready here
            if rollout.tick().decision.status.phase == "Healthy":
                break
        else:
            result.message = f"stable never became Healthy: {rollout.status.message}"
            return result
        # A real stable has history: give its rate window real data before the canary is judged against it.
        time.sleep(window + 2 * SCRAPE_INTERVAL)
        for attempt in range(START_ATTEMPTS):
            # A fresh revision each time: the planner keeps a rolled-back one at weight 0.
            rollout.set_template(app_template(service, str(attempt + 2)))
            if s.from_start and scenario.faults is not None:
                rollout.new_canary_faults = scenario.faults
            result.canary_starts += 1
            result.canary_age_s = None
            _drive(rollout, scenario, s, rng, window, result)
            if result.outcome != "warmup-rollback":
                break
            result.startup_rollbacks.append({"canary_age_s": result.canary_age_s, "message": result.message})
    except Exception as exc:  # report it with the trial rather than losing the whole run
        result.outcome, result.message = "error", f"{type(exc).__name__}: {exc}"
    finally:
        rollout.retire()
        time.sleep(0.6)  # let the simulator's last ticks for this service land before counting
        _blast_radius(model, rollout, result)
    return result


def _drive(rollout: LiveRollout, scenario: Scenario, s: Settings, rng: random.Random, window: float,
           result: TrialResult) -> None:
    started = time.monotonic()
    at_weight: float | None = None  # when the canary reached its weight
    warm_at: float | None = None
    inject_at: float | None = None
    onset: float | None = None
    next_tick = time.monotonic()
    while True:
        wake = next_tick if inject_at is None or onset is not None else min(next_tick, inject_at)
        time.sleep(max(0.0, wake - time.monotonic()))
        if inject_at is not None and onset is None and time.monotonic() >= inject_at:
            assert scenario.faults is not None
            rollout.set_canary_faults(scenario.faults)
            onset = time.monotonic()
            continue
        tick = rollout.tick()
        next_tick = tick.finished + s.tick  # a kopf timer counts its interval from the handler's end
        if tick.measure_seconds is not None:
            result.measure_s.append(round(tick.measure_seconds, 4))
        st = tick.decision.status
        if at_weight is not None:
            result.canary_age_s = tick.finished - at_weight
        if onset is not None and result.first_fail_s is None and any(m.verdict == "fail" for m in tick.measurements):
            result.first_fail_s = tick.finished - onset
        if st.phase == "RolledBack":
            result.message = st.message
            if s.from_start and onset is None and scenario.faults is not None and rollout.canary_started:
                onset = rollout.canary_started
            if onset is not None:
                result.outcome, result.detect_s = "detected", tick.finished - onset
            elif warm_at is not None and scenario.faults is None:
                result.outcome, result.observed_s = "false-rollback", tick.finished - warm_at
            else:
                result.outcome = "warmup-rollback"
            return
        if at_weight is None and st.canary_weight >= CANARY_WEIGHT:
            at_weight = tick.finished
        if s.from_start and warm_at is None and rollout.canary_started is not None:
            # No warm-up: the clock starts when the canary's pods first serve traffic.
            warm_at = rollout.canary_started
            result.warmup_s = 0.0
            if scenario.faults is not None:
                onset = rollout.canary_started
            continue
        if warm_at is None:
            last = [m.last for m in st.analysis.metrics]
            passing = len(last) == len(rollout.spec.analysis.metrics) and all(m and m.verdict == "pass" for m in last)
            if at_weight is not None and tick.finished - at_weight >= window + 2 * SCRAPE_INTERVAL and passing:
                warm_at = tick.finished
                result.warmup_s = warm_at - at_weight
                if scenario.faults is not None:
                    inject_at = warm_at + rng.uniform(0, s.tick)  # a random phase against scrapes and ticks
            elif tick.finished - started > s.warmup_timeout:
                result.outcome, result.message = "warmup-timeout", f"not warm after {s.warmup_timeout:g}s: {st.message}"
                return
        elif scenario.faults is None and tick.finished - warm_at >= s.healthy_seconds:
            result.outcome, result.observed_s, result.message = "survived", tick.finished - warm_at, st.message
            return
        if onset is not None and tick.finished - onset > s.timeout:
            result.outcome, result.message = "missed", f"no rollback {s.timeout:g}s after onset: {st.message}"
            return


def _blast_radius(model: TrafficModel, rollout: LiveRollout, result: TrialResult) -> None:
    revision = rollout.status.canary_revision
    if revision is None:
        return
    counters = model.snapshot().series.get(SeriesKey(NAMESPACE, rollout.service, TRACK_CANARY, revision))
    if counters is not None:
        result.fault_5xx = counters.requests.get(CODE_FAULT, 0)
        result.lost_orders = counters.lost_orders


# ---------------------------------------------------------------- statistics


def quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default); inf stands for "not detected"."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    a, b = ordered[lo], ordered[hi]
    frac = pos - lo
    return a if frac == 0 or a == b else a + (b - a) * frac


def seconds(value: float, timeout: float) -> str:
    if math.isnan(value):
        return "-"
    return f">{timeout:g}" if math.isinf(value) else f"{value:.1f}"


def summarise(results: list[TrialResult], s: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sc in s.scenarios:
        rows = [r for r in results if r.scenario == sc.name]
        if sc.faults is None:
            observed = sum(r.observed_s or 0.0 for r in rows if r.outcome in ("survived", "false-rollback"))
            false = [r for r in rows if r.outcome == "false-rollback"]
            judged = [r for r in rows if r.outcome in ("survived", "false-rollback")]
            out[sc.name] = {
                "runs": len(rows),
                "judged": len(judged),
                "false_rollbacks": len(false),
                "false_rollback_fraction": len(false) / len(judged) if judged else None,
                "observed_canary_seconds": observed,
                "false_rollbacks_per_canary_hour": len(false) / (observed / 3600) if observed else None,
                "reasons": [r.message for r in false],
            }
            continue
        injected = [r for r in rows if r.outcome in ("detected", "missed")]
        times = [r.detect_s if r.detect_s is not None else math.inf for r in injected]
        first = [r.first_fail_s for r in injected if r.first_fail_s is not None]
        out[sc.name] = {
            "runs": len(rows),
            "injected": len(injected),
            "detected": sum(r.outcome == "detected" for r in rows),
            "median_s": quantile(times, 0.5),
            "p95_s": quantile(times, 0.95),
            "max_s": max(times, default=math.nan),
            "first_fail_median_s": statistics.median(first) if first else math.nan,
            "fault_5xx_median": statistics.median([r.fault_5xx for r in injected]) if injected else None,
            "lost_orders_median": statistics.median([r.lost_orders for r in injected]) if injected else None,
            "hard": sc.hard,
        }
    early = [e for r in results for e in r.startup_rollbacks]
    starts = sum(r.canary_starts for r in results)
    out["startup"] = {
        "canary_starts": starts,
        "rollbacks_before_warm": len(early),
        "fraction": len(early) / starts if starts else None,
        "rollbacks": early,
    }
    return out


# ---------------------------------------------------------------- output


def parameters(s: Settings, config: TrafficConfig) -> list[str]:
    a = rollout_spec("x", s.analysis).analysis
    canary = canary_replicas(STABLE_REPLICAS, CANARY_WEIGHT)
    metrics = "; ".join(
        f"{m['name']} ({m['kind']}: " + ", ".join(f"{k} {v}" for k, v in m.items() if k not in ("name", "kind")) + ")"
        for m in s.analysis["metrics"]
    )
    return [
        f"Prometheus: {prometheus_version()}, scrape interval {SCRAPE_INTERVAL:g}s",
        f"Rollout: stable {STABLE_REPLICAS} replicas (maxSurge {CANARY_EXTRA.get('maxSurge', 0)}) + canary "
        f"{canary} (weight {CANARY_WEIGHT}%), steps "
        f"[setWeight {CANARY_WEIGHT}, pause 10m]",
        f"Analysis: interval {a.interval:g}s, window {a.window:g}s, failureLimit {a.failure_limit}, "
        f"inconclusiveLimit {a.inconclusive_limit}, errorLimit {a.error_limit}, minRequests {a.min_requests}",
        f"Metrics: {metrics}",
        f"Planner tick: every {s.tick:g}s after the previous one ends (the operator's timer); Deployments "
        "ready at once (no API server, no pod start-up: analysis latency only)",
        f"Traffic: {s.rate:g} req/s per service, base 5xx {config.base_error_rate:.1%} on every track, "
        f"order probability {config.order_probability:g} per successful request",
        "Scenarios: " + "; ".join(f"{sc.name} = {sc.what}" for sc in s.scenarios),
        f"Warm-up: stable alone for window + {2 * SCRAPE_INTERVAL:g}s, then "
        f"canary at {CANARY_WEIGHT}% for window + {2 * SCRAPE_INTERVAL:g}s with every metric's latest "
        f"measurement passing; the fault starts at a random instant within the next {s.tick:g}s",
        f"Runs: {s.runs} per scenario, timeout {s.timeout:g}s after onset, healthy observed "
        f"{s.healthy_seconds:g}s each after warm-up, {s.concurrency} trials at a time",
    ]


def render(summary: dict[str, Any], results: list[TrialResult], s: Settings) -> list[str]:
    lines = []
    head = (
        f"{'scenario':<12} {'runs':>4} {'injected':>8} {'detected':>8} {'median s':>9} {'p95 s':>7} {'max s':>7} "
        f"{'1st fail s':>10} {'5xx served':>10} {'orders lost':>11}"
    )
    lines += [head, "-" * len(head)]
    for sc in s.scenarios:
        row = summary[sc.name]
        if sc.faults is None:
            continue
        lines.append(
            f"{sc.name:<12} {row['runs']:>4} {row['injected']:>8} {row['detected']:>8} "
            f"{seconds(row['median_s'], s.timeout):>9} "
            f"{seconds(row['p95_s'], s.timeout):>7} {seconds(row['max_s'], s.timeout):>7} "
            f"{seconds(row['first_fail_median_s'], s.timeout):>10} "
            f"{_num(row['fault_5xx_median']):>10} {_num(row['lost_orders_median']):>11}"
        )
    lines += [
        "(seconds from fault onset to the RolledBack decision; injected: runs that got through warm-up;",
        " median / p95 / max over injected runs, a miss counting as longer than the timeout; 1st fail: onset to",
        " the first failing measurement; 5xx served, orders lost: per-trial medians on the canary = blast radius)",
    ]
    early = summary["startup"]
    lines += ["", "False rollbacks of healthy canaries:"]
    h = summary.get("healthy")
    if h is not None:
        minutes = h["observed_canary_seconds"] / 60
        rate = h["false_rollbacks_per_canary_hour"]
        lines.append(
            f"  steady state (healthy scenario, after warm-up): {h['false_rollbacks']} of {h['judged']} canaries "
            f"in {minutes:.1f} canary-minutes observed"
            + (f" = {h['false_rollback_fraction']:.0%} of canaries, {rate:.2f} per canary-hour" if h["judged"] else "")
        )
    for r in results:
        if r.outcome == "false-rollback":
            lines.append(f"    {r.service} after {r.observed_s:.0f}s: {r.message}")
    lines.append(
        f"  start-up (every scenario, before warm-up ended): {early['rollbacks_before_warm']} of "
        f"{early['canary_starts']} canary starts"
        + (f" = {early['fraction']:.0%}" if early["canary_starts"] else "")
        + f" (such a trial starts a fresh canary revision, up to {START_ATTEMPTS} in all)"
    )
    for r in results:
        for e in r.startup_rollbacks:
            age = f"{e['canary_age_s']:.0f}s" if e["canary_age_s"] is not None else "?"
            lines.append(f"    {r.service} {age} after reaching {CANARY_WEIGHT}%: {e['message']}")
    for r in results:
        if r.outcome in ("warmup-rollback", "warmup-timeout", "error"):
            lines.append(f"  {r.service}: {r.outcome}: {r.message}")
    rounds = [x for r in results for x in r.measure_s]
    warm = [r.warmup_s for r in results if r.warmup_s is not None]
    if rounds:
        lines.append(
            f"Prometheus round (both metrics, 3-4 queries): median {statistics.median(rounds) * 1000:.0f} ms, "
            f"p95 {quantile(rounds, 0.95) * 1000:.0f} ms over {len(rounds)} rounds; warm-up median "
            f"{statistics.median(warm) if warm else math.nan:.1f}s"
        )
    lines.append("")
    for sc in s.scenarios:
        if sc.hard:
            p95 = summary[sc.name]["p95_s"]
            met = not math.isnan(p95) and p95 <= HARD_TARGET_P95
            lines.append(
                f"{sc.name}: p95 {seconds(p95, s.timeout)}s vs target <= {HARD_TARGET_P95:g}s: "
                + ("target met" if met else "target missed")
            )
    return lines


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else "inf"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------- main


def trial_order(scenarios: Sequence[Scenario], runs: int) -> list[tuple[Scenario, int]]:
    """Healthy trials first (they run longest), then the fault scenarios interleaved run by run."""
    healthy = [(sc, i) for sc in scenarios if sc.faults is None for i in range(runs)]
    faulty = [(sc, i) for i in range(runs) for sc in scenarios if sc.faults is not None]
    return healthy + faulty


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.detection", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="trials per scenario (default 10)")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds after onset before a trial is a miss")
    p.add_argument("--healthy-seconds", type=float, default=120.0, help="observation per healthy trial after warm-up")
    p.add_argument("--warmup-timeout", type=float, default=120.0, help="seconds a trial may take to warm up")
    p.add_argument("--concurrency", type=int, default=40, help="trials running at the same time")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second per service")
    p.add_argument("--tick", type=float, default=None,
                   help=f"seconds between planner ticks (default 1 side by side, else {OPERATOR_TICK:g})")
    p.add_argument("--seed", type=int, default=None, help="seed for the traffic and the onset jitter")
    p.add_argument("--scenarios", default=",".join(sc.name for sc in SCENARIOS),
                   help="comma-separated subset of: " + ", ".join(sc.name for sc in SCENARIOS))
    p.add_argument("--profile", choices=("tuned", "critical"), default=None,
                   help="tuned: stable 4 + canary 1 (20%%), interval 2s, window 10s, scrape 2s; critical: the "
                   "critical example's analysis unchanged, stable 10 + canary 1 (setWeight 5), scrape 1s")
    p.add_argument("--from-start", action="store_true",
                   help="the fault is in the canary from its first pod; time from the canary taking traffic")
    p.add_argument("--window", default=None, help="spec.analysis.window (default: the profile's)")
    p.add_argument("--min-requests", type=int, help="spec.analysis.minRequests (default: the Rollout default)")
    p.add_argument("--failure-limit", type=int, help="spec.analysis.failureLimit (default: the Rollout default)")
    p.add_argument("--json", metavar="PATH", help="also write parameters, summary and every trial as JSON")
    p.add_argument("--verbose", action="store_true", help="print each trial as it ends")
    p.add_argument("--only-ours", action="store_true",
                   help="only our live operator (the --profile benchmark), no peers and no simulated part")
    from benchmarks import compare  # the side-by-side part builds on this module

    compare.add_arguments(p)
    args = p.parse_args(argv)
    if args.tick is None:
        args.tick = OPERATOR_TICK if args.only_ours else 1.0
    if args.runs < 1 or args.concurrency < 1:
        p.error("--runs and --concurrency must be at least 1")
    if args.healthy_seconds + args.warmup_timeout >= 600:
        p.error("--healthy-seconds + --warmup-timeout must stay below the 10m pause step")
    by_name = {sc.name: sc for sc in SCENARIOS}
    wanted = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown or not wanted:
        p.error(f"unknown scenario(s) {unknown}; choose from {', '.join(by_name)}")
    if not args.only_ours:
        if args.profile == "tuned":
            p.error("side by side judges the critical example: use --only-ours for --profile tuned")
        if min(args.sim_runs, args.sim_hard_runs) < 1 or args.record_seconds < 60:
            p.error("--sim-runs and --sim-hard-runs must be >= 1, --record-seconds >= 60")
        return compare.run(args)
    analysis = use_profile(args.profile or "tuned")
    if args.window is not None:
        analysis["window"] = args.window
    if args.min_requests is not None:
        analysis["minRequests"] = args.min_requests
    if args.failure_limit is not None:
        analysis["failureLimit"] = args.failure_limit
    try:
        rollout_spec("check", analysis)
    except ValueError as err:
        p.error(f"invalid analysis settings: {err}")
    s = Settings(args.runs, args.timeout, args.healthy_seconds, args.warmup_timeout, args.concurrency,
                 args.rate, args.tick, args.seed, args.verbose, analysis, tuple(by_name[n] for n in wanted),
                 args.from_start)

    config = TrafficConfig(rate=s.rate, base_error_rate=BASE_ERROR_RATE)
    model = TrafficModel(config, seed=s.seed)
    source = StaticSource()
    order = trial_order(s.scenarios, s.runs)
    results: list[TrialResult] = []
    started = time.monotonic()
    print_lock = threading.Lock()
    with serve(model, source) as sim, running_prometheus([sim.target], SCRAPE_INTERVAL) as prom:
        header = parameters(s, config)
        print("\n".join(header), flush=True)
        print(f"running {len(order)} trials ...", file=sys.stderr, flush=True)
        with ThreadPoolExecutor(max_workers=s.concurrency) as pool:
            futures = [pool.submit(run_trial, sc, i, s, source, model, prom) for sc, i in order]
            for fut in as_completed(futures):
                r = fut.result()
                results.append(r)
                if s.verbose:
                    with print_lock:
                        took = r.detect_s if r.detect_s is not None else r.observed_s
                        print(f"[{len(results)}/{len(order)}] {r.service}: {r.outcome}"
                              + (f" after {took:.1f}s" if took is not None else "") + f": {r.message}",
                              file=sys.stderr, flush=True)
    results.sort(key=lambda r: (r.scenario, r.run))
    summary = summarise(results, s)
    print()
    print("\n".join(render(summary, results, s)))
    print(f"(wall time {time.monotonic() - started:.0f}s)")
    if args.json:
        doc = {"parameters": header, "settings": asdict(s), "summary": summary,
               "trials": [asdict(r) for r in results]}
        with open(args.json, "w") as f:
            json.dump(_jsonable(doc), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
