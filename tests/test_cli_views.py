"""The CLI's rich views, rendered from fabricated status dicts (wire form) to plain text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console, RenderableType

from controlled_friction import names
from controlled_friction.cli import views
from controlled_friction.effective_plan import compute_effective_plan
from controlled_friction.models.policy import FrictionPolicySpec, NamedPolicy
from controlled_friction.models.rollout import RolloutSpec
from controlled_friction.revision import revision_of

NOW = datetime(2025, 3, 4, 12, 0, 0, tzinfo=UTC)
POLICY = "critical-services"
TEMPLATE = {"metadata": {"labels": {"app": "checkout"}}, "spec": {"containers": [{"name": "app", "image": "x:2"}]}}


def ts(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


def render(renderable: RenderableType, **console: Any) -> str:
    con = Console(record=True, width=220, color_system=None, **console)
    con.print(renderable)
    return con.export_text()


def line_with(text: str, *needles: str) -> str:
    """The one rendered line holding the first needle; fails loudly if there is none."""
    lines = [ln for ln in text.splitlines() if needles[0] in ln]
    assert lines, f"{needles[0]!r} not in:\n{text}"
    for n in needles[1:]:
        assert any(n in ln for ln in lines), f"{n!r} not on the line(s) with {needles[0]!r}:\n{text}"
    return lines[0]


def by_policy(rule: str) -> list[dict[str, str]]:
    return [{"policy": POLICY, "rule": rule}]


def plan(ai: bool = False) -> dict[str, Any]:
    return {
        "steps": [
            {"kind": "setWeight", "setWeight": 10, "addedBy": by_policy("maxFirstWeight")},
            {"kind": "pause", "pauseSeconds": 60, "addedBy": by_policy("minBake")},
            {
                "kind": "approval",
                "approvals": [{"count": 2, "groups": [names.SENIOR_GROUP], "source": POLICY}],
                "addedBy": by_policy("approvals"),
            },
            {"kind": "setWeight", "setWeight": 50},
            {"kind": "analysis", "metrics": ["errors"], "analysisSeconds": 120},
            {"kind": "pause"},
        ],
        "policies": [POLICY],
        "metrics": [
            {"name": "errors", "kind": "errorRatio", "maxRatio": 0.05},
            {"name": "orders", "kind": "orderRateDrop", "maxDrop": 0.2, "window": "2m"},
        ],
        "metricSources": {"errors": ["rollout"], "orders": [POLICY]},
        "analysisIntervalSeconds": 10,
        "approvalExpirySeconds": 86400,
        "aiAssisted": ai,
    }


def rollout(
    status: dict[str, Any],
    annotations: dict[str, str] | None = None,
    generation: int = 3,
    name: str = "checkout",
    namespace: str = "shop",
) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": "Rollout",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "generation": generation,
            "creationTimestamp": ts(3 * 3600),
            "annotations": annotations or {},
        },
        "spec": {"template": TEMPLATE, "analysis": {"failureLimit": 3}},
        "status": {"observedGeneration": generation, **status},
    }


def canary_status(**over: Any) -> dict[str, Any]:
    base = {
        "phase": "Progressing",
        "message": "step 2/6: baking at 10%, 42s left",
        "stableRevision": "aaaaaaaaaa",
        "canaryRevision": revision_of(TEMPLATE),
        "canaryWeight": 10,
        "effectiveWeight": 9.1,
        "currentStepIndex": 1,
        "stepStartedAt": ts(18),
        "approvalsSummary": "0/2",
        "effectivePlan": plan(),
    }
    return {**base, **over}


# ---------------------------------------------------------------- status panel


def test_panel_shows_bake_remaining_from_step_start_and_pause() -> None:
    text = render(views.rollout_panel(rollout(canary_status()), [], NOW))
    line_with(text, "Step", "2/6 pause: bake 1m", "bake 42s left")
    line_with(text, "Weight", "10% step weight", "9.1% effective")
    line_with(text, "Phase", "Progressing")
    line_with(text, "Canary revision", revision_of(TEMPLATE))
    line_with(text, "Stable revision", "aaaaaaaaaa")


def test_bake_remaining_moves_with_now_and_ends() -> None:
    obj = rollout(canary_status(stepStartedAt=ts(59.2)))
    assert "bake 1s left" in render(views.rollout_panel(obj, [], NOW))
    obj = rollout(canary_status(stepStartedAt=ts(75)))
    assert "bake time done" in render(views.rollout_panel(obj, [], NOW))


def test_analysis_step_shows_time_left() -> None:
    obj = rollout(canary_status(currentStepIndex=4, stepStartedAt=ts(100), canaryWeight=50))
    line_with(render(views.rollout_panel(obj, [], NOW)), "Step", "5/6 analysis", "analysis 20s left")


def test_panel_shows_approvals_with_names_and_what_is_missing() -> None:
    st = canary_status(
        phase="AwaitingApproval",
        currentStepIndex=2,
        approvals=[{"user": "alice", "time": ts(300)}],
        approvalsSummary="1/2",
    )
    text = render(views.rollout_panel(rollout(st, {names.ANN_AUTHOR: "dave"}), [], NOW))
    line_with(text, "Approvals", "1/2", "alice (5m ago)")
    line_with(text, f"needs 2 approvals from {names.SENIOR_GROUP} (required by {POLICY})")
    line_with(text, "Step", "3/6 approval")
    line_with(text, "Author", "dave")
    line_with(text, "Phase", "AwaitingApproval")


def test_two_approvers_are_both_named() -> None:
    st = canary_status(
        currentStepIndex=3,
        approvals=[{"user": "alice", "time": ts(120)}, {"user": "bob", "time": ts(60)}],
        approvalsSummary="2/2",
    )
    line_with(render(views.rollout_panel(rollout(st), [], NOW)), "Approvals", "2/2", "alice (2m ago), bob (1m ago)")


def test_no_approvals_required_is_said_so() -> None:
    st = canary_status(approvalsSummary="-", effectivePlan={**plan(), "steps": plan()["steps"][:2]})
    line_with(render(views.rollout_panel(rollout(st), [], NOW)), "Approvals", "none required")


def test_measurements_show_value_against_bound_verdict_and_streak() -> None:
    st = canary_status(
        analysis={
            "lastRunAt": ts(10),
            "metrics": [
                {
                    "metric": "errors",
                    "consecutiveFailures": 1,
                    "last": {
                        "metric": "errors",
                        "verdict": "fail",
                        "value": 0.3123,
                        "bound": "<= 0.05",
                        "message": "canary 5xx share 0.312 above 0.05",
                        "time": ts(10),
                    },
                },
            ],
        }
    )
    text = render(views.rollout_panel(rollout(st), [], NOW))
    line_with(text, "errors", "fail", "0.3123", "<= 0.05", "1/3 failing", "10s ago", "canary 5xx share")
    # a planned metric without a measurement is listed, not hidden
    line_with(text, "orders", "not measured yet")


def test_verdicts_are_coloured_and_still_spelled_out() -> None:
    assert views.verdict_text("fail").style == "bold red"
    assert views.verdict_text("pass").style == "green"
    assert views.verdict_text("inconclusive").style == "yellow"
    obj = rollout(
        canary_status(
            analysis={
                "metrics": [
                    {
                        "metric": "errors",
                        "last": {
                            "metric": "errors",
                            "verdict": "inconclusive",
                            "value": None,
                            "bound": "<= 0.05",
                            "message": "3 requests",
                        },
                    }
                ]
            }
        )
    )
    coloured = Console(record=True, width=200, force_terminal=True, color_system="truecolor")
    coloured.print(views.rollout_panel(obj, [], NOW))
    ansi = coloured.export_text(styles=True)
    assert "\x1b[" in ansi  # colour is used on a terminal...
    plain = render(views.rollout_panel(obj, [], NOW), no_color=True)
    assert "\x1b[" not in plain
    line_with(plain, "errors", "inconclusive", "no data", "<= 0.05")  # ...but never needed to read it


def test_events_are_listed_newest_last_and_limited() -> None:
    events = [
        {"type": "Normal", "reason": f"R{i}", "message": f"event {i}", "lastTimestamp": ts(100 - i), "count": 1}
        for i in range(12)
    ]
    events.append(
        {
            "type": "Warning",
            "reason": "RollbackTriggered",
            "message": "orders dropped [x]",
            "lastTimestamp": ts(1),
            "count": 2,
        }
    )
    text = render(views.rollout_panel(rollout(canary_status()), events, NOW))
    assert "event 0" not in text  # only the last few
    reasons = [ln for ln in text.splitlines() if "RollbackTriggered" in ln or "R11" in ln]
    assert len(reasons) == 2 and "R11" in reasons[0] and "RollbackTriggered" in reasons[1]
    line_with(text, "RollbackTriggered", "Warning", "orders dropped [x]", "1s")


def test_template_not_yet_observed_is_flagged() -> None:
    obj = rollout(canary_status())
    obj["metadata"]["generation"] = 4
    line_with(render(views.rollout_panel(obj, [], NOW)), "Template revision", "not yet seen by the operator")


def test_unreadable_status_still_shows_phase_and_message() -> None:
    obj = rollout({"phase": "Exploding", "message": "from the future", "canaryWeight": "lots"})
    text = render(views.rollout_panel(obj, [], NOW))
    line_with(text, "Phase", "Exploding")
    line_with(text, "Message", "from the future")
    assert "cannot read the rest of the status" in text


# ---------------------------------------------------------------- list


def test_rollouts_table_row_per_rollout() -> None:
    healthy = rollout(
        {
            "phase": "Healthy",
            "message": "stable bbbbbbbbbb serves all traffic",
            "stableRevision": "bbbbbbbbbb",
            "approvalsSummary": "-",
        },
        name="cart",
        namespace="a-ns",
    )
    waiting = rollout(canary_status(phase="AwaitingApproval", currentStepIndex=2, approvalsSummary="1/2"))
    text = render(views.rollouts_table([waiting, healthy], NOW))
    lines = text.splitlines()
    assert "NAMESPACE" in lines[0] and "APPROVALS" in lines[0] and "MESSAGE" in lines[0]
    assert "cart" in lines[1]  # sorted by namespace
    line_with(
        text, "checkout", "shop", "AwaitingApproval", "10%", "3/6", "1/2", revision_of(TEMPLATE), "aaaaaaaaaa", "3h"
    )
    line_with(text, "cart", "Healthy", "0%", "bbbbbbbbbb", "serves all traffic")


# ---------------------------------------------------------------- explain


def test_explain_attributes_each_step_to_its_policy_rule() -> None:
    st = canary_status(phase="AwaitingApproval", currentStepIndex=2)
    text = render(views.explain_view(rollout(st)))
    line_with(text, "set canary weight to 10%", f"{POLICY}: maxFirstWeight")
    line_with(text, "bake 1m", f"{POLICY}: minBake")
    line_with(text, f"2 approvals from {names.SENIOR_GROUP} (required by {POLICY})", f"{POLICY}: approvals")
    line_with(text, "set canary weight to 50%", "rollout spec")
    line_with(text, "analyse errors for 2m")
    line_with(text, "pause until the promote action")
    current = line_with(text, "← current")
    assert f"{views.CURRENT_MARK} 3" in current and "2 approvals" in current
    assert text.count("← current") == 1


def test_explain_lists_metrics_with_sources_policies_and_ai() -> None:
    text = render(views.explain_view(rollout(canary_status())))
    line_with(text, "errors", "errorRatio", "canary 5xx share ≤ 0.05", "rollout spec")
    line_with(text, "orders", "orderRateDrop", "2m", "stable's - 20%", f"policy {POLICY}")
    line_with(text, "Policies", POLICY)
    line_with(text, "AI-assisted", "no")
    line_with(text, "Approval expiry", "24h")

    ai = render(views.explain_view(rollout(canary_status(effectivePlan=plan(ai=True)))))
    line_with(ai, "AI-assisted", "yes: the aiAssisted rules")
    late = render(views.explain_view(rollout(canary_status(), {names.ANN_AI_ASSISTED: "true"})))
    line_with(late, "AI-assisted", "computed without it")


def test_explain_without_canary_marks_no_current_step() -> None:
    st = {"phase": "Healthy", "stableRevision": revision_of(TEMPLATE), "currentStepIndex": 0, "effectivePlan": plan()}
    text = render(views.explain_view(rollout(st)))
    assert "← current" not in text
    assert "plan of the last canary" in text


def test_explain_without_canary_previews_the_next_plan_from_current_policies() -> None:
    """Between canaries `explain` shows what the next template change would get (computed by the
    operator's own function), not the last canary's plan."""
    policy = NamedPolicy(
        name="critical-now",
        spec=FrictionPolicySpec.model_validate(
            {"selector": {"rolloutSelector": {"matchLabels": {}}},
             "rules": {"maxFirstWeight": 5, "approvals": {"count": 2, "approverGroups": [names.SENIOR_GROUP]}}}
        ),
    )
    spec = RolloutSpec.model_validate({
        "replicas": 4, "selector": {"matchLabels": {"app": "checkout"}}, "template": TEMPLATE,
        "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {"duration": "1m"}}]}},
    })
    preview = compute_effective_plan(spec, [policy], ai_assisted=False)
    st = {"phase": "Healthy", "stableRevision": revision_of(TEMPLATE), "currentStepIndex": 0, "effectivePlan": plan()}
    text = render(views.explain_view(rollout(st), preview=preview))
    line_with(text, "Canary", "preview of the plan the next template change gets")
    line_with(text, "set canary weight to 5%", "critical-now: maxFirstWeight")
    line_with(text, f"2 approvals from {names.SENIOR_GROUP} (required by critical-now)")
    assert POLICY not in text  # the last canary's plan is not shown
    assert "← current" not in text
    # During a canary the frozen plan wins over any preview.
    live = render(views.explain_view(rollout(canary_status()), preview=preview))
    line_with(live, "set canary weight to 10%", f"{POLICY}: maxFirstWeight")
    assert "preview" not in live


def test_explain_before_any_plan() -> None:
    text = render(views.explain_view(rollout({"phase": "Healthy"})))
    assert "No effective plan yet" in text


# ---------------------------------------------------------------- history


def test_history_table() -> None:
    st = {
        "phase": "Healthy",
        "history": [
            {
                "revision": "r1aaaaaaaa",
                "outcome": "Promoted",
                "at": ts(7200),
                "reason": "all steps passed",
                "approvers": ["alice", "bob"],
                "author": "dave",
            },
            {
                "revision": "r2bbbbbbbb",
                "outcome": "RolledBack",
                "at": ts(60),
                "reason": "metric orders failed 2x",
                "author": "dave",
            },
        ],
    }
    text = render(views.history_table(rollout(st), NOW))
    line_with(
        text, "r1aaaaaaaa", "Promoted", "2025-03-04 10:00:00Z", "2h ago", "all steps passed", "alice, bob", "dave"
    )
    line_with(text, "r2bbbbbbbb", "RolledBack", "1m ago", "metric orders failed 2x")
    assert text.index("r1aaaaaaaa") < text.index("r2bbbbbbbb")
    assert "No history yet" in render(views.history_table(rollout({"phase": "Pending"}), NOW))


def test_human_duration() -> None:
    assert [views.human_duration(s) for s in (0, 41.2, 60, 200, 900, 3 * 3600 + 120, 30 * 3600, 9 * 86400)] == [
        "0s",
        "42s",
        "1m",
        "3m20s",
        "15m",
        "3h2m",
        "1d6h",
        "9d",
    ]
