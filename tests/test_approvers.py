"""Who may approve: the admission webhook and the planner apply one rule (`controlled_friction.approvers`).

Every approval is judged twice, first by the webhook (refused, or recorded as a signed entry), then by
the planner (counted at a gate, or not). These tests hold the two to the same answer on who is barred
and who is eligible: an approval the webhook records but the planner never counts leaves a gate shut
for no reason anyone can see, and one the planner would count but the webhook refuses is a rule the
webhook alone enforces.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from controlled_friction import admission, approvers, names
from controlled_friction.admission import AdmissionInput, Problem
from controlled_friction.approvals import count_approvals
from controlled_friction.cli.views import step_summary
from controlled_friction.decisions import ApprovalObs
from controlled_friction.effective_plan import compute_effective_plan, is_ai_assisted, matching_policies
from controlled_friction.models.approval import ApprovalEntry, sign, sign_author
from controlled_friction.models.policy import FrictionPolicySpec, NamedPolicy
from controlled_friction.models.rollout import RolloutSpec
from controlled_friction.revision import revision_of
from tests.planner_world import T0, World, approval, spec

KEY = b"0123456789abcdef0123456789abcdef"
NOW = datetime(2025, 5, 6, 12, 0, 0, tzinfo=UTC)
ROLLOUT = "shop/checkout"
AUTH = "system:authenticated"
USERS = ["alice", "bob", "carol", "dave", "erin"]
GROUPS = [names.SENIOR_GROUP, "sre", "security", "engineers"]
SPACES = ["", " ", "  ", "\t", "\n"]
CRITICAL = {names.LABEL_TIER: "critical"}


def template(image: str) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "checkout"}}, "spec": {"containers": [{"name": "app", "image": image}]}}


V1, V2 = template("shop/checkout:1"), template("shop/checkout:2")
R1, R2 = revision_of(V1), revision_of(V2)


def rollout(steps: list[dict[str, Any]], annotations: dict[str, str], author: str = "dave") -> dict[str, Any]:
    """A critical Rollout at canary V2 over stable V1, authored (and signed as authored) by `author`."""
    ann = {names.ANN_AUTHOR: author, names.ANN_AUTHOR_SIGNATURE: sign_author(ROLLOUT, R2, author, KEY), **annotations}
    return {
        "apiVersion": names.API_VERSION,
        "kind": "Rollout",
        "metadata": {"name": "checkout", "namespace": "shop", "labels": dict(CRITICAL), "annotations": ann},
        "spec": {
            "selector": {"matchLabels": {"app": "checkout"}},
            "template": copy.deepcopy(V2),
            "strategy": {"canary": {"steps": steps}},
        },
        "status": {"stableRevision": R1, "canaryRevision": R2},
    }


def policy(name: str, rules: dict[str, Any], ai: dict[str, Any] | None = None, tier: str = "critical") -> NamedPolicy:
    raw = {"selector": {"rolloutSelector": {"matchLabels": {names.LABEL_TIER: tier}}}, "rules": rules}
    if ai is not None:
        raw["aiAssisted"] = ai
    return NamedPolicy(name=name, spec=FrictionPolicySpec.model_validate(raw))


def webhook(user: str, groups: tuple[str, ...], obj: dict[str, Any], policies: list[NamedPolicy]) -> list[Problem]:
    """`user` sets approve=R2: the mutating webhook, its patch applied, then the validating webhook."""
    new = copy.deepcopy(obj)
    new["metadata"]["annotations"][names.ANN_APPROVE] = R2
    mutation = admission.mutate_rollout(AdmissionInput("UPDATE", user, groups, obj, new), KEY, NOW)
    ann = new["metadata"]["annotations"]
    for k, v in mutation.annotations.items():
        if v is None:
            ann.pop(k, None)
        else:
            ann[k] = v
    return admission.validate_rollout(AdmissionInput("UPDATE", user, groups, obj, new), KEY, policies, {}, NOW)


def planner_counts(user: str, groups: tuple[str, ...], obj: dict[str, Any], policies: list[NamedPolicy]) -> bool:
    """Whether the planner counts `user`'s verified approval of R2 at some gate of the effective plan."""
    ann = obj["metadata"]["annotations"]
    matching = matching_policies(policies, obj["metadata"]["labels"], {})
    plan = compute_effective_plan(RolloutSpec.model_validate(obj["spec"]), matching, is_ai_assisted(ann))
    entry = sign(ApprovalEntry(user=user, groups=sorted(set(groups)), revision=R2, time=NOW, rollout=ROLLOUT), KEY)
    return any(
        count_approvals(
            step.approvals, (ApprovalObs(entry, True),), rollout_key=ROLLOUT, revision=R2,
            annotations=ann, expiry_seconds=plan.approval_expiry_seconds, now=NOW,
        ).counted
        for step in plan.steps
        if step.kind == "approval"
    )


def gates(obj: dict[str, Any], policies: list[NamedPolicy]) -> list[str]:
    """The approval gates of the effective plan, as `status` and `explain` describe them."""
    ann = obj["metadata"]["annotations"]
    plan = compute_effective_plan(
        RolloutSpec.model_validate(obj["spec"]), matching_policies(policies, CRITICAL, {}), is_ai_assisted(ann)
    )
    return [step_summary(s) for s in plan.steps if s.kind == "approval"]


# ---------------------------------------------------------------- the shared rules


def test_the_author_and_the_change_author_are_barred_with_surrounding_whitespace_ignored():
    ann = {names.ANN_AUTHOR: "carol", names.ANN_CHANGE_AUTHOR: " bob\n"}
    assert approvers.barred_approvers(ann) == frozenset({"carol", "bob"})
    assert approvers.barred_approvers({names.ANN_CHANGE_AUTHOR: "  "}) == frozenset()
    assert approvers.barred_approvers({}) == frozenset()


def test_an_empty_list_of_groups_means_the_default_never_anyone():
    assert approvers.DEFAULT_GROUPS == (names.SENIOR_GROUP,)
    assert approvers.required_groups([]) == [names.SENIOR_GROUP]
    assert approvers.required_groups(["", "sre", "sre"]) == ["sre"]
    assert not approvers.in_required_groups(["engineers", AUTH], [])
    assert approvers.in_required_groups([names.SENIOR_GROUP], [])
    assert approvers.in_required_groups(["sre"], ["security", "sre"])
    assert not approvers.in_required_groups([names.SENIOR_GROUP], ["sre"])


# ---------------------------------------------------------------- the planner, as the webhook decides


def test_a_change_author_with_surrounding_spaces_is_barred_in_the_planner_too():
    steps = [{"setWeight": 10}, {"approval": {"count": 2}}, {"setWeight": 50}]
    w = World(spec(steps, image="shop/checkout:1"))
    w.tick()
    w.tick()
    w.spec = spec(steps, image="shop/checkout:2")
    w.annotations.update({names.ANN_AUTHOR: "carol", names.ANN_CHANGE_AUTHOR: " bob\n"})
    w.tick()
    w.tick(advance=1)
    assert w.status.phase == "AwaitingApproval"
    w.approvals = [approval("alice", w.revision), approval("bob", w.revision)]
    w.tick(advance=1)
    assert w.status.phase == "AwaitingApproval"
    assert [a.user for a in w.status.approvals] == ["alice"] and w.status.approvals_summary == "1/2"
    w.approvals.append(approval("erin", w.revision, at=T0 + timedelta(seconds=1)))
    w.tick(advance=1)
    assert w.status.phase != "AwaitingApproval" and {a.user for a in w.status.approvals} == {"alice", "erin"}


def test_an_approval_step_naming_no_groups_counts_only_the_default_group():
    obj = rollout([{"setWeight": 10}, {"approval": {"count": 1}}, {"setWeight": 50}], {})
    assert gates(obj, []) == [f"1 approval from {names.SENIOR_GROUP} (required by rollout)"]
    assert webhook("erin", ("engineers", AUTH), obj, [])  # refused
    assert not planner_counts("erin", ("engineers", AUTH), obj, [])  # and never counted
    assert not webhook("alice", (names.SENIOR_GROUP, AUTH), obj, [])
    assert planner_counts("alice", (names.SENIOR_GROUP, AUTH), obj, [])


def test_an_approval_step_naming_no_groups_takes_the_policies_groups():
    """Not the default: the webhook admits only the policy's sre, who must be able to meet the step."""
    policies = [policy("critical", {"approvals": {"count": 1, "approverGroups": ["sre"]}})]
    obj = rollout([{"setWeight": 10}, {"approval": {"count": 2}}, {"setWeight": 50}], {})
    assert gates(obj, policies) == ["2 approvals from sre (required by rollout) and 1 approval from sre "
                                    "(required by critical)"]
    assert not webhook("erin", ("sre", AUTH), obj, policies)
    assert planner_counts("erin", ("sre", AUTH), obj, policies)
    assert webhook("alice", (names.SENIOR_GROUP, AUTH), obj, policies)
    assert not planner_counts("alice", (names.SENIOR_GROUP, AUTH), obj, policies)


def test_groups_of_an_approval_step_that_asks_for_none_let_nobody_approve():
    """A count-0 step is only a place for a policy's gate, which counts the policy's groups alone."""
    policies = [policy("critical", {"approvals": {"count": 1, "approverGroups": [names.SENIOR_GROUP]}})]
    obj = rollout([{"setWeight": 10}, {"approval": {"count": 0, "approverGroups": ["sre"]}}, {"setWeight": 50}], {})
    problems = webhook("erin", ("sre", AUTH), obj, policies)
    assert [p.message for p in problems] == [
        "'erin' may not approve shop/checkout: approvals must come from a member of senior-engineers "
        "(policy critical); 'erin' is in sre, system:authenticated (no change record given)"
    ]
    assert not planner_counts("erin", ("sre", AUTH), obj, policies)


# ---------------------------------------------------------------- the property


def group_lists(min_size: int = 0) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(GROUPS), min_size=min_size, unique=True)


@st.composite
def approval_steps(draw: st.DrawFn) -> dict[str, Any]:
    step: dict[str, Any] = {"count": draw(st.integers(0, 2))}
    groups = draw(group_lists())
    if groups or draw(st.booleans()):
        step["approverGroups"] = groups
    return {"approval": step}


@st.composite
def policies(draw: st.DrawFn) -> list[NamedPolicy]:
    out = []
    for name in draw(st.lists(st.sampled_from(["critical", "payments", "other"]), unique=True, max_size=3)):
        rules = {"approvals": {"count": draw(st.integers(1, 2)), "approverGroups": draw(group_lists(1))}}
        ai = {"approvals": {"count": 1, "approverGroups": draw(group_lists(1))}} if draw(st.booleans()) else None
        out.append(policy(name, rules if draw(st.booleans()) else {"minBake": 0}, ai,
                          tier="other" if name == "other" else "critical"))
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    author=st.sampled_from(USERS),
    change_author=st.one_of(st.none(), st.tuples(st.sampled_from(SPACES), st.sampled_from(USERS),
                                                  st.sampled_from(SPACES)).map("".join)),
    user=st.sampled_from(USERS),
    groups=group_lists(),
    own=st.lists(approval_steps(), min_size=1, max_size=2),
    pols=policies(),
    ai=st.booleans(),
)
@example(  # CI's change author with a trailing newline, as a YAML block scalar leaves it
    author="dave", change_author="erin\n", user="erin", groups=["sre"],
    own=[{"approval": {"count": 1, "approverGroups": ["sre"]}}], pols=[], ai=False,
)
def test_the_webhook_admits_exactly_the_approvals_the_planner_counts(
    author: str, change_author: str | None, user: str, groups: list[str], own: list[dict[str, Any]],
    pols: list[NamedPolicy], ai: bool,
) -> None:
    steps = [{"setWeight": 10}, own[0], {"setWeight": 50}, *own[1:], {"setWeight": 60}]
    ann = {names.ANN_AI_ASSISTED: "true"} if ai else {}
    if change_author is not None:
        ann[names.ANN_CHANGE_AUTHOR] = change_author
    obj = rollout(steps, ann, author=author)
    assume(gates(obj, pols))  # without a gate nothing is counted, and nothing needs to be
    member_of = (*groups, AUTH)
    problems = webhook(user, member_of, obj, pols)
    counted = planner_counts(user, member_of, obj, pols)
    assert (not problems) == counted, [p.message for p in problems]
    barred = user == author or user == (change_author or "").strip()
    event("barred" if barred else "counted" if counted else "not in the groups")
    assert barred == any("cannot approve revision" in p.message for p in problems)
    if barred:
        assert not counted
