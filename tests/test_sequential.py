"""The sequential tests: exact validity on small cases, type-I error and power by seeded simulation,
the state's wire form, and properties of the evidence.

The simulations run thousands of canaries at once through the module's own per-look factor
functions with numpy arrays; `test_vectorised_path_matches_observe` ties that path to `observe`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlled_friction import sequential as sq

ALPHA = 0.01
ERRORS = {"max_ratio": 0.05, "max_increase_over_stable": 0.01}  # benchmarks/detection.py's bounds
ORDERS = {"max_drop": 0.3}
LOOK = 2.0  # seconds between looks (simulate: one look if `seconds` is shorter)
RATE = 50.0  # service requests per second
CANARY_SECONDS = 600.0
PROPERTY = settings(max_examples=50, deadline=None, derandomize=True)  # deterministic, like the seeds


def slack(runs: int, alpha: float = ALPHA) -> float:
    """Three Monte-Carlo standard errors of a rate alpha over `runs`."""
    return 3 * math.sqrt(alpha * (1 - alpha) / runs)


@dataclass
class Run:
    first: np.ndarray  # look index of the first rejection, -1 if none
    canary_requests: np.ndarray  # canary requests seen up to the rejection (or the end)

    @property
    def rate(self) -> float:
        return float((self.first > 0).mean())

    def seconds(self) -> np.ndarray:
        return self.first[self.first > 0] * LOOK


def simulate(
    seed: int,
    runs: int,
    bounds: dict[str, float],
    *,
    seconds: float = CANARY_SECONDS,
    share: float | tuple[float, float] = (0.05, 0.5),
    p_stable: float | np.ndarray = 0.005,
    p_canary: float | np.ndarray | None = None,
    q_stable: float = 0.3,
    q_canary: float | None = None,
    shares_over_time: list[float] | None = None,
) -> Run:
    """`runs` canaries looked at every 2 s; requests Poisson, split binomially; 5xx and orders binomial
    per request. p_* may be arrays over looks (a rate that drifts); None means "same as stable"."""
    rng = np.random.default_rng(seed)
    state = sq.start(alpha=ALPHA, **bounds)
    orders = "max_drop" in bounds
    base_share = rng.uniform(*share, runs) if isinstance(share, tuple) else np.full(runs, share)
    evidence = [np.zeros((len(c.alternatives), runs)) for c in state.checks]
    log_w = [np.array(c.log_weights)[:, None] for c in state.checks]
    first = np.full(runs, -1)
    seen = np.zeros(runs)
    looks = max(1, int(seconds / LOOK))
    look_seconds = seconds / looks
    for look in range(1, looks + 1):
        s = base_share if shares_over_time is None else np.full(runs, shares_over_time[look - 1])
        n = rng.poisson(RATE * look_seconds, runs)
        n1 = rng.binomial(n, s)
        n0 = n - n1
        ps = p_stable[look - 1] if isinstance(p_stable, np.ndarray) else p_stable
        pc = ps if p_canary is None else (p_canary[look - 1] if isinstance(p_canary, np.ndarray) else p_canary)
        if orders:
            x1 = rng.binomial(n1, q_stable if q_canary is None else q_canary)
            x0 = rng.binomial(n0, q_stable)
        else:
            x1, x0 = rng.binomial(n1, pc), rng.binomial(n0, ps)
        for check, ev in zip(state.checks, evidence, strict=True):
            if check.check == "maxRatio":
                for k, coef in enumerate(sq.ratio_coefficients(check.bound, tuple(check.alternatives))):
                    ev[k] += sq.ratio_log_factor(coef, x1, n1)
            else:
                kappa, w = sq.comparator(check.check, check.bound, n0, x0)
                for k, r in enumerate(check.alternatives):
                    ev[k] += sq.log_factor(r, x1, w, n1, n0, kappa, log=np.log)
        per_check = np.stack([np.logaddexp.reduce(w + ev, axis=0) for w, ev in zip(log_w, evidence, strict=True)])
        log_e = np.logaddexp.reduce(per_check, axis=0) - math.log(len(evidence))
        live = first < 0
        seen[live] += n1[live]
        first[live & (log_e >= -math.log(ALPHA))] = look
    return Run(first, seen)


# ---------------------------------------------------------------- exact validity on small cases


def _binom(n: int, p: float) -> list[float]:
    return [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]


@PROPERTY
@given(
    n1=st.integers(0, 25),
    n0=st.integers(0, 40),
    p0=st.floats(0.0, 0.3),
    delta=st.floats(0.0, 0.1),
    below=st.floats(0.0, 1.0),
)
def test_over_stable_factor_has_expectation_at_most_one_under_h0(n1, n0, p0, delta, below):
    p1 = min(1.0, p0 + delta) * below  # any canary rate inside H0: p1 <= p0 + delta
    check = sq.start(max_increase_over_stable=delta).checks[0]
    for r in check.alternatives:
        total = 0.0
        for x1, f1 in enumerate(_binom(n1, p1)):
            for x0, f0 in enumerate(_binom(n0, p0)):
                if n1 and n0:  # looks without both tracks contribute nothing (see _informative)
                    kappa, w = sq.comparator("maxIncreaseOverStable", delta, n0, x0)
                    total += f1 * f0 * math.exp(sq.log_factor(r, x1, w, n1, n0, kappa))
                else:
                    total += f1 * f0
        assert total <= 1 + 1e-9, (r, total)


@PROPERTY
@given(
    n1=st.integers(0, 25),
    n0=st.integers(0, 40),
    q0=st.floats(0.01, 0.9),
    drop=st.floats(0.0, 0.9),
    above=st.floats(0.0, 1.0),
)
def test_drop_factor_has_expectation_at_most_one_under_h0(n1, n0, q0, drop, above):
    low = (1 - drop) * q0
    q1 = low + (1 - low) * above  # any canary orders/request inside H0: q1 >= (1 - d) * q0 (Bernoulli orders)
    check = sq.start(max_drop=drop).checks[0]
    for r in check.alternatives:
        total = 0.0
        for y1, f1 in enumerate(_binom(n1, q1)):
            for y0, f0 in enumerate(_binom(n0, q0)):
                kappa, w = sq.comparator("maxDrop", drop, n0, y0)
                factor = math.exp(sq.log_factor(r, y1, w, n1, n0, kappa)) if n1 and n0 else 1.0
                total += f1 * f0 * factor
        assert total <= 1 + 1e-9, (r, total)


@PROPERTY
@given(n=st.integers(0, 60), m=st.floats(0.0, 0.99), below=st.floats(0.0, 1.0))
def test_ratio_factor_has_expectation_at_most_one_under_h0(n, m, below):
    p = max(m, 1e-6) * below
    for coef in sq.ratio_coefficients(m, tuple(sq.start(max_ratio=m).checks[0].alternatives)):
        total = sum(f * math.exp(sq.ratio_log_factor(coef, x, n)) for x, f in enumerate(_binom(n, p)))
        assert total <= 1 + 1e-9


# ---------------------------------------------------------------- type-I error by simulation


@pytest.mark.parametrize(
    ("seed", "name", "bounds", "kwargs"),
    [
        (1, "healthy errors", ERRORS, {}),
        (2, "healthy orders", ORDERS, {}),
        (3, "boundary maxRatio", {"max_ratio": 0.05}, {"p_stable": 0.05}),
        (4, "boundary maxIncreaseOverStable", {"max_increase_over_stable": 0.01}, {"p_canary": 0.015}),
        (5, "boundary maxDrop", ORDERS, {"q_canary": 0.3 * 0.7}),
    ],
)
def test_false_rollbacks_stay_within_budget(seed, name, bounds, kwargs):
    runs = 2000
    result = simulate(seed, runs, bounds, **kwargs)
    print(f"{name}: {result.rate:.2%} false rollbacks of {runs} canaries of 10 min")
    assert result.rate <= ALPHA + slack(runs)


def test_the_simulation_catches_a_test_that_is_not_anytime_valid():
    """Control: a one-sided z-test at 99% on the cumulative counts, re-run at every look, rolls back
    far more than 1% of canaries sitting exactly at maxRatio (what the old per-interval check did)."""
    rng = np.random.default_rng(6)
    runs, m = 2000, 0.05
    n = np.zeros(runs)
    x = np.zeros(runs)
    rejected = np.zeros(runs, dtype=bool)
    for _ in range(int(CANARY_SECONDS / LOOK)):
        k = rng.poisson(RATE * LOOK * 0.2, runs)
        n += k
        x += rng.binomial(k, m)
        z = (x / np.maximum(n, 1) - m) / np.sqrt(m * (1 - m) / np.maximum(n, 1))
        rejected |= z > 2.326
    print(f"repeated z-test: {rejected.mean():.1%} false rollbacks")
    assert rejected.mean() > 5 * ALPHA


def test_budget_holds_when_both_tracks_drift_and_the_weight_grows():
    """A downstream blip (both tracks at 20% 5xx for 30 s) while the canary goes 5% -> 50%, canary
    exactly at stable + 1% throughout: pooled counts would blame the canary; per-look factors do not."""
    looks = int(CANARY_SECONDS / LOOK)
    p = np.full(looks, 0.005)
    p[150:165] = 0.2
    shares = [0.05] * 100 + [0.2] * 40 + [0.5] * (looks - 140)
    runs = 2000
    bounds = {"max_increase_over_stable": 0.01}
    result = simulate(7, runs, bounds, p_stable=p, p_canary=p + 0.01, shares_over_time=shares)
    print(f"drifting stable: {result.rate:.2%} false rollbacks")
    assert result.rate <= ALPHA + slack(runs)


# ---------------------------------------------------------------- power


@pytest.mark.parametrize(("share", "seconds"), [(0.05, 4.0), (0.1, 2.0), (0.2, 2.0)])
def test_total_5xx_rejects_on_the_first_look(share, seconds):
    # One look of 2-4 s: ~10-20 canary requests, all failing; 3 failed requests are enough.
    n = RATE * seconds
    state = sq.observe(sq.start(**ERRORS), sq.Counts(3, 3, n * (1 - share), n * (1 - share) * 0.005))
    assert sq.assess(state).verdict == "reject"
    result = simulate(11, 2000, ERRORS, seconds=seconds, share=share, p_canary=1.0)
    assert result.rate >= 0.99


@pytest.mark.parametrize(("share", "seconds"), [(0.05, 12.0), (0.1, 8.0), (0.2, 4.0)])
def test_lost_orders_reject_on_the_first_look_with_30_canary_requests(share, seconds):
    # 30 canary requests (expected counts): the first look that has them rejects.
    n = RATE * seconds
    n1, n0 = n * share, n * (1 - share)
    state = sq.observe(sq.start(**ORDERS), sq.Counts(n1, n1 * 0.3 * 0.01, n0, n0 * 0.3))
    assert sq.assess(state).verdict == "reject"


@pytest.mark.parametrize(("share", "seconds", "least"), [(0.05, 20.0, 0.97), (0.1, 10.0, 0.97), (0.2, 6.0, 0.98)])
def test_lost_orders_reject_on_one_look_of_random_traffic(share, seconds, least):
    # One look holding 50-60 canary requests (random requests and orders). With 25 (5% for 10 s) only
    # ~38% reject on a single look: a healthy canary would have placed ~5 orders, and no orders out
    # of an expected 5 is only ~e^5 times less likely; the sequence of looks makes up for it below.
    rng = np.random.default_rng(13)
    runs = 2000
    n = rng.poisson(RATE * seconds, runs)
    n1 = rng.binomial(n, share)
    n0 = n - n1
    y1, y0 = rng.binomial(n1, 0.003), rng.binomial(n0, 0.3)
    check = sq.start(**ORDERS).checks[0]
    kappa = 1 - ORDERS["max_drop"]
    terms = [
        lw + sq.log_factor(r, y1, y0, n1, n0, kappa, log=np.log)
        for r, lw in zip(check.alternatives, check.log_weights, strict=True)
    ]
    assert (np.logaddexp.reduce(terms, axis=0) >= -math.log(ALPHA)).mean() >= least


@pytest.mark.parametrize(
    ("bounds", "fault", "share", "median_at_most", "p95_at_most"),
    [
        (ORDERS, {"q_canary": 0.003}, 0.05, 14.0, 20.0),
        (ORDERS, {"q_canary": 0.003}, 0.1, 8.0, 12.0),
        (ORDERS, {"q_canary": 0.003}, 0.2, 4.0, 6.0),
        (ERRORS, {"p_canary": 1.0}, 0.05, 2.0, 4.0),
        (ERRORS, {"p_canary": 1.0}, 0.1, 2.0, 2.0),
    ],
)
def test_hard_faults_are_caught_within_seconds(bounds, fault, share, median_at_most, p95_at_most):
    """Looks every 2 s at 50 req/s: seconds from the canary's first traffic to rejection."""
    result = simulate(31, 2000, bounds, seconds=60.0, share=share, **fault)
    secs = result.seconds()
    median, p95 = float(np.median(secs)), float(np.percentile(secs, 95))
    print(f"{fault} at {share:.0%}: median {median:.0f} s, p95 {p95:.0f} s")
    assert result.rate == 1.0
    assert median <= median_at_most and p95 <= p95_at_most


def test_soft_5xx_fault_at_the_benchmark_bound():
    """canary 2% 5xx vs stable 0.5% with maxIncreaseOverStable 1% (bound 1.5%) at 50 req/s, 20%.

    The target (>= 99% detected, median <= 90 s) cannot be met by a valid test: 0.5 points over the
    bound carry ~0.006 nats/s of evidence, and even a test told the stable rate would need ~13 min
    for log(100) nats. These are the honest figures, kept so a loss of power fails here."""
    result = simulate(21, 1000, ERRORS, share=0.2, p_canary=0.02)
    median = float(np.median(result.seconds()))
    print(f"soft @1%: {result.rate:.1%} detected within 10 min, median {median:.0f} s")
    assert result.rate >= 0.12
    assert ((result.first > 0) & (result.first * LOOK <= 90)).mean() <= 0.05  # the limit, not a bug


@pytest.mark.parametrize(
    ("bounds", "p_canary", "rate_at_least", "median_at_most"),
    [
        ({"max_ratio": 0.05, "max_increase_over_stable": 0.0}, 0.02, 0.99, 90.0),  # 2% vs 0.5%, any increase
        ({"max_ratio": 0.05, "max_increase_over_stable": 0.005}, 0.02, 0.97, 260.0),  # 2% vs bound 1%
        (ERRORS, 0.05, 0.99, 45.0),  # 5% vs bound 1.5%
    ],
)
def test_soft_faults_the_test_can_see(bounds, p_canary, rate_at_least, median_at_most):
    result = simulate(22, 1000, bounds, share=0.2, p_canary=p_canary)
    median = float(np.median(result.seconds()))
    print(f"{bounds} canary {p_canary:.1%}: {result.rate:.1%} detected, median {median:.0f} s")
    assert result.rate >= rate_at_least
    assert median <= median_at_most


def test_needed_requests_predicts_detection():
    """`assess`'s needed figure is within a factor 2 of the median requests to reject at the design effect."""
    state = sq.start(max_increase_over_stable=0.01)
    state = sq.observe(state, sq.Counts(1000, 10, 4000, 20))  # allocation 1:4, stable 0.5% (no violation)
    needed = sq.assess(state).needed_requests
    assert needed is not None
    result = simulate(23, 500, {"max_increase_over_stable": 0.01}, share=0.2, p_canary=0.025)
    median = float(np.median(result.canary_requests[result.first > 0]))
    print(f"needed {needed:.0f}, median at rejection {median:.0f}")
    assert needed / 2 <= median <= needed * 2


def test_vectorised_path_matches_observe():
    """The simulation's numpy path and `observe` reject at the same look on the same counts."""
    rng = np.random.default_rng(5)
    for bounds, p_canary in ((ERRORS, 0.03), (ORDERS, None)):
        state = sq.start(**bounds)
        n = rng.poisson(100, 200)
        n1 = rng.binomial(n, 0.2)
        n0 = n - n1
        base = 0.3 if bounds is ORDERS else 0.005
        x1 = rng.binomial(n1, 0.15 if bounds is ORDERS else p_canary)
        x0 = rng.binomial(n0, base)
        ev = [[0.0] * len(c.alternatives) for c in state.checks]
        for i in range(len(n)):
            counts = sq.Counts(float(n1[i]), float(x1[i]), float(n0[i]), float(x0[i]))
            state = sq.observe(state, counts)
            for check, e in zip(state.checks, ev, strict=True):
                if check.check == "maxRatio":
                    coef = sq.ratio_coefficients(check.bound, tuple(check.alternatives))
                    e[:] = [v + sq.ratio_log_factor(c, x1[i], n1[i]) for v, c in zip(e, coef, strict=True)]
                else:
                    kappa, w = sq.comparator(check.check, check.bound, n0[i], x0[i])
                    e[:] = [
                        v + sq.log_factor(r, x1[i], w, n1[i], n0[i], kappa, log=np.log)
                        for v, r in zip(e, check.alternatives, strict=True)
                    ]
        for check, e in zip(state.checks, ev, strict=True):
            assert check.log_evidence == pytest.approx(e, rel=1e-9, abs=1e-9)
        assert state.rejected_at_look is not None


# ---------------------------------------------------------------- state and properties


@st.composite
def counts_strategy(draw: st.DrawFn) -> sq.Counts:
    n1, n0 = draw(st.integers(0, 500)), draw(st.integers(0, 2000))
    return sq.Counts(n1, draw(st.integers(0, n1)), n0, draw(st.integers(0, n0)))


bounds_strategy = st.sampled_from([ERRORS, ORDERS, {"max_ratio": 0.02}, {"max_increase_over_stable": 0.0}])


@PROPERTY
@given(bounds=bounds_strategy, looks=st.lists(counts_strategy(), min_size=1, max_size=20), cut=st.integers(0, 20))
def test_state_survives_its_wire_form(bounds, looks, cut):
    straight = sq.start(**bounds)
    for c in looks:
        straight = sq.observe(straight, c)
    restored = sq.start(**bounds)
    for i, c in enumerate(looks):
        if i == cut:  # a restart: the status is written as JSON and read back
            restored = sq.SequentialState.model_validate(json.loads(json.dumps(restored.wire())))
        restored = sq.observe(restored, c)
    assert restored.wire() == straight.wire()
    assert sq.assess(restored) == sq.assess(straight)


def test_wire_form_is_camel_case():
    wire = sq.observe(sq.start(**ERRORS), sq.Counts(10, 1, 40, 0)).wire()
    assert {"alpha", "checks", "looks", "canaryRequests", "stableEvents"} <= set(wire)
    assert {"logWeights", "logEvidence", "alternatives", "check", "bound"} <= set(wire["checks"][0])


@PROPERTY
@given(bounds=bounds_strategy, c=counts_strategy(), more=st.floats(0.1, 20))
def test_more_bad_events_never_mean_less_evidence(bounds, c, more):
    orders = "max_drop" in bounds
    worse = sq.Counts(
        c.canary_requests,
        c.canary_events if orders else c.canary_events + more,
        c.stable_requests,
        c.stable_events + more if orders else c.stable_events,
    )
    base = sq.observe(sq.start(**bounds), c).log_e_value
    assert sq.observe(sq.start(**bounds), worse).log_e_value >= base - 1e-9


@PROPERTY
@given(bounds=bounds_strategy, c=counts_strategy(), frac=st.floats(0.05, 0.95))
def test_splitting_a_look_proportionally_changes_nothing(bounds, c, frac):
    one = sq.observe(sq.start(**bounds), c)
    parts = [
        sq.Counts(c.canary_requests * f, c.canary_events * f, c.stable_requests * f, c.stable_events * f)
        for f in (frac, 1 - frac)
    ]
    two = sq.observe(sq.observe(sq.start(**bounds), parts[0]), parts[1])
    assert two.log_e_value == pytest.approx(one.log_e_value, rel=1e-9, abs=1e-9)


def test_quiet_looks_change_no_evidence():
    state = sq.observe(sq.start(**ERRORS), sq.Counts(20, 1, 80, 0))
    quiet = sq.observe(state, sq.Counts(0, 0, 0, 0))
    assert [c.log_evidence for c in quiet.checks] == [c.log_evidence for c in state.checks]
    # orders counted on a track without requests in the look (scrape skew) are not evidence
    skew = sq.observe(sq.start(**ORDERS), sq.Counts(0, 0, 100, 30))
    assert skew.log_e_value == 0.0


def test_huge_counts_stay_finite_and_rejection_is_sticky():
    state = sq.observe(sq.start(**ERRORS), sq.Counts(1e12, 1e12, 1e12, 1e9))
    assert state.rejected_at_look == 1 and math.isfinite(state.log_e_value)
    later = sq.observe(state, sq.Counts(1e6, 0, 1e6, 1e4))
    assert later.rejected_at_look == 1 and sq.assess(later).verdict == "reject"
    healthy = sq.observe(sq.start(**ORDERS), sq.Counts(1e12, 3e11, 1e12, 3e11))
    assert all(math.isfinite(e) for c in healthy.checks for e in c.log_evidence)
    assert sq.assess(healthy).verdict == "continue"


def test_assessment_reads_well():
    state = sq.start(**ERRORS)
    a = sq.assess(state)
    assert a.verdict == "continue" and a.threshold == 100 and a.canary_requests == 0
    assert a.needed_requests is not None  # maxRatio needs no stable traffic to say
    state = sq.observe(state, sq.Counts(30, 30, 270, 1))
    a = sq.assess(state)
    assert a.verdict == "reject"
    assert "violated" in a.message and "30 canary requests" in a.message


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no bound"):
        sq.start()
    with pytest.raises(ValueError, match="one state per metric"):
        sq.start(max_ratio=0.1, max_drop=0.2)
    with pytest.raises(ValueError, match=">= 0"):
        sq.Counts(-1, 0)
    with pytest.raises(ValueError, match="finite"):
        sq.Counts(math.nan, 0)
