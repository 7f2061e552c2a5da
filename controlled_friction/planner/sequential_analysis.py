"""errorRatio and orderRateDrop judged by anytime-valid sequential tests, one look at a time.

Pure: no I/O, no clock. Each look brings the cumulative counters of the canary revision and of the
stable track (`analysis.*_TOTAL`); the previous look's totals and the running test are kept in the
metric's status (`MetricState.totals`, `MetricState.sequential`), so a restarted operator continues
the same test. Here:

- increments are exact counter differences since the previous look. A counter that went down (a pod
  restarted or went away) is a reset: that look is skipped for that track, and its totals become the
  next look's starting point. A series that vanishes between looks (a failed scrape) is not a reset:
  that look is skipped and the previous totals stay the starting point (`vanished`). A canary without a
  series at the previous look is counted from zero (its
  revision's counters start with its pods). Looks begin while the canary's pods start (weight 0), so
  the first look after it serves compares both tracks over the same seconds; without such a look (the
  status was lost) the first one only feeds the canary-only check (maxRatio).
- a new test starts for a new canary revision (the planner resets the analysis state) and whenever
  the metric's bounds change; a test that rejects stays rejected (the canary is rolled back at once).
- quiet is not broken: no canary requests yet, fewer than `minRequests` seen by the test, no new
  canary requests since the last look, or no stable traffic to compare with, make the metric `quiet`
  (hold the step, never promote; `quietLimit` rolls back), with the achieved vs needed sample size.
- restarts: evidence for "healthy" piles up while a canary is healthy, so a fault that appears late
  (after a long healthy bake, at a higher weight) would first have to pay that back. Besides the main
  test (weight MAIN_WEIGHT) a fresh test starts every RESTART_EVERY looks; the j-th gets weight
  (1 - MAIN_WEIGHT) * 6/(pi^2 j^2), so the weights sum to at most 1 and the weighted sum of the
  e-values is still an e-process for the whole canary (each restarted one is 1 until it starts): the
  canary is rolled back when the sum reaches 1/alpha, and the false-rollback bound alpha holds over
  the whole canary as before. Only the latest KEEP_RESTARTS are kept (dropping a term only lowers the
  sum). Cost: a fault present from the start needs evidence 1/(alpha * MAIN_WEIGHT) instead of 1/alpha.
- `maxBaselineDrop` (service order rate vs before the rollout) stays a plain threshold
  (`analysis.baseline_check`, failureLimit applies); see docs/sequential-analysis.md for why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from controlled_friction import sequential
from controlled_friction.analysis import (
    CANARY_ERRORS_TOTAL,
    CANARY_ORDERS_TOTAL,
    CANARY_REQUESTS_TOTAL,
    STABLE_ERRORS_TOTAL,
    STABLE_ORDERS_TOTAL,
    STABLE_REQUESTS_TOTAL,
    QueryContext,
    baseline_check,
    baseline_drop,
    bound_text,
    num,
    pct,
)
from controlled_friction.models.rollout import CounterTotals, Measurement, MetricSpec, MetricState, RestartedTest
from controlled_friction.sequential import Counts, SequentialState

MAIN_WEIGHT = 0.8
RESTART_EVERY = 5  # looks (10 s at the default 2 s interval)
KEEP_RESTARTS = 3
EVIDENCE_CAP = 1e12  # shown evidence is capped (an overwhelming fault's e-value overflows a float)
_SLACK = 1e-9  # relative: float sums of the same counters may differ in the last bits


@dataclass(frozen=True)
class Judged:
    """One metric's look: its verdict, and what the metric's status keeps for the next look."""

    measurement: Measurement
    sequential: SequentialState | None = None
    totals: CounterTotals | None = None
    restarts: tuple[RestartedTest, ...] = ()


def restart_weight(j: int) -> float:
    return (1 - MAIN_WEIGHT) * 6 / (math.pi**2 * j**2)


def combined_log_e(main: SequentialState, restarts: tuple[RestartedTest, ...] | list[RestartedTest]) -> float:
    """log of MAIN_WEIGHT * E_main + sum_j w_j * E_j: the evidence the canary is judged on."""
    terms = [math.log(MAIN_WEIGHT) + main.log_e_value]
    terms += [math.log(restart_weight(r.index)) + r.test.log_e_value for r in restarts]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def test_bounds(metric: MetricSpec) -> dict[str, float] | None:
    """The bounds the metric's sequential test checks (None: nothing to test sequentially)."""
    if metric.kind == "errorRatio":
        out = {}
        if metric.max_ratio is not None:
            out["max_ratio"] = metric.max_ratio
        if metric.max_increase_over_stable is not None:
            out["max_increase_over_stable"] = metric.max_increase_over_stable
        return out or None
    if metric.kind == "orderRateDrop" and metric.max_drop is not None:
        return {"max_drop": metric.max_drop}
    return None


_CHECK_OF = {"max_ratio": "maxRatio", "max_increase_over_stable": "maxIncreaseOverStable", "max_drop": "maxDrop"}


def _same_test(state: SequentialState, bounds: dict[str, float]) -> bool:
    want = sorted((_CHECK_OF[k], v) for k, v in bounds.items())
    have = sorted((c.check, c.bound) for c in state.checks)
    return want == have and state.alpha == sequential.DEFAULT_ALPHA


def totals_of(metric: MetricSpec, v: dict[str, float | None]) -> CounterTotals:
    events = (CANARY_ERRORS_TOTAL, STABLE_ERRORS_TOTAL) if metric.kind == "errorRatio" else (
        CANARY_ORDERS_TOTAL, STABLE_ORDERS_TOTAL)
    return CounterTotals(
        canary_requests=num(v.get(CANARY_REQUESTS_TOTAL)),
        canary_events=num(v.get(events[0])),
        stable_requests=num(v.get(STABLE_REQUESTS_TOTAL)),
        stable_events=num(v.get(events[1])),
    )


def _diff(now: float, before: float) -> float | None:
    """now - before, or None when the counter went down (a reset)."""
    d = now - before
    if d < 0:
        return 0.0 if -d <= _SLACK * max(1.0, abs(before)) else None
    return d


def increments(prev: CounterTotals | None, cur: CounterTotals) -> tuple[Counts | None, str]:
    """What this look adds to the test, and a note when something was skipped.

    Events without a series count as 0 while the track has requests (no 5xx or no order happened yet).
    """
    if cur.canary_requests is None:
        return None, ""
    c_ev = cur.canary_events or 0.0
    if prev is None:
        # The canary revision's counters started at 0 with its pods: its totals are exact counts since
        # then. Stable's over the same seconds are unknown, so this look only feeds maxRatio.
        return Counts(cur.canary_requests, c_ev), "first look: comparisons with stable start at the next look"
    if prev.canary_requests is None:
        # No canary series at the previous look (its pods were starting): all its counts are since then,
        # the same seconds as stable's difference.
        dr, de = cur.canary_requests, c_ev
    else:
        d1, d2 = _diff(cur.canary_requests, prev.canary_requests), _diff(c_ev, prev.canary_events or 0.0)
        if d1 is None or d2 is None:
            return None, "canary counters went down (a pod restarted or went away): look skipped"
        dr, de = d1, d2
    if cur.stable_requests is None or prev.stable_requests is None:
        return Counts(dr, de), ""
    sr = _diff(cur.stable_requests, prev.stable_requests)
    se = _diff(cur.stable_events or 0.0, prev.stable_events or 0.0)
    if sr is None or se is None:
        return Counts(dr, de), "stable counters went down (a pod restarted or went away): comparison skipped"
    return Counts(dr, de, sr, se), ""


def vanished(prev: CounterTotals | None, cur: CounterTotals) -> str | None:
    """Why this look must be skipped with the previous totals kept: a series the previous look counted
    is absent now. That is a failed or late scrape (every series of the target goes stale at once, and
    the queries of one look run at different instants), not a reset: counting it as 0 would make the
    next look add the whole counter as one increment (the side-by-side benchmark rolled back healthy
    canaries on maxDrop that way under load)."""
    if prev is None:
        return None
    pairs = (("canary requests", prev.canary_requests, cur.canary_requests),
             ("canary 5xx or orders", prev.canary_events, cur.canary_events),
             ("stable requests", prev.stable_requests, cur.stable_requests),
             ("stable 5xx or orders", prev.stable_events, cur.stable_events))
    gone = [name for name, before, now in pairs if before is not None and before > 0 and now is None]
    if not gone:
        return None
    return f"{', '.join(gone)} series missing (a failed or late scrape): look skipped, previous totals kept"


def _quiet_reason(metric: MetricSpec, ctx: QueryContext, cur: CounterTotals, counts: Counts | None,
                  state: SequentialState | None, note: str) -> str | None:
    if cur.canary_requests is None:
        return f"no requests reached canary revision {ctx.canary_revision} yet"
    seen = state.canary_requests if state is not None else cur.canary_requests
    if seen < ctx.min_requests:
        return f"{seen:.0f} canary requests so far < minRequests {ctx.min_requests}"
    if state is None:
        return None  # a baseline-only metric: the canary had traffic, nothing else to wait for
    if counts is None:
        return note or "no new counts in this look"
    if counts.canary_requests <= 0:
        return "no new canary requests since the last look (low traffic or a lagging scrape)"
    comparisons_only = all(c.check != "maxRatio" for c in state.checks)
    if comparisons_only and counts.stable_requests <= 0:
        return note or "no stable requests since the last look to compare with"
    return None


def _describe(metric: MetricSpec, s: SequentialState) -> str:
    what = "5xx" if metric.kind == "errorRatio" else "orders per request"
    if s.canary_requests <= 0:
        return f"canary {what}: no requests seen by the test yet"
    canary = s.canary_events / s.canary_requests
    stable = s.stable_events / s.stable_requests if s.stable_requests > 0 else None
    if metric.kind == "errorRatio":
        ref = f" vs stable {pct(stable)}" if stable is not None else ""
        return f"canary 5xx {pct(canary)} of {s.canary_requests:.0f} requests{ref}"
    ref = f" vs stable {stable:.3g}" if stable is not None else ""
    drop = f" (drop {pct(1 - canary / stable)})" if stable else ""
    return f"canary {what} {canary:.3g}{ref}{drop}"


def _value(metric: MetricSpec, s: SequentialState | None, v: dict[str, float | None]) -> float | None:
    if s is None or s.canary_requests <= 0:
        return baseline_drop(v) if metric.kind == "orderRateDrop" else None
    canary = s.canary_events / s.canary_requests
    if metric.kind == "errorRatio":
        return canary
    stable = s.stable_events / s.stable_requests if s.stable_requests > 0 else 0.0
    return 1 - canary / stable if stable > 0 else None


def judge_builtin(metric: MetricSpec, values: dict[str, float | None], ctx: QueryContext,
                  prev: MetricState | None, now: datetime) -> Judged:
    """The verdict on an errorRatio or orderRateDrop metric at one look."""
    v = {k: num(x) for k, x in values.items()}
    cur = totals_of(metric, v)
    bounds = test_bounds(metric)
    state = prev.sequential if prev is not None else None
    if bounds is None:
        state = None
    elif state is None or not _same_test(state, bounds):
        state = sequential.start(**bounds)
    prev_totals = prev.totals if prev is not None else None
    missing = vanished(prev_totals, cur)
    counts, note = (None, missing) if missing else increments(prev_totals, cur)
    keep = prev_totals if missing else cur  # the next look's starting point
    same_test = prev is not None and state is not None and prev.sequential is state
    restarts: list[RestartedTest] = list(prev.restarts) if prev is not None and same_test else []
    if state is not None and counts is not None:
        state = sequential.observe(state, counts)
        restarts = [RestartedTest.model_construct(index=r.index, test=sequential.observe(r.test, counts))
                    for r in restarts]
    if state is not None and state.looks > 0 and state.looks % RESTART_EVERY == 0 and (
            not restarts or restarts[-1].test.looks > 0):
        j = state.looks // RESTART_EVERY  # a data-independent schedule: the j-th restart has a fixed weight
        restarts = [*restarts, RestartedTest(index=j, test=sequential.start(**(bounds or {})))][-KEEP_RESTARTS:]
    assessment = sequential.assess(state) if state is not None else None
    log_e = combined_log_e(state, restarts) if state is not None else None
    was_rejected = same_test and prev is not None and prev.last is not None and prev.last.decisive
    rejected = state is not None and log_e is not None and (log_e >= -math.log(state.alpha) or was_rejected)
    quiet = missing or _quiet_reason(metric, ctx, cur, counts, state, note)
    baseline = baseline_check(metric, v, ctx)

    parts: list[str] = []
    verdict: str
    decisive = False
    if rejected:
        verdict, decisive = "fail", True
    elif baseline is not None and baseline.verdict == "fail":
        verdict = "fail"
    elif quiet is not None:
        verdict = "quiet"
        parts.append(f"quiet: {quiet}")
    elif baseline is not None and baseline.verdict == "inconclusive" and not baseline.reference_missing:
        verdict = "inconclusive"
    else:
        verdict = "pass"
    if state is not None and assessment is not None and log_e is not None:
        parts.append(f"{_describe(metric, state)}: {_verdict_text(assessment, log_e, rejected, len(restarts))}")
    if baseline is not None:
        parts.append(baseline.message)
    if note and quiet != note:
        parts.append(note)
    e = math.exp(min(log_e, 700.0)) if log_e is not None else None
    measurement = Measurement.model_validate({
        "metric": metric.name,
        "verdict": verdict,
        "value": _value(metric, state, v),
        "bound": bound_text(metric),
        "message": "; ".join(parts),
        "time": now,
        "decisive": decisive,
        "evidence": None if e is None else (min(e, EVIDENCE_CAP) if math.isfinite(e) else EVIDENCE_CAP),
        "threshold": assessment.threshold if assessment is not None else None,
        "canaryRequests": state.canary_requests if state is not None else cur.canary_requests,
        "neededRequests": assessment.needed_requests if assessment is not None else None,
    })
    return Judged(measurement, state, keep, tuple(restarts))


def _verdict_text(a: sequential.Assessment, log_e: float, rejected: bool, restarts: int) -> str:
    e = math.exp(min(log_e, 700.0))
    later = f" (main test and {restarts} restarted)" if restarts else ""
    if rejected:
        worst = max(a.checks, key=lambda c: c.e_value)
        text = (f"{worst.check} {worst.bound:g} violated: evidence {e:.3g}{later} >= {a.threshold:g} "
                f"(false-rollback budget {1 / a.threshold:.0%})")
    else:
        text = f"evidence {e:.3g}{later} of {a.threshold:g} needed"
    text += f"; {a.canary_requests:.0f} canary requests"
    needed = [c for c in a.checks if c.needed_requests is not None]
    if needed and not rejected:
        best = min(needed, key=lambda c: c.needed_requests or math.inf)
        text += f", ~{best.needed_requests:.0f} would catch {best.design_effect}"
    return text

