"""Anytime-valid sequential tests for the built-in metrics: look as often as you like, roll back wrongly
at most `alpha` of the time over the whole canary.

Pure: no I/O, no clock. Each look feeds the counts observed *since the previous look* (never an
overlapping window: evidence would be counted twice); the running state is a small pydantic model
persisted in the Rollout status, so an operator restart continues the same test.

API
---
- ``start(max_ratio=..., max_increase_over_stable=..., max_drop=..., alpha=0.01) -> SequentialState``
  one state per metric (errorRatio: the 5xx checks; orderRateDrop: the maxDrop check).
- ``observe(state, Counts(canary_requests, canary_events, stable_requests, stable_events)) -> SequentialState``
  events are 5xx responses (errorRatio) or orders (orderRateDrop). Returns a new state; input untouched.
- ``assess(state) -> Assessment``: verdict ``reject`` | ``continue`` (sticky once rejected), the
  metric's e-value against its threshold ``1/alpha``, and per check the requests seen vs the requests
  needed to catch the check's design effect (for display).
- ``SequentialState.wire()`` / ``SequentialState.model_validate(wire)``: the status form (camelCase).
- ``log_factor``, ``ratio_log_factor``, ``ratio_coefficients``, ``comparator``: the per-look factors,
  taking numbers or numpy arrays, so simulations run thousands of canaries through the same math.

A comparison skips looks where either track had no requests (orders counted in a look without
requests are scrape skew, not evidence); more 5xx than requests in a look are capped at the requests.

The tests (e-processes; "Ville" = P(sup_t E_t >= 1/alpha) <= alpha for a nonnegative supermartingale
with E_0 = 1):

- maxRatio: H0 every canary request fails with probability <= m. E = mixture over alternatives
  p' > m of the binomial likelihood ratio p'/m. Exact for independent requests, even if the rate
  drifts over time.
- maxIncreaseOverStable: H0 canary rate <= stable rate + delta at every look. Per look, with
  n1, n0 requests and x1, x0 5xx, and w = x0 + delta*n0 (stable's 5xx plus the allowed excess),
  factor(r) = r^x1 * ((n1 + n0) / (r*n1 + n0))^(x1 + w), mixed over rate ratios r > 1. Its
  expectation is <= 1 under H0 for any stable rate, which may change from look to look (a downstream
  blip hitting both tracks is not evidence), so the additive margin is tested exactly, not through a
  plug-in. This is the Poisson-process comparison of Lindon et al. (2022) with the margin folded
  into the comparator.
- maxDrop: H0 canary orders/request >= (1 - d) * stable's at every look. The conditional binomial of
  the look's canary orders given its total, with allocation c*n1/(c*n1 + n0), c = 1 - d, mixed over
  ratios r < 1: factor(r) = r^y1 * ((c*n1 + n0) / (r*c*n1 + n0))^(y1 + y0).

Both comparison factors are exact for Poisson counts and stay valid (expectation <= 1) for any
"sub-Poisson" counts, such as independent per-request Bernoulli 5xx or at-most-one-order-per-request
(1 + x <= e^x bounds their generating functions by Poisson's). Not covered: correlated failures that
make counts over-dispersed (client retries of 5xx, one request placing many orders) and counts
estimated by extrapolation (`increase()` scales both counts up by the same factor).

A metric with several checks averages their e-values (an e-process under the metric's null, that
every check's H0 holds), so the budget alpha is per metric, not per check.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import Field, model_validator

from controlled_friction.models.base import StatusModel

CheckKind = Literal["maxRatio", "maxIncreaseOverStable", "maxDrop"]
Verdict = Literal["reject", "continue"]
DEFAULT_ALPHA = 0.01

# Mixture designs: (alternative, weight). The weights sum to 1 per check and spend the budget: a
# component of weight w rejects when its own likelihood ratio reaches 1/(alpha*w).
# maxRatio: shifts of the log-odds above logit(maxRatio); the top one is ~99.9% 5xx at maxRatio 5%.
_RATIO_DESIGN: tuple[tuple[float, float], ...] = tuple(
    (h, 1 / 9) for h in (0.25, 0.5, 0.85, 1.3, 2.0, 3.0, 4.5, 7.0, 10.0)
)
# maxIncreaseOverStable: canary 5xx rate as a multiple of (stable rate + delta). Hard faults need
# little weight (100% 5xx is thousands of nats), so the weight leans to small ratios.
_OVER_STABLE_DESIGN: tuple[tuple[float, float], ...] = (
    (1.15, 0.13),
    (1.3, 0.13),
    (1.5, 0.13),
    (1.8, 0.12),
    (2.2, 0.11),
    (3.0, 0.1),
    (4.5, 0.08),
    (8.0, 0.07),
    (20.0, 0.07),
    (100.0, 0.06),
)
# maxDrop: canary orders/request as a fraction of the bound (1 - d) * stable's. Half the weight is on
# "(almost) every order lost": information there is scarce (a 5% canary of a 50 req/s service sees
# ~5 orders in 10 s), and that half is what lets a -99% canary fail on its first look.
_DROP_DESIGN: tuple[tuple[float, float], ...] = (
    (0.9, 0.08),
    (0.8, 0.08),
    (0.65, 0.07),
    (0.5, 0.07),
    (0.35, 0.07),
    (0.2, 0.07),
    (0.1, 0.06),
    (0.03, 0.5),
)
_DESIGNS: dict[CheckKind, tuple[tuple[float, float], ...]] = {
    "maxRatio": _RATIO_DESIGN,
    "maxIncreaseOverStable": _OVER_STABLE_DESIGN,
    "maxDrop": _DROP_DESIGN,
}
_N = TypeVar("_N", float, Any)  # a number, or a numpy array in the tests
_P_MIN, _P_MAX = 1e-6, 1 - 1e-6  # a maxRatio of 0 or 1 is clamped into (0, 1); clamping up is conservative


@dataclass(frozen=True, slots=True)
class Counts:
    """What one look saw since the previous look. Events: 5xx responses or orders, per the metric."""

    canary_requests: float
    canary_events: float
    stable_requests: float = 0.0
    stable_events: float = 0.0

    def __post_init__(self) -> None:
        values = (self.canary_requests, self.canary_events, self.stable_requests, self.stable_events)
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError(f"counts must be finite and >= 0 (a counter reset must be handled first): {values}")


class SequentialCheck(StatusModel):
    """One check's running e-process: the log likelihood ratio of each alternative in its mixture."""

    check: CheckKind = Field(description="The bound tested: maxRatio, maxIncreaseOverStable or maxDrop.")
    bound: float = Field(description="The bound's value when the canary started.")
    alternatives: list[float] = Field(
        description="Alternatives of the mixture (kept so an upgrade never re-pairs them)."
    )
    log_weights: list[float] = Field(description="Natural log of each alternative's prior weight.")
    log_evidence: list[float] = Field(description="Natural log of each alternative's likelihood ratio so far.")

    @model_validator(mode="after")
    def _aligned(self) -> SequentialCheck:
        if not len(self.alternatives) == len(self.log_weights) == len(self.log_evidence) > 0:
            raise ValueError("alternatives, logWeights and logEvidence must be non-empty and of one length")
        return self

    @property
    def log_e_value(self) -> float:
        return _logsumexp([w + e for w, e in zip(self.log_weights, self.log_evidence, strict=True)])


class SequentialState(StatusModel):
    """The sequential test of one metric for one canary revision (reset for a new revision)."""

    alpha: float = Field(default=DEFAULT_ALPHA, gt=0, lt=1, description="False-rollback budget over the canary.")
    checks: list[SequentialCheck] = Field(min_length=1, description="The metric's checks; their e-values are averaged.")
    looks: int = Field(default=0, description="Looks observed.")
    canary_requests: float = Field(default=0.0, description="Canary requests seen by the test.")
    canary_events: float = Field(default=0.0, description="Canary 5xx (errorRatio) or orders (orderRateDrop) seen.")
    stable_requests: float = Field(default=0.0, description="Stable requests seen by the test.")
    stable_events: float = Field(default=0.0, description="Stable 5xx or orders seen.")
    rejected_at_look: int | None = Field(default=None, description="The look that rejected H0 (sticky), if any.")

    @property
    def log_e_value(self) -> float:
        """log of the metric's e-value: the mean of its checks' e-values."""
        return _logsumexp([c.log_e_value for c in self.checks]) - math.log(len(self.checks))


@dataclass(frozen=True)
class CheckAssessment:
    check: CheckKind
    bound: float
    e_value: float
    needed_requests: float | None  # canary requests to reach the threshold at the design effect
    design_effect: str  # what needed_requests is computed for, e.g. "canary 5xx at 2 x maxRatio"


@dataclass(frozen=True)
class Assessment:
    verdict: Verdict
    e_value: float  # the metric's evidence against "healthy"; rejects at threshold
    threshold: float  # 1 / alpha
    canary_requests: float
    needed_requests: float | None  # the smallest over checks; None until both tracks had traffic
    checks: tuple[CheckAssessment, ...]
    message: str


def start(
    *,
    max_ratio: float | None = None,
    max_increase_over_stable: float | None = None,
    max_drop: float | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> SequentialState:
    """A fresh test for one metric: the 5xx bounds (errorRatio) or maxDrop (orderRateDrop), not both."""
    bounds: list[tuple[CheckKind, float]] = []
    if max_ratio is not None:
        bounds.append(("maxRatio", max_ratio))
    if max_increase_over_stable is not None:
        bounds.append(("maxIncreaseOverStable", max_increase_over_stable))
    if max_drop is not None:
        if bounds:
            raise ValueError("maxDrop counts orders, the other bounds count 5xx: use one state per metric")
        bounds.append(("maxDrop", max_drop))
    if not bounds:
        raise ValueError("no bound given")
    for kind, value in bounds:
        if not 0 <= value <= 1:
            raise ValueError(f"{kind} must be in [0, 1], got {value}")
    checks = [
        SequentialCheck(
            check=kind,
            bound=value,
            alternatives=[a for a, _ in _DESIGNS[kind]],
            log_weights=[math.log(w) for _, w in _DESIGNS[kind]],
            log_evidence=[0.0] * len(_DESIGNS[kind]),
        )
        for kind, value in bounds
    ]
    return SequentialState(alpha=alpha, checks=checks)


def observe(state: SequentialState, counts: Counts) -> SequentialState:
    """The state after one more look. Looks without traffic on the compared tracks change nothing."""
    # model_construct skips re-validating what this module computed (it runs every look of every
    # metric); lists are never mutated in place, so sharing the unchanged ones between states is safe.
    checks = [
        SequentialCheck.model_construct(
            check=c.check,
            bound=c.bound,
            alternatives=c.alternatives,
            log_weights=c.log_weights,
            log_evidence=_advance(c, counts),
        )
        if _informative(c.check, counts)
        else c
        for c in state.checks
    ]
    new = SequentialState.model_construct(
        alpha=state.alpha,
        checks=checks,
        looks=state.looks + 1,
        canary_requests=state.canary_requests + counts.canary_requests,
        canary_events=state.canary_events + counts.canary_events,
        stable_requests=state.stable_requests + counts.stable_requests,
        stable_events=state.stable_events + counts.stable_events,
        rejected_at_look=state.rejected_at_look,
    )
    if new.rejected_at_look is None and new.log_e_value >= -math.log(state.alpha):
        new.rejected_at_look = new.looks
    return new


def assess(state: SequentialState) -> Assessment:
    """Verdict and the figures to show: evidence vs threshold, requests seen vs needed."""
    threshold = 1 / state.alpha
    per_check = tuple(_assess_check(c, state) for c in state.checks)
    needed = [c.needed_requests for c in per_check if c.needed_requests is not None]
    e_value = _exp(state.log_e_value)
    verdict: Verdict = "reject" if state.rejected_at_look is not None else "continue"
    worst = max(per_check, key=lambda c: c.e_value)
    if verdict == "reject":
        message = (
            f"{worst.check} {worst.bound:g} violated: evidence {e_value:.3g} >= {threshold:g} "
            f"(false-rollback budget {state.alpha:.2%}) at look {state.rejected_at_look}"
        )
    else:
        message = f"evidence {e_value:.3g} of {threshold:g} needed"
    message += f"; {state.canary_requests:.0f} canary requests"
    if needed and verdict == "continue":
        message += f", ~{min(needed):.0f} would catch {min(per_check, key=_needed_key).design_effect}"
    return Assessment(
        verdict=verdict,
        e_value=e_value,
        threshold=threshold,
        canary_requests=state.canary_requests,
        needed_requests=min(needed) if needed else None,
        checks=per_check,
        message=message,
    )


# ---------------------------------------------------------------- the math


def _informative(kind: CheckKind, c: Counts) -> bool:
    if kind == "maxRatio":
        return c.canary_requests > 0
    # A comparison needs both tracks: orders counted on a track with no requests in the look (scrape
    # skew) would otherwise read as evidence.
    return c.canary_requests > 0 and c.stable_requests > 0


def _advance(check: SequentialCheck, c: Counts) -> list[float]:
    if check.check == "maxRatio":
        x = min(c.canary_events, c.canary_requests)  # more 5xx than requests is skew; capping is conservative
        coef = ratio_coefficients(check.bound, tuple(check.alternatives))
        return [e + ratio_log_factor(k, x, c.canary_requests) for e, k in zip(check.log_evidence, coef, strict=True)]
    kappa, w = comparator(check.check, check.bound, c.stable_requests, c.stable_events)
    if kappa <= 0:  # maxDrop 1: every drop is allowed, nothing to test
        return check.log_evidence
    x1 = c.canary_events if check.check == "maxDrop" else min(c.canary_events, c.canary_requests)
    return [
        e + log_factor(r, x1, w, c.canary_requests, c.stable_requests, kappa)
        for e, r in zip(check.log_evidence, check.alternatives, strict=True)
    ]


# The per-look factors below take numbers or numpy arrays (pass log=numpy.log): the tests simulate
# thousands of canaries at once through these very functions.


def comparator(kind: CheckKind, bound: float, n0: _N, x0: _N) -> tuple[float, _N]:
    """(kappa, w) of a comparison check: H0 is canary rate <= / >= kappa * stable's, w the comparator's events."""
    if kind == "maxIncreaseOverStable":
        return 1.0, x0 + bound * n0  # stable's 5xx plus the allowed excess on stable's requests
    return 1.0 - bound, x0


def log_factor(r: float, x1: _N, w: _N, n1: _N, n0: _N, kappa: float, log: Callable[[_N], _N] = math.log) -> _N:
    """log of r^x1 * ((kappa*n1 + n0) / (r*kappa*n1 + n0))^(x1 + w): a comparison's factor for one look.

    Under H0's boundary (canary rate kappa * stable's) this is the conditional binomial likelihood
    ratio of the canary's share x1 of the x1 + w events, alternative: canary rate r times that.
    """
    a = kappa * n1
    return x1 * math.log(r) + (x1 + w) * (log(a + n0) - log(r * a + n0))


def ratio_log_factor(coefficients: tuple[float, float], x: _N, n: _N) -> _N:
    """maxRatio's factor for one look: x failed of n requests, coefficients from `ratio_coefficients`."""
    on_fail, on_success = coefficients
    return x * on_fail + (n - x) * on_success


@functools.lru_cache(maxsize=256)
def ratio_coefficients(bound: float, shifts: tuple[float, ...]) -> tuple[tuple[float, float], ...]:
    """Per alternative p' = expit(logit(m) + shift): the log-LR of one failed and of one good request."""
    m = _clamp(bound)
    base = math.log(m / (1 - m))
    out = []
    for h in shifts:
        p = 1 / (1 + math.exp(-(base + h)))
        out.append((math.log(p / m), math.log((1 - p) / (1 - m))))
    return tuple(out)


def _clamp(p: float) -> float:
    return min(max(p, _P_MIN), _P_MAX)


def _logsumexp(xs: Sequence[float]) -> float:
    top = max(xs)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(x - top) for x in xs))


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


# ---------------------------------------------------------------- sample size for display


def _assess_check(check: SequentialCheck, state: SequentialState) -> CheckAssessment:
    # Each check must reach len(checks)/alpha alone for the average to reach 1/alpha.
    target = math.log(len(state.checks) / state.alpha)
    drifts, effect = _design_drifts(check, state)
    needed: float | None = None
    if drifts is not None:
        candidates = [(target - lw) / d for lw, d in zip(check.log_weights, drifts, strict=True) if d > 0]
        needed = min(candidates) if candidates else None
    return CheckAssessment(check.check, check.bound, _exp(check.log_e_value), needed, effect)


def _design_drifts(check: SequentialCheck, s: SequentialState) -> tuple[list[float] | None, str]:
    """Expected log-LR per canary request of each alternative if the canary had the design effect:
    twice as far from healthy as the bound allows (at least a 0.1-point or 10% change)."""
    if check.check == "maxRatio":
        p = min(max(2 * check.bound, check.bound + 0.001), (1 + check.bound) / 2)
        coef = ratio_coefficients(check.bound, tuple(check.alternatives))
        return [p * a + (1 - p) * b for a, b in coef], "canary 5xx at 2 x maxRatio"
    if s.canary_requests <= 0 or s.stable_requests <= 0:
        return None, "unknown until both tracks had traffic"
    k = s.stable_requests / s.canary_requests  # stable requests per canary request
    if check.check == "maxIncreaseOverStable":
        p0 = s.stable_events / s.stable_requests
        p1 = p0 + max(2 * check.bound, p0, 0.001)
        w = k * (p0 + check.bound)
        drifts = [log_factor(r, p1, w, 1.0, k, 1.0) for r in check.alternatives]
        return drifts, "canary 5xx over stable by 2 x maxIncreaseOverStable"
    c = 1.0 - check.bound
    q0 = s.stable_events / s.stable_requests
    if c <= 0 or q0 <= 0:
        return None, "unknown until stable has orders"
    q1 = q0 * (1 - min(max(2 * check.bound, 0.1), 1.0))
    drifts = [log_factor(r, q1, k * q0, 1.0, k, c) for r in check.alternatives]
    return drifts, "canary orders dropping by 2 x maxDrop"


def _needed_key(c: CheckAssessment) -> float:
    return c.needed_requests if c.needed_requests is not None else math.inf
