"""EMULATIONS of the judgement rules of peer tools, for side-by-side benchmarks on the same looks.

These are not the tools: each class re-implements only the rule that turns a sequence of windowed
measurements into "roll back or not", with that tool's documented defaults, so the benchmark can feed
every judge the same Prometheus data. Traffic shifting, retries and UI are out of scope. Pure: no
I/O, no clock (time comes in the looks).

    judge = ArgoRollouts(checks=thresholds(max_ratio=0.05, max_increase_over_stable=0.01))
    for look in looks:                       # e.g. every 2 s, values over each judge's `window`
        verdict = judge.observe(look)        # "continue" | "rollback" | "paused"

A judge acts only on looks at least its `interval` after the previous one it acted on (the tool's
own analysis interval); other looks return its latest verdict. `window` is the query window the
tool would use; the benchmark computes the look's values over it.

- Argo Rollouts (AnalysisTemplate metric, `docs/features/analysis.md`; analysis controller): each
  measurement is Successful, Failed (condition not met), Error (query failed, or an empty result, which
  makes `result[0]` fail to evaluate) or Inconclusive. The metric is Failed when failed > failureLimit
  (default 0: the first failure; failures are counted in total, not in a row), Error when consecutive
  errors > consecutiveErrorLimit (default 4: the 5th in a row), Inconclusive when inconclusive >
  inconclusiveLimit (default 0). Failed and Error abort (roll back); Inconclusive pauses the rollout
  for a human. A NaN value (0/0) does not meet `result[0] <= x`: Failed. Interval as configured.
- Flagger (Canary `analysis`, `pkg/controller/scheduler.go`): every `interval` (default 1m; values
  under 10s are raised to 10s) all metrics are checked against their `thresholdRange`; a metric out
  of range, with no values (NaN or empty) or a failed query is a failed check (`failedChecks + 1`).
  The count is never reset during the analysis; at the start of each interval, failedChecks >=
  `threshold` (default 1) rolls back — so the rollback comes one interval after the last failed check.
- Kayenta (NetflixACAJudge + MannWhitneyClassifier, `kayenta-judge`): per metric, the canary's
  samples (one per `step`) are compared with the baseline's by a Mann-Whitney U test at confidence
  0.98 with tolerance 0.25: "High" when the interval's lower end exceeds 0.25 x |Hodges-Lehmann
  estimate| and mean(canary)/mean(baseline) >= 1 (for a metric that must not increase; "Low"
  mirrors it for one that must not decrease). Score = 100 x passing metrics / judged metrics; a score
  below `marginal` (75, Spinnaker's usual default) fails the canary. Judged every `interval` over all
  samples so far. Here the baseline is the stable track (Kayenta prefers a fresh baseline cluster).
  The confidence interval uses the normal approximation of R's `wilcox.test` (the exact small-sample
  distribution and the tie correction are left out); looks with a Prometheus error add no sample.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

JudgeVerdict = Literal["continue", "rollback", "paused"]


@dataclass(frozen=True)
class Look:
    """One look's windowed values. None: Prometheus returned no series; NaN: it returned 0/0."""

    t: float  # seconds since the canary took traffic
    canary_requests: float | None = None
    canary_error_ratio: float | None = None
    stable_error_ratio: float | None = None
    canary_orders_per_request: float | None = None
    stable_orders_per_request: float | None = None
    error: bool = False  # Prometheus unreachable or the query was refused


MeasurementResult = Literal["pass", "fail", "inconclusive", "nodata"]


@dataclass(frozen=True)
class Check:
    """A per-measurement threshold, as a user of these tools would write our bounds.

    With `margin`, values beyond the bound but within bound + margin are "inconclusive" (Argo: a
    successCondition at the bound and a failureCondition at bound + margin, neither met)."""

    name: str
    value: Callable[[Look], float | None]  # the measured value, None if no series
    bound: Callable[[Look], float | None]  # the limit; None if it cannot be computed (no reference)
    above_is_bad: bool = True
    margin: float = 0.0

    def judge(self, look: Look) -> MeasurementResult:
        value, bound = self.value(look), self.bound(look)
        if value is None or bound is None:
            return "nodata"
        if math.isnan(value) or math.isnan(bound):
            return "fail"  # NaN meets no condition
        excess = value - bound if self.above_is_bad else bound - value
        if excess <= 0:
            return "pass"
        return "inconclusive" if excess <= self.margin else "fail"


def thresholds(
    *, max_ratio: float | None = None, max_increase_over_stable: float | None = None, max_drop: float | None = None
) -> list[Check]:
    """Our built-in bounds as plain per-measurement thresholds (no noise allowance)."""
    checks: list[Check] = []
    if max_ratio is not None:
        checks.append(Check("maxRatio", lambda v: v.canary_error_ratio, lambda v: max_ratio))
    if max_increase_over_stable is not None:
        checks.append(
            Check(
                "maxIncreaseOverStable",
                lambda v: v.canary_error_ratio,
                lambda v: None if v.stable_error_ratio is None else v.stable_error_ratio + max_increase_over_stable,
            )
        )
    if max_drop is not None:
        checks.append(
            Check(
                "maxDrop",
                lambda v: v.canary_orders_per_request,
                lambda v: None if v.stable_orders_per_request is None else v.stable_orders_per_request * (1 - max_drop),
                above_is_bad=False,
            )
        )
    return checks


@dataclass
class _Paced:
    interval: float
    _last_t: float | None = field(default=None, init=False)
    verdict: JudgeVerdict = field(default="continue", init=False)

    def _due(self, look: Look) -> bool:
        if self.verdict != "continue":
            return False
        if self._last_t is not None and look.t - self._last_t < self.interval - 1e-9:
            return False
        self._last_t = look.t
        return True


@dataclass
class _ArgoCounts:
    failed: int = 0
    inconclusive: int = 0
    consecutive_errors: int = 0


@dataclass
class ArgoRollouts(_Paced):
    """EMULATION of Argo Rollouts' AnalysisRun rule (see the module docstring); each check is its own
    AnalysisTemplate metric with its own counters."""

    checks: list[Check] = field(default_factory=list)
    interval: float = 10.0
    window: float = 60.0
    failure_limit: int = 0
    consecutive_error_limit: int = 4
    inconclusive_limit: int = 0
    counts: dict[str, _ArgoCounts] = field(default_factory=dict, init=False)

    def observe(self, look: Look) -> JudgeVerdict:
        if not self._due(look):
            return self.verdict
        for check in self.checks:
            n = self.counts.setdefault(check.name, _ArgoCounts())
            result = "nodata" if look.error else check.judge(look)
            if result == "nodata":
                n.consecutive_errors += 1
                continue
            n.consecutive_errors = 0
            if result == "fail":
                n.failed += 1
            elif result == "inconclusive":
                n.inconclusive += 1
        counts = list(self.counts.values())
        if any(n.failed > self.failure_limit or n.consecutive_errors > self.consecutive_error_limit for n in counts):
            self.verdict = "rollback"
        elif any(n.inconclusive > self.inconclusive_limit for n in counts):
            self.verdict = "paused"
        return self.verdict


@dataclass
class Flagger(_Paced):
    """EMULATION of Flagger's failed-checks rule (see the module docstring)."""

    checks: list[Check] = field(default_factory=list)
    interval: float = 60.0
    window: float = 60.0
    threshold: int = 1
    failed_checks: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.interval = max(self.interval, 10.0)  # Flagger raises intervals under 10 s to 10 s

    def observe(self, look: Look) -> JudgeVerdict:
        if not self._due(look):
            return self.verdict
        if self.failed_checks >= self.threshold:  # checked at the start of the interval
            self.verdict = "rollback"
            return self.verdict
        results = [c.judge(look) for c in self.checks]
        if look.error or any(r != "pass" for r in results):
            self.failed_checks += 1
        return self.verdict


@dataclass(frozen=True)
class KayentaMetric:
    name: str
    canary: Callable[[Look], float | None]
    baseline: Callable[[Look], float | None]
    direction: Literal["increase", "decrease"]  # the direction that is bad


def kayenta_metrics(*, errors: bool = True, orders: bool = True) -> list[KayentaMetric]:
    out = []
    if errors:
        out.append(
            KayentaMetric("5xx ratio", lambda v: v.canary_error_ratio, lambda v: v.stable_error_ratio, "increase")
        )
    if orders:
        out.append(
            KayentaMetric(
                "orders per request",
                lambda v: v.canary_orders_per_request,
                lambda v: v.stable_orders_per_request,
                "decrease",
            )
        )
    return out


@dataclass
class Kayenta(_Paced):
    """EMULATION of Kayenta's Mann-Whitney judge and score (see the module docstring)."""

    metrics: list[KayentaMetric] = field(default_factory=list)
    interval: float = 60.0
    step: float = 10.0  # seconds between samples (one windowed value per step)
    window: float = 10.0
    confidence: float = 0.98
    tolerance: float = 0.25
    marginal: float = 75.0
    samples: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict, init=False)
    _last_sample_t: float | None = field(default=None, init=False)

    def observe(self, look: Look) -> JudgeVerdict:
        self._sample(look)
        if not self._due(look):
            return self.verdict
        classes = [self.classify(m) for m in self.metrics]
        judged = [c for c in classes if c != "nodata"]
        if judged and 100.0 * judged.count("pass") / len(judged) < self.marginal:
            self.verdict = "rollback"
        return self.verdict

    def _sample(self, look: Look) -> None:
        if look.error or (self._last_sample_t is not None and look.t - self._last_sample_t < self.step - 1e-9):
            return
        self._last_sample_t = look.t
        for m in self.metrics:
            c, b = m.canary(look), m.baseline(look)
            if c is not None and b is not None and math.isfinite(c) and math.isfinite(b):
                canary, baseline = self.samples.setdefault(m.name, ([], []))
                canary.append(c)
                baseline.append(b)

    def classify(self, metric: KayentaMetric) -> Literal["pass", "high", "low", "nodata"]:
        canary, baseline = self.samples.get(metric.name, ([], []))
        if not canary or not baseline:
            return "nodata"
        if sorted(canary) == sorted(baseline) or len(set(canary) | set(baseline)) == 1:
            return "pass"
        estimate, lower, upper = hodges_lehmann(canary, baseline, self.confidence)
        bound = self.tolerance * abs(estimate)
        mean_b = statistics.fmean(baseline)
        ratio = 1.0 if mean_b == 0 else statistics.fmean(canary) / mean_b
        if metric.direction == "increase" and lower > bound and ratio >= 1.0:
            return "high"
        if metric.direction == "decrease" and upper < -bound and ratio <= 1.0:
            return "low"
        return "pass"


def hodges_lehmann(x: list[float], y: list[float], confidence: float) -> tuple[float, float, float]:
    """Shift estimate of x - y (median of pairwise differences) and its Mann-Whitney confidence interval
    (normal approximation): the k-th smallest and largest differences, k = mn/2 - z sqrt(mn(m+n+1)/12).
    An interval that would need more differences than exist is unbounded."""
    diffs = sorted(a - b for a in x for b in y)
    m, n = len(x), len(y)
    z = statistics.NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    k = math.floor(m * n / 2 - z * math.sqrt(m * n * (m + n + 1) / 12))
    estimate = statistics.median(diffs)
    if k < 1:
        return estimate, -math.inf, math.inf
    return estimate, diffs[k - 1], diffs[len(diffs) - k]
