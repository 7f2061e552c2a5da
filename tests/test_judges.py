"""The peer-judge emulations follow their documented rules on tiny hand-made sequences."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from benchmarks.judges import ArgoRollouts, Check, Flagger, Kayenta, Look, hodges_lehmann, kayenta_metrics, thresholds

OK = {"canary_requests": 100.0, "canary_error_ratio": 0.01, "stable_error_ratio": 0.005}
BAD = {**OK, "canary_error_ratio": 0.5}


def looks(*kinds: str, every: float = 10.0) -> list[Look]:
    out = []
    for i, kind in enumerate(kinds):
        t = i * every
        if kind == "ok":
            out.append(Look(t, **OK))
        elif kind == "bad":
            out.append(Look(t, **BAD))
        elif kind == "error":
            out.append(Look(t, error=True))
        elif kind == "empty":
            out.append(Look(t, canary_requests=None))
        elif kind == "nan":
            out.append(Look(t, **{**OK, "canary_error_ratio": math.nan}))
    return out


def run(judge, sequence: list[Look]) -> list[str]:
    return [judge.observe(look) for look in sequence]


ERRORS = thresholds(max_ratio=0.05, max_increase_over_stable=0.01)


# ---------------------------------------------------------------- Argo Rollouts


def test_argo_rolls_back_on_the_first_failure_by_default():
    assert run(ArgoRollouts(checks=ERRORS), looks("ok", "ok", "bad", "ok")) == [
        "continue",
        "continue",
        "rollback",
        "rollback",
    ]


def test_argo_failure_limit_counts_failures_in_total_not_in_a_row():
    verdicts = run(ArgoRollouts(checks=ERRORS, failure_limit=1), looks("bad", "ok", "ok", "bad"))
    assert verdicts == ["continue", "continue", "continue", "rollback"]


def test_argo_errors_roll_back_after_more_than_four_in_a_row():
    judge = ArgoRollouts(checks=ERRORS)
    assert run(judge, looks("error", "error", "error", "error")) == ["continue"] * 4
    assert judge.observe(Look(40.0, error=True)) == "rollback"
    # a success resets the streak
    judge = ArgoRollouts(checks=ERRORS)
    assert run(judge, looks("error", "error", "error", "error", "ok", "error")) == ["continue"] * 6


def test_argo_empty_result_is_an_error_and_nan_a_failure():
    assert run(ArgoRollouts(checks=ERRORS), looks("empty", "empty"))[-1] == "continue"
    assert run(ArgoRollouts(checks=ERRORS), looks("nan")) == ["rollback"]


def test_argo_inconclusive_pauses():
    grey = [Check("maxRatio", lambda v: v.canary_error_ratio, lambda v: 0.05, margin=0.1)]
    look = Look(0.0, canary_error_ratio=0.1)  # beyond 0.05, within 0.05 + 0.1: neither condition met
    assert ArgoRollouts(checks=grey).observe(look) == "paused"
    assert ArgoRollouts(checks=grey, inconclusive_limit=1).observe(look) == "continue"


def test_argo_acts_once_per_interval():
    judge = ArgoRollouts(checks=ERRORS, interval=10.0)
    assert judge.observe(Look(0.0, **OK)) == "continue"
    assert judge.observe(Look(2.0, **BAD)) == "continue"  # not due: Argo would not have measured
    assert judge.observe(Look(10.0, **BAD)) == "rollback"


# ---------------------------------------------------------------- Flagger


def test_flagger_interval_is_at_least_10s_and_defaults_to_1m():
    assert Flagger(checks=ERRORS, interval=5.0).interval == 10.0
    assert Flagger(checks=ERRORS).interval == 60.0 and Flagger(checks=ERRORS).threshold == 1


def test_flagger_rolls_back_at_the_interval_after_the_threshold_is_reached():
    judge = Flagger(checks=ERRORS, interval=10.0)
    assert run(judge, looks("ok", "bad", "ok")) == ["continue", "continue", "rollback"]


def test_flagger_failed_checks_are_never_reset():
    judge = Flagger(checks=ERRORS, interval=10.0, threshold=2)
    assert run(judge, looks("bad", "ok", "ok", "bad", "ok")) == ["continue"] * 4 + ["rollback"]


def test_flagger_counts_no_data_and_errors_as_failed_checks():
    assert run(Flagger(checks=ERRORS, interval=10.0), looks("empty", "ok"))[-1] == "rollback"
    assert run(Flagger(checks=ERRORS, interval=10.0), looks("error", "ok"))[-1] == "rollback"
    assert run(Flagger(checks=ERRORS, interval=10.0), looks("nan", "ok"))[-1] == "rollback"


def test_flagger_orders_range():
    checks = thresholds(max_drop=0.3)
    low = Look(0.0, canary_orders_per_request=0.1, stable_orders_per_request=0.3)
    fine = Look(10.0, canary_orders_per_request=0.25, stable_orders_per_request=0.3)
    judge = Flagger(checks=checks, interval=10.0)
    assert [judge.observe(low), judge.observe(fine)] == ["continue", "rollback"]
    judge = Flagger(checks=checks, interval=10.0)
    assert [judge.observe(fine), judge.observe(replace(fine, t=20.0))] == ["continue"] * 2


# ---------------------------------------------------------------- Kayenta


def test_hodges_lehmann_matches_kayentas_own_case():
    # kayenta-judge's MannWhitney suite: control 1..4, experiment 10..40, 95% -> [6, 39], estimate 22.5
    estimate, lower, upper = hodges_lehmann([10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0], 0.95)
    assert (estimate, lower, upper) == (22.5, 6.0, 39.0)


def test_hodges_lehmann_is_unbounded_with_too_few_samples():
    _, lower, upper = hodges_lehmann([5.0, 6.0], [1.0], 0.98)
    assert lower == -math.inf and upper == math.inf


def _kayenta_looks(canary: list[float], baseline: list[float], **extra: float) -> list[Look]:
    return [
        Look(10.0 * i, canary_error_ratio=c, stable_error_ratio=b, **extra)
        for i, (c, b) in enumerate(zip(canary, baseline, strict=True))
    ]


def test_kayenta_fails_a_canary_whose_errors_are_clearly_higher():
    judge = Kayenta(metrics=kayenta_metrics(orders=False), interval=60.0, step=10.0)
    canary = [0.20, 0.22, 0.19, 0.21, 0.23, 0.20, 0.22]
    baseline = [0.01, 0.012, 0.009, 0.011, 0.01, 0.008, 0.011]
    verdicts = run(judge, _kayenta_looks(canary, baseline))
    # judged at t=0 (one sample: interval unbounded -> pass) and at t=60 (seven samples each)
    assert verdicts == ["continue"] * 6 + ["rollback"]


def test_kayenta_passes_similar_samples_and_a_lower_error_ratio():
    similar = _kayenta_looks(
        [0.010, 0.012, 0.009, 0.011, 0.010, 0.013, 0.011], [0.011, 0.010, 0.012, 0.010, 0.009, 0.011, 0.012]
    )
    assert run(Kayenta(metrics=kayenta_metrics(orders=False)), similar)[-1] == "continue"
    lower = _kayenta_looks([0.001] * 7, [0.01, 0.012, 0.009, 0.011, 0.01, 0.008, 0.011])
    assert run(Kayenta(metrics=kayenta_metrics(orders=False)), lower)[-1] == "continue"  # only increases are bad


def test_kayenta_score_with_one_of_two_metrics_failing_is_below_marginal():
    judge = Kayenta(metrics=kayenta_metrics(), interval=60.0)
    seq = [
        Look(
            10.0 * i,
            canary_error_ratio=0.01,
            stable_error_ratio=0.01,
            canary_orders_per_request=0.01 + 0.001 * i,
            stable_orders_per_request=0.30 + 0.001 * i,
        )
        for i in range(7)
    ]
    assert run(judge, seq)[-1] == "rollback"  # orders Low, errors Pass: score 50 < 75
    assert judge.classify(judge.metrics[1]) == "low" and judge.classify(judge.metrics[0]) == "pass"


def test_kayenta_skips_errors_and_missing_data():
    judge = Kayenta(metrics=kayenta_metrics(orders=False), interval=60.0)
    assert run(judge, [Look(10.0 * i, error=True) for i in range(7)])[-1] == "continue"
    assert judge.samples == {}
    judge.observe(Look(70.0, canary_error_ratio=None, stable_error_ratio=0.01))
    assert judge.samples == {}


@pytest.mark.parametrize(
    "judge", [ArgoRollouts(checks=ERRORS), Flagger(checks=ERRORS), Kayenta(metrics=kayenta_metrics())]
)
def test_every_judge_names_its_window(judge):
    assert judge.window > 0 and judge.interval > 0
