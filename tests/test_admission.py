"""Admission rules for approvals, authorship and specs, as pure decisions.

`admit` plays the API server's part: it runs the mutating decision, applies its annotation changes
to the object and hands the result to the validating decision, exactly as kube-apiserver chains the
two webhooks. Every forgery variant goes through that chain and must be rejected (or neutralised).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controlled_friction import admission, change_record, names
from controlled_friction.admission import AdmissionInput
from controlled_friction.models.approval import (
    ApprovalEntry,
    dump_record,
    parse_record,
    sign,
    sign_author,
    verify,
    verify_author,
)
from controlled_friction.models.policy import FrictionPolicySpec, NamedPolicy
from controlled_friction.revision import revision_of

KEY = b"0123456789abcdef0123456789abcdef"
NOW = datetime(2025, 5, 6, 12, 0, 0, tzinfo=UTC)
AUTH = "system:authenticated"
GROUPS = {
    "alice": (names.SENIOR_GROUP, AUTH),
    "bob": (names.SENIOR_GROUP, AUTH),
    "carol": (names.SENIOR_GROUP, AUTH),
    "dave": ("engineers", AUTH),
    "mallory": ("engineers", AUTH),
    "erin": ("sre", AUTH),
    "ci": ("system:serviceaccounts", AUTH),
    names.OPERATOR_USERNAME: ("system:serviceaccounts", "system:serviceaccounts:controlled-friction", AUTH),
}

FORGERIES_TRIED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _forgery_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    # Printed past pytest's output capture, so it shows in every run (each variant's test asserts it).
    verdict = "all rejected or neutralised" if request.session.testsfailed == 0 else "SOME TESTS FAILED, see above"
    line = f"test_admission: {len(FORGERIES_TRIED)} forgery variants tried, {verdict}"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + line)
    else:
        print(line)


def tried(name: str) -> None:
    FORGERIES_TRIED.append(name)


def template(image: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "checkout"}},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }


V1, V2, V3 = template("shop/checkout:1"), template("shop/checkout:2"), template("shop/checkout:3")
R1, R2, R3 = revision_of(V1), revision_of(V2), revision_of(V3)


def spec(tmpl: dict[str, Any]) -> dict[str, Any]:
    return {
        "selector": {"matchLabels": {"app": "checkout"}},
        "template": copy.deepcopy(tmpl),
        "strategy": {"canary": {"steps": [{"setWeight": 10}, {"approval": {}}, {"setWeight": 50}]}},
    }


def rollout(
    tmpl: dict[str, Any] = V2,
    *,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    stable: str | None = R1,
    name: str = "checkout",
    namespace: str = "shop",
    author: str | None = "dave",
) -> dict[str, Any]:
    """A Rollout in progress: canary V2 by dave over stable V1, no approvals yet (as the webhook left it)."""
    ann = authored(author, f"{namespace}/{name}", tmpl) if author else {}
    ann.update(annotations or {})
    return {
        "apiVersion": names.API_VERSION,
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {}), "annotations": ann},
        "spec": spec(tmpl),
        "status": {"stableRevision": stable, "canaryRevision": revision_of(tmpl)} if stable else {},
    }


def authored(user: str, rollout_key: str = "shop/checkout", tmpl: dict[str, Any] = V2) -> dict[str, str]:
    """The author annotations the mutating webhook writes for `user` changing the template to `tmpl`."""
    return {
        names.ANN_AUTHOR: user,
        names.ANN_AUTHOR_SIGNATURE: sign_author(rollout_key, revision_of(tmpl), user, KEY),
    }


def edit(obj: dict[str, Any], **annotations: str | None) -> dict[str, Any]:
    """A copy with annotations set (None removes); keyword names use _ for - and drop the prefix."""
    out = copy.deepcopy(obj)
    ann = out["metadata"].setdefault("annotations", {})
    for short, value in annotations.items():
        key = names.PREFIX + short.replace("_", "-")
        if value is None:
            ann.pop(key, None)
        else:
            ann[key] = value
    return out


def with_template(obj: dict[str, Any], tmpl: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["spec"]["template"] = copy.deepcopy(tmpl)
    return out


def entries_of(obj: dict[str, Any]) -> list[ApprovalEntry]:
    entries, problems = parse_record(obj["metadata"].get("annotations", {}).get(names.ANN_APPROVALS))
    assert problems == []
    return entries


def signed(user: str, revision: str = R2, *, rollout_: str = "shop/checkout", at: datetime = NOW, key: bytes = KEY):
    return sign(
        ApprovalEntry(user=user, groups=sorted(GROUPS[user]), revision=revision, time=at, rollout=rollout_), key
    )


def record(*entries: ApprovalEntry) -> str:
    return dump_record(list(entries))


@dataclass
class Outcome:
    obj: dict[str, Any]
    problems: list[admission.Problem]
    warnings: tuple[str, ...]

    @property
    def allowed(self) -> bool:
        return not self.problems

    @property
    def text(self) -> str:
        return "\n".join(p.message for p in self.problems)


def admit(
    user: str,
    old: dict[str, Any] | None,
    new: dict[str, Any],
    *,
    policies: list[NamedPolicy] | None = None,
    ns_labels: dict[str, str] | None = None,
    now: datetime = NOW,
    subresource: str | None = None,
) -> Outcome:
    """kube-apiserver's chain: mutating webhook, apply its patch, validating webhook on the result."""
    op = "CREATE" if old is None else "UPDATE"
    req = AdmissionInput(op, user, GROUPS[user], old, new, subresource)
    mutation = admission.mutate_rollout(req, KEY, now)
    mutated = copy.deepcopy(new)
    ann = mutated["metadata"].setdefault("annotations", {})
    for key, value in mutation.annotations.items():
        if value is None:
            ann.pop(key, None)
        else:
            ann[key] = value
    validated = AdmissionInput(op, user, GROUPS[user], old, mutated, subresource)
    problems = admission.validate_rollout(validated, KEY, policies or [], ns_labels or {}, now)
    return Outcome(mutated, problems, mutation.warnings)


def approve(user: str, obj: dict[str, Any], revision: str = R2, **kw: Any) -> Outcome:
    return admit(user, obj, edit(obj, approve=revision), **kw)


def approved(obj: dict[str, Any], *users: str, revision: str = R2, now: datetime = NOW) -> dict[str, Any]:
    for user in users:
        out = approve(user, obj, revision, now=now)
        assert out.allowed, out.text
        obj = out.obj
    return obj


def policy(name: str, spec_: dict[str, Any]) -> NamedPolicy:
    return NamedPolicy(name=name, spec=FrictionPolicySpec.model_validate(spec_))


# ---------------------------------------------------------------- genuine approvals


def test_valid_approval_appends_a_verifying_entry_and_removes_approve():
    out = approve("alice", rollout())
    assert out.allowed, out.text
    ann = out.obj["metadata"]["annotations"]
    assert names.ANN_APPROVE not in ann
    [entry] = entries_of(out.obj)
    assert (entry.user, entry.revision, entry.rollout, entry.time) == ("alice", R2, "shop/checkout", NOW)
    assert entry.groups == sorted(GROUPS["alice"])
    assert verify(entry, KEY)
    assert not verify(entry, b"another key of thirty-two bytes!")
    assert ann[names.ANN_AUTHOR] == "dave"


def test_two_seniors_give_two_entries_in_order():
    obj = approved(rollout(), "alice", "bob")
    assert [(e.user, e.revision) for e in entries_of(obj)] == [("alice", R2), ("bob", R2)]
    assert all(verify(e, KEY) for e in entries_of(obj))


def test_entry_time_is_truncated_to_seconds_and_survives_the_round_trip():
    out = approve("alice", rollout(), now=NOW + timedelta(microseconds=123456))
    assert out.allowed, out.text
    [entry] = entries_of(out.obj)
    assert entry.time == NOW
    assert verify(entry, KEY)


def test_approval_on_a_rollout_without_stable_revision_yet_is_allowed():
    out = approve("alice", rollout(stable=None))
    assert out.allowed, out.text


# ---------------------------------------------------------------- forgeries that must be rejected


def test_author_cannot_approve_own_change():
    tried("author approves")
    out = approve("alice", rollout(author="alice"))
    assert not out.allowed
    assert out.text == (
        f"'alice' cannot approve revision {R2} of shop/checkout: they are its author (they last changed "
        "spec.template); under the two-person rule someone else must approve (no change record given)"
    )
    assert [p.code for p in out.problems] == [403]


def test_author_cannot_approve_in_the_same_request_as_the_template_change():
    tried("author changes template and approves in one request")
    old = rollout(V2, author="bob")
    out = admit("alice", old, edit(with_template(old, V3), approve=R3))
    assert not out.allowed
    assert "they are its author" in out.text
    assert out.obj["metadata"]["annotations"][names.ANN_AUTHOR] == "alice"


def test_creator_cannot_approve_at_creation():
    tried("approve set by the creator on CREATE")
    new = edit(rollout(stable=None, author=None), approve=R2)
    out = admit("alice", None, new)
    assert not out.allowed
    assert "they are its author" in out.text


def test_change_author_claimed_by_ci_cannot_approve():
    tried("change-author approves")
    obj = rollout(author="ci", annotations={names.ANN_CHANGE_AUTHOR: "bob"})
    out = approve("bob", obj)
    assert not out.allowed
    assert out.text == (
        f"'bob' cannot approve revision {R2} of shop/checkout: CI names them as the author of the change "
        f"({names.ANN_CHANGE_AUTHOR}); under the two-person rule someone else must approve (no change record given)"
    )
    assert approve("alice", obj).allowed


@pytest.mark.parametrize("user", ["dave", "mallory"])
def test_engineer_who_is_not_senior_cannot_approve(user: str):
    tried(f"non-senior {user} approves")
    out = approve(user, rollout(author="carol"))
    assert not out.allowed
    assert out.text == (
        f"{user!r} may not approve shop/checkout: approvals must come from a member of senior-engineers "
        f"(the default when no policy names approver groups); {user!r} is in engineers, system:authenticated "
        "(no change record given)"
    )


def test_same_person_cannot_approve_twice():
    tried("same person approves twice")
    obj = approved(rollout(), "alice")
    out = approve("alice", obj)
    assert not out.allowed
    assert out.text == (
        f"'alice' has already approved revision {R2} of shop/checkout; the next approval must come from another "
        "person (no change record given)"
    )


@pytest.mark.parametrize("value", [R1, R3, "latest", R2[:6]])
def test_approval_must_name_the_canary_revision(value: str):
    tried(f"approve names revision {value!r}")
    out = approve("alice", rollout(), revision=value)
    assert not out.allowed
    assert out.text == (
        f"{names.ANN_APPROVE}={value} does not name the canary revision {R2} of shop/checkout; approve exactly "
        f"the revision being rolled out: kubectl annotate rollout checkout -n shop {names.ANN_APPROVE}={R2} "
        "--overwrite"
    )
    assert [p.code for p in out.problems] == [422]
    assert entries_of(out.obj) == []


def test_approving_the_stable_revision_is_refused():
    tried("approve the stable revision")
    obj = rollout(V2, stable=R2)
    out = approve("alice", obj)
    assert not out.allowed
    assert out.text == f"revision {R2} is already the stable revision of shop/checkout; there is nothing to approve"
    assert entries_of(out.obj) == []


def test_stable_revision_comes_from_the_stored_object_not_the_request_body():
    tried("request body forges status.stableRevision")
    old = rollout(V2, stable=R2)
    new = edit(old, approve=R2)
    new["status"]["stableRevision"] = R1
    out = admit("alice", old, new)
    assert not out.allowed
    assert "nothing to approve" in out.text


def test_hand_written_entry_with_a_bad_signature_is_rejected():
    tried("hand-written entry, made-up signature")
    obj = rollout(author="carol")
    fake = ApprovalEntry(
        user="mallory",
        groups=sorted(GROUPS["mallory"]),
        revision=R2,
        time=NOW,
        rollout="shop/checkout",
        signature="0" * 64,
    )
    out = admit("mallory", obj, edit(obj, approvals=record(fake)))
    assert not out.allowed
    assert out.text == (
        f"{names.ANN_APPROVALS}[0] (user 'mallory', revision {R2}) is rejected: its signature does not verify. "
        f"Approvals are recorded only by the admission webhook: set {names.ANN_APPROVE}={R2} instead"
    )


def test_entry_signed_with_a_guessed_key_is_rejected():
    tried("entry signed with another key")
    obj = rollout()
    forged = signed("alice", key=b"guessed-key-guessed-key-guessed!")
    out = admit("alice", obj, edit(obj, approvals=record(forged)))
    assert not out.allowed
    assert "its signature does not verify" in out.text


def test_entry_naming_someone_else_is_rejected_even_with_a_valid_signature():
    tried("mallory pastes alice's fresh signed entry")
    obj = rollout(author="mallory")
    stolen = signed("alice")
    out = admit("mallory", obj, edit(obj, approvals=record(stolen)))
    assert not out.allowed
    assert "it names 'alice' but the request comes from 'mallory'" in out.text


def test_hand_written_entry_claiming_senior_groups_is_rejected():
    tried("entry claims senior groups for mallory")
    obj = rollout(author="dave")
    fake = ApprovalEntry(user="mallory", groups=[names.SENIOR_GROUP], revision=R2, time=NOW, rollout="shop/checkout")
    out = admit("mallory", obj, edit(obj, approvals=record(sign(fake, b"x" * 32))))
    assert not out.allowed
    assert "its signature does not verify" in out.text
    assert "its groups are not the requester's groups" in out.text


def test_entry_copied_from_another_rollout_is_rejected():
    tried("entry copied from another rollout")
    other = approved(rollout(name="payments"), "alice")
    [copied] = entries_of(other)
    assert copied.rollout == "shop/payments"
    obj = rollout()
    out = admit("alice", obj, edit(obj, approvals=record(copied)))
    assert not out.allowed
    assert "it was given for rollout shop/payments, not shop/checkout" in out.text


def test_entry_copied_from_another_rollout_with_its_name_edited_fails_the_signature():
    tried("copied entry with the rollout field rewritten")
    [copied] = entries_of(approved(rollout(name="payments"), "alice"))
    edited = copied.model_copy(update={"rollout": "shop/checkout"})
    obj = rollout()
    out = admit("alice", obj, edit(obj, approvals=record(edited)))
    assert not out.allowed
    assert "its signature does not verify" in out.text
    assert "given for rollout" not in out.text


def test_entry_from_an_earlier_revision_is_rejected():
    tried("entry replayed from an earlier revision")
    old_approval = signed("alice", R1)
    obj = rollout()
    out = admit("alice", obj, edit(obj, approvals=record(old_approval)))
    assert not out.allowed
    assert f"it is for revision {R1}, but the canary revision is {R2}" in out.text


def test_entry_with_its_revision_edited_fails_the_signature():
    tried("earlier revision's entry with the revision field rewritten")
    edited = signed("alice", R1).model_copy(update={"revision": R2})
    obj = rollout()
    out = admit("alice", obj, edit(obj, approvals=record(edited)))
    assert not out.allowed
    assert "its signature does not verify" in out.text


@pytest.mark.parametrize("shift", [timedelta(minutes=-30), timedelta(days=-2), timedelta(minutes=20)])
def test_entry_dated_away_from_now_is_a_replay(shift: timedelta):
    tried(f"own signed entry replayed, dated {shift}")
    entry = signed("alice", at=NOW + shift)
    obj = rollout()
    out = admit("alice", obj, edit(obj, approvals=record(entry)))
    assert not out.allowed
    assert "not now (copied or replayed)" in out.text


def test_approvals_pasted_into_a_recreated_rollout_are_rejected():
    tried("approvals copied into a re-created rollout of the same name and template")
    earlier = approved(rollout(), "alice", "bob", now=NOW - timedelta(hours=1))
    raw = earlier["metadata"]["annotations"][names.ANN_APPROVALS]
    new = rollout(stable=None, author=None, annotations={names.ANN_APPROVALS: raw})
    out = admit("mallory", None, new)
    assert not out.allowed
    assert "it names 'alice' but the request comes from 'mallory'" in out.text
    assert "it names 'bob' but the request comes from 'mallory'" in out.text


def test_an_extra_forged_entry_next_to_a_genuine_approval_is_rejected():
    tried("genuine approval plus a forged second entry in one request")
    obj = rollout()
    forged = ApprovalEntry(user="bob", groups=sorted(GROUPS["bob"]), revision=R2, time=NOW, rollout="shop/checkout")
    out = admit("alice", obj, edit(obj, approve=R2, approvals=record(forged)))
    assert not out.allowed
    assert "approvals[0] (user 'bob'" in out.text


def test_editing_a_recorded_entry_is_rejected():
    tried("edit a recorded entry (time)")
    obj = approved(rollout(), "alice")
    [entry] = entries_of(obj)
    edited = entry.model_copy(update={"time": NOW + timedelta(days=1)})
    out = admit("alice", obj, edit(obj, approvals=record(edited)))
    assert not out.allowed
    assert out.text == (
        f"recorded approvals in {names.ANN_APPROVALS} cannot be edited, reordered or removed (only a change of "
        "spec.template voids them); undo your change to that annotation"
    )


def test_removing_one_entry_is_rejected():
    tried("remove one recorded entry")
    obj = approved(rollout(), "alice", "bob")
    alice, _bob = entries_of(obj)
    out = admit("mallory", obj, edit(obj, approvals=record(alice)))
    assert not out.allowed
    assert "cannot be edited, reordered or removed" in out.text


def test_reordering_entries_is_rejected():
    tried("reorder recorded entries")
    obj = approved(rollout(), "alice", "bob")
    alice, bob = entries_of(obj)
    out = admit("carol", obj, edit(obj, approvals=record(bob, alice)))
    assert not out.allowed
    assert "cannot be edited, reordered or removed" in out.text


def test_removing_the_whole_record_is_rejected():
    tried("delete the approvals annotation")
    obj = approved(rollout(), "alice")
    out = admit("mallory", obj, edit(obj, approvals=None))
    assert not out.allowed
    assert "cannot be edited, reordered or removed" in out.text


def test_garbage_in_the_record_is_rejected():
    tried("approvals annotation that is not a record")
    obj = rollout()
    out = admit("mallory", obj, edit(obj, approvals='{"alice": "approved"}'))
    assert not out.allowed
    assert out.text.startswith(f"{names.ANN_APPROVALS} is written only by the admission webhook and the operator")


def test_setting_author_by_hand_is_rejected():
    tried("set author by hand")
    obj = rollout(author="alice")
    out = admit("alice", obj, edit(obj, author="dave"))
    assert not out.allowed
    assert out.text == (
        f"{names.ANN_AUTHOR} records who last changed spec.template and only the admission webhook writes it; "
        "this request changes it from 'alice' to 'dave': undo that change"
    )


def test_mutation_signs_the_author_for_this_rollout_and_revision():
    old = rollout(author="bob")
    out = admit("alice", old, with_template(old, V3))
    assert out.allowed, out.text
    ann = out.obj["metadata"]["annotations"]
    assert ann[names.ANN_AUTHOR] == "alice"
    sig = ann[names.ANN_AUTHOR_SIGNATURE]
    assert verify_author(sig, "shop/checkout", R3, "alice", KEY)
    assert not verify_author(sig, "shop/checkout", R3, "bob", KEY)  # bound to the author,
    assert not verify_author(sig, "shop/checkout", R2, "alice", KEY)  # the revision,
    assert not verify_author(sig, "shop/other", R3, "alice", KEY)  # and the rollout
    assert not verify_author(sig, "shop/checkout", R3, "alice", b"another key")


@pytest.mark.parametrize(
    "what, change",
    [
        ("signature of the author set by hand", {"author_signature": "0" * 64}),
        ("author signature removed", {"author_signature": None}),
        ("author and signature copied from another revision",
         {"author": "bob", "author_signature": sign_author("shop/checkout", R1, "bob", KEY)}),
    ],
)
def test_author_signature_is_written_only_by_the_webhook(what: str, change: dict[str, str | None]):
    tried(what)
    obj = rollout(author="alice")
    out = admit("alice", obj, edit(obj, **change))
    assert not out.allowed
    assert f"{names.ANN_AUTHOR_SIGNATURE} is written only by the admission webhook" in out.text


def test_a_signature_sent_with_a_template_change_is_replaced_by_the_webhook_own():
    tried("template change carrying a signature for another author")
    old = rollout(author="bob")
    forged = sign_author("shop/checkout", R3, "bob", KEY)
    out = admit("alice", old, edit(with_template(old, V3), author="bob", author_signature=forged))
    assert out.allowed, out.text
    ann = out.obj["metadata"]["annotations"]
    assert ann[names.ANN_AUTHOR] == "alice" and verify_author(ann[names.ANN_AUTHOR_SIGNATURE], "shop/checkout", R3,
                                                              "alice", KEY)


def test_approval_of_a_revision_without_a_verified_author_is_refused():
    tried("approve a revision whose author was set while the webhook was bypassed")
    obj = rollout(author=None, annotations={names.ANN_AUTHOR: "alice"})  # no signature: not the webhook's
    out = approve("bob", obj)
    assert not out.allowed
    assert f"revision {R2} of shop/checkout cannot be approved: its author was not recorded" in out.text
    assert approve("bob", rollout(author="alice")).allowed


def test_removing_author_is_rejected():
    tried("remove author")
    obj = rollout(author="alice")
    out = admit("alice", obj, edit(obj, author=None))
    assert not out.allowed
    assert "this request removes it: undo that change" in out.text


def test_author_then_approve_after_rewriting_author_is_rejected():
    tried("author rewrites author, then approves")
    obj = rollout(author="alice")
    assert not admit("alice", obj, edit(obj, author="bob", approve=R2)).allowed


def test_template_change_with_a_hand_set_author_records_the_real_requester():
    tried("template change with author set to someone else")
    old = rollout(author="bob")
    out = admit("alice", old, edit(with_template(old, V3), author="bob"))
    assert out.allowed, out.text
    assert out.obj["metadata"]["annotations"][names.ANN_AUTHOR] == "alice"
    assert not approve("alice", out.obj, R3).allowed


def test_without_the_mutating_webhook_a_template_change_keeps_no_author_or_approvals():
    tried("validating webhook alone sees a template change with the old author and old approvals")
    old = approved(rollout(author="dave"), "alice", "bob")
    new = with_template(old, V3)
    req = AdmissionInput("UPDATE", "carol", GROUPS["carol"], old, new)
    text = "\n".join(p.message for p in admission.validate_rollout(req, KEY, [], {}, NOW))
    assert f"{names.ANN_AUTHOR} must name who changes spec.template ('carol'), not 'dave'" in text
    assert f"it is for revision {R2}, but the canary revision is {R3}" in text


def test_without_the_mutating_webhook_approve_is_not_silently_accepted():
    tried("approve set while only the validating webhook runs")
    obj = rollout()
    req = AdmissionInput("UPDATE", "alice", GROUPS["alice"], obj, edit(obj, approve=R2))
    problems = admission.validate_rollout(req, KEY, [], {}, NOW)
    assert [p.message for p in problems] == [
        f"{names.ANN_APPROVE} was not recorded: the approvals (mutating) webhook did not process this request; "
        "ask the platform team to check the operator's webhook registration"
    ]


# ---------------------------------------------------------------- policies decide who approves

CRITICAL_BY_NAMESPACE = {
    "selector": {"namespaceSelector": {"matchLabels": {names.LABEL_TIER: "critical"}}},
    "rules": {"approvals": {"count": 2, "approverGroups": ["sre"]}},
}
AI_RULES = {
    "selector": {"rolloutSelector": {"matchLabels": {"app": "checkout"}}},
    "rules": {"minBake": "5m"},
    "aiAssisted": {"approvals": {"count": 1, "approverGroups": ["senior-engineers", "sre"]}},
}


def test_policy_matching_by_namespace_labels_sets_the_approver_groups():
    tried("senior approves where a namespace policy requires sre")
    policies = [policy("critical", CRITICAL_BY_NAMESPACE)]
    labels = {names.LABEL_TIER: "critical"}
    out = approve("alice", rollout(), policies=policies, ns_labels=labels)
    assert not out.allowed
    assert out.text == (
        "'alice' may not approve shop/checkout: approvals must come from a member of sre (policy critical); "
        "'alice' is in senior-engineers, system:authenticated (no change record given)"
    )
    assert approve("erin", rollout(), policies=policies, ns_labels=labels).allowed
    # The same policy does not match a namespace without the label: the default applies.
    assert approve("alice", rollout(), policies=policies, ns_labels={}).allowed
    assert not approve("erin", rollout(), policies=policies, ns_labels={}).allowed


def test_ai_assisted_rules_add_their_approver_groups():
    policies = [policy("ai", AI_RULES)]
    plain = rollout(labels={"app": "checkout"})
    ai = rollout(labels={"app": "checkout"}, annotations={names.ANN_AI_ASSISTED: "true"})
    assert admission.approver_groups(plain, policies, {}) == (
        [names.SENIOR_GROUP],
        ["the default when no policy names approver groups"],
    )
    assert admission.approver_groups(ai, policies, {}) == (["senior-engineers", "sre"], ["policy ai"])
    assert approve("erin", ai, policies=policies).allowed
    assert not approve("erin", plain, policies=policies).allowed


def test_rollouts_own_approval_groups_may_approve_but_the_default_stays_senior():
    own = rollout()
    own["spec"]["strategy"]["canary"]["steps"][1] = {"approval": {"count": 1, "approverGroups": ["sre"]}}
    assert admission.approver_groups(own, [], {}) == (["sre"], ["the rollout's own approval step"])
    assert approve("erin", own).allowed
    assert not approve("mallory", own).allowed
    policies = [policy("critical", CRITICAL_BY_NAMESPACE)]
    assert admission.approver_groups(rollout(), policies, {names.LABEL_TIER: "critical"}) == (
        ["sre"],
        ["policy critical"],
    )


def test_policies_from_objects_skips_invalid_policies():
    items = [
        {"metadata": {"name": "critical"}, "spec": CRITICAL_BY_NAMESPACE},
        {"metadata": {"name": "broken"}, "spec": {"selector": {}}},
    ]
    assert [p.name for p in admission.policies_from_objects(items)] == ["critical"]


def test_needs_policy_context_only_when_the_record_changes():
    obj = rollout()
    new = approve("alice", obj).obj
    assert admission.needs_policy_context(AdmissionInput("UPDATE", "alice", GROUPS["alice"], obj, new))
    assert not admission.needs_policy_context(AdmissionInput("UPDATE", "alice", GROUPS["alice"], obj, obj))
    op = names.OPERATOR_USERNAME
    assert not admission.needs_policy_context(AdmissionInput("UPDATE", op, GROUPS[op], obj, new))


# ---------------------------------------------------------------- what passes untouched


def test_operator_may_write_author_and_approvals():
    op = names.OPERATOR_USERNAME
    obj = approved(rollout(), "alice")
    rewritten = edit(obj, author="bob", approvals=record(signed("carol", R1)))
    out = admit(op, obj, rewritten)
    assert out.allowed, out.text
    assert out.obj == rewritten  # and the mutating webhook leaves the operator's writes alone
    assert admit(op, obj, edit(obj, approvals=None, author=None)).allowed


def test_operator_template_change_is_not_attributed():
    op = names.OPERATOR_USERNAME
    old = rollout()
    out = admit(op, old, with_template(old, V3))
    assert out.allowed and out.obj["metadata"]["annotations"][names.ANN_AUTHOR] == "dave"


def test_kopf_annotations_by_anyone_pass():
    obj = approved(rollout(), "alice")
    new = copy.deepcopy(obj)
    new["metadata"]["annotations"]["kopf.zalando.org/last-handled-configuration"] = json.dumps({"spec": {}})
    out = admit("mallory", obj, new)
    assert out.allowed, out.text
    assert out.obj == new


def test_status_subresource_writes_pass_untouched():
    obj = rollout()
    new = edit(obj, author="mallory", approvals="garbage")
    new["status"] = {"phase": "Healthy", "stableRevision": R2}
    out = admit("mallory", obj, new, subresource="status")
    assert out.allowed and out.obj == new


def test_unrelated_updates_by_anyone_pass_and_keep_approvals():
    obj = approved(rollout(), "alice")
    new = edit(obj, action="promote")
    new["metadata"]["labels"]["team"] = "shop"
    out = admit("mallory", obj, new)
    assert out.allowed, out.text
    assert entries_of(out.obj) == entries_of(obj)


def test_deletes_pass():
    obj = rollout()
    req = AdmissionInput("DELETE", "mallory", GROUPS["mallory"], obj, None)
    assert admission.validate_rollout(req, KEY, [], {}, NOW) == []
    assert admission.mutate_rollout(req, KEY, NOW) == admission.Mutation()


# ---------------------------------------------------------------- template changes


def test_template_change_sets_author_and_voids_older_approvals():
    obj = approved(rollout(author="dave"), "alice", "bob")
    out = admit("carol", obj, with_template(obj, V3))
    assert out.allowed, out.text
    ann = out.obj["metadata"]["annotations"]
    assert ann[names.ANN_AUTHOR] == "carol"
    assert names.ANN_APPROVALS not in ann
    assert out.warnings == (
        f"spec.template changed (new revision {R3}): 2 approval(s) of the previous revision no longer count",
    )
    # The new revision starts from zero; the old approvers may approve it again.
    again = approved(out.obj, "alice", "bob", revision=R3)
    assert [(e.user, e.revision) for e in entries_of(again)] == [("alice", R3), ("bob", R3)]


def test_create_sets_author_to_the_creator():
    new = rollout(stable=None, author="someone-else")
    out = admit("dave", None, new)
    assert out.allowed, out.text
    assert out.obj["metadata"]["annotations"][names.ANN_AUTHOR] == "dave"


def test_leftover_approve_is_removed_with_a_warning():
    stale = rollout(annotations={names.ANN_APPROVE: R2})
    out = admit("bob", stale, edit(stale, action="promote"))
    assert out.allowed, out.text
    assert names.ANN_APPROVE not in out.obj["metadata"]["annotations"]
    assert entries_of(out.obj) == []
    assert out.warnings and "leftover" in out.warnings[0]


# ---------------------------------------------------------------- specs the CRD schema cannot check


def spec_problems(changes: dict[str, Any] | None = None, **top: Any) -> list[str]:
    body = spec(V2)
    body.update(top)
    for path, value in (changes or {}).items():
        node = body
        *parents, last = path.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    obj = rollout()
    obj["spec"] = body
    obj["metadata"]["annotations"].update(authored("dave", tmpl=obj["spec"]["template"]))
    req = AdmissionInput("CREATE", "dave", GROUPS["dave"], None, obj)
    return [p.message for p in admission.validate_rollout(req, KEY, [], {}, NOW)]


def steps(*items: dict[str, Any]) -> dict[str, Any]:
    return {"canary": {"steps": list(items)}}


def test_weight_above_100_names_the_field():
    assert spec_problems(strategy=steps({"setWeight": 10}, {"pause": {}}, {"setWeight": 150})) == [
        "spec.strategy.canary.steps[2].setWeight: must be ≤ 100"
    ]


def test_decreasing_weights_are_explained():
    assert spec_problems(strategy=steps({"setWeight": 20}, {"pause": {}}, {"setWeight": 10})) == [
        "spec.strategy.canary: steps[2].setWeight 10 is lower than an earlier weight 20; weights must not "
        "decrease (use an abort to go back)"
    ]


def test_step_with_two_actions_is_explained():
    [line] = spec_problems(strategy=steps({"setWeight": 20, "pause": {}}))
    assert line.startswith(
        "spec.strategy.canary.steps[0]: each step must have exactly one of setWeight, pause, approval, analysis"
    )


def test_unknown_metric_kind_and_unknown_field():
    analysis = {"metrics": [{"name": "latency", "kind": "latency", "max": 1}]}
    assert spec_problems(analysis=analysis, strategy=steps({"setWieght": 5})) == [
        "spec.strategy.canary.steps[0].setWieght: unknown field (see `kubectl explain` for the fields)",
        "spec.analysis.metrics[0].kind: must be one of 'errorRatio', 'orderRateDrop' or 'query' (got 'latency')",
    ]


def test_bad_promql_in_a_query_metric():
    analysis = {
        "metrics": [{"name": "p99", "kind": "query", "query": 'sum(rate(x{service="{{service}}"}[1m])', "max": 1}]
    }
    [line] = spec_problems(analysis=analysis)
    assert line.startswith("spec.analysis.metrics[0].query: query is not valid PromQL: unclosed left parenthesis")


def test_good_query_metric_passes():
    query = 'sum(rate(http_requests_total{service="{{service}}",track="{{track}}"}[{{window}}]))'
    assert spec_problems(analysis={"metrics": [{"name": "rps", "kind": "query", "query": query, "min": 1}]}) == []


def test_invalid_spec_gets_code_422_and_a_line_per_problem():
    obj = rollout()
    obj["spec"]["replicas"] = -1
    obj["spec"]["strategy"] = steps({"setWeight": 101})
    req = AdmissionInput("CREATE", "dave", GROUPS["dave"], None, obj)
    problems = admission.validate_rollout(req, KEY, [], {}, NOW)
    assert admission.denial(problems) == (
        "spec.replicas: must be ≥ 0\nspec.strategy.canary.steps[0].setWeight: must be ≤ 100",
        422,
    )


def test_spec_is_only_checked_when_it_changes():
    bad = rollout()
    bad["spec"]["strategy"] = steps({"setWeight": 101})
    out = approve("alice", bad)
    assert out.allowed, out.text


def test_policy_spec_messages():
    def problems(spec_: dict[str, Any]) -> list[str]:
        req = AdmissionInput("CREATE", "alice", GROUPS["alice"], None, {"metadata": {"name": "p"}, "spec": spec_})
        return [p.message for p in admission.validate_policy(req)]

    assert problems(CRITICAL_BY_NAMESPACE) == []
    assert problems({"selector": {}, "rules": {"approvals": {"count": 0}}}) == [
        "spec.selector: selector needs rolloutSelector or namespaceSelector (either may match)",
        "spec.rules.approvals.count: must be ≥ 1",
    ]
    bad_metric = {"name": "q", "kind": "query", "query": "rate(x)", "max": 1}
    [line] = problems({**CRITICAL_BY_NAMESPACE, "aiAssisted": {"requiredMetrics": [bad_metric]}})
    assert line.startswith("spec.aiAssisted.requiredMetrics[0].query: query is not valid PromQL")
    op = names.OPERATOR_USERNAME
    assert admission.validate_policy(AdmissionInput("CREATE", op, GROUPS[op], None, {"spec": {}})) == []


# ---------------------------------------------------------------- deleting a critical Rollout

UID = "6f1c2a52-0000-4000-8000-000000000001"
DELETION = policy("critical", {
    "selector": {"rolloutSelector": {"matchLabels": {names.LABEL_TIER: "critical"}}},
    "rules": {"deletion": {"count": 2, "approverGroups": [names.SENIOR_GROUP], "expiry": "1h"}},
})


def live(obj: dict[str, Any] | None = None, uid: str = UID, critical: bool = True) -> dict[str, Any]:
    out = copy.deepcopy(obj or rollout(labels={names.LABEL_TIER: "critical"} if critical else {}))
    out["metadata"]["uid"] = uid
    return out


def approve_delete(user: str, obj: dict[str, Any], value: str = UID, **kw: Any) -> Outcome:
    kw.setdefault("policies", [DELETION])
    return admit(user, obj, edit(obj, approve_delete=value), **kw)


def delete_approved(obj: dict[str, Any], *users: str, now: datetime = NOW) -> dict[str, Any]:
    for user in users:
        out = approve_delete(user, obj, now=now)
        assert out.allowed, out.text
        obj = out.obj
    return obj


def delete(user: str, obj: dict[str, Any], *, now: datetime = NOW, terminating: bool = False,
           policies: list[NamedPolicy] | None = None) -> list[admission.Problem]:
    req = AdmissionInput("DELETE", user, GROUPS[user], obj, None)
    return admission.validate_rollout_delete(req, KEY, [DELETION] if policies is None else policies, {}, now,
                                             terminating)


def delete_entries(obj: dict[str, Any]) -> list[ApprovalEntry]:
    entries, problems = parse_record(obj["metadata"]["annotations"].get(names.ANN_DELETE_APPROVALS))
    assert problems == []
    return entries


def test_approve_delete_becomes_a_signed_entry_bound_to_the_uid():
    obj = live()
    out = approve_delete("alice", obj)
    assert out.allowed, out.text
    assert names.ANN_APPROVE_DELETE not in out.obj["metadata"]["annotations"]
    [entry] = delete_entries(out.obj)
    assert (entry.user, entry.revision, entry.rollout) == ("alice", f"delete:{UID}", "shop/checkout")
    assert verify(entry, KEY)
    req = AdmissionInput("UPDATE", "alice", GROUPS["alice"], obj, out.obj)
    [note] = admission.acceptance_notes(req)
    assert "approval to delete shop/checkout" in note and "alice" in note


def test_a_critical_rollout_is_deleted_only_with_two_approvals_from_others():
    obj = live()
    [none] = delete("dave", obj)
    assert "deleting Rollout shop/checkout (and its Deployments) needs approval by others first" in none.message
    assert "counted none" in none.message and "2 more from senior-engineers" in none.message
    assert "controlled-friction approve-delete checkout -n shop" in none.message
    assert none.code == 403
    one = delete_approved(obj, "alice")
    tried("delete with one approval")
    assert delete("dave", one)
    two = delete_approved(one, "bob")
    assert delete("dave", two) == []
    tried("delete approved by the requester")
    [own] = delete("alice", two)
    assert "counted bob" in own.message and "your own approval does not count" in own.message
    assert delete("carol", two) == []


def test_a_non_critical_rollout_deletes_as_before():
    assert delete("dave", live(critical=False)) == []
    assert delete("dave", live(), policies=[]) == []


def test_deletion_approvals_expire():
    tried("expired deletion approvals")
    obj = delete_approved(live(), "alice", "bob")
    assert delete("dave", obj, now=NOW + timedelta(minutes=59)) == []
    [late] = delete("dave", obj, now=NOW + timedelta(minutes=61))
    assert "within 1h" in late.message


def test_a_recreated_rollout_of_the_same_name_needs_new_approvals():
    tried("deletion approvals of an earlier Rollout of the same name")
    obj = delete_approved(live(), "alice", "bob")
    again = copy.deepcopy(obj)
    again["metadata"]["uid"] = "another-uid"
    assert delete("dave", again)


def test_deletion_approvals_written_by_hand_or_copied_are_refused_and_never_count():
    obj = live()
    forged = sign(ApprovalEntry(user="alice", groups=sorted(GROUPS["alice"]), revision=f"delete:{UID}", time=NOW,
                                rollout="shop/checkout"), b"guessed")
    for variant, entry in [
        ("hand-written deletion approval", forged),
        ("deletion approval of another Rollout", signed("alice", f"delete:{UID}", rollout_="shop/other")),
        ("a revision approval passed off as a deletion approval", signed("alice", R2)),
        ("deletion approval in another's name", signed("bob", f"delete:{UID}")),
    ]:
        tried(variant)
        out = admit("alice", obj, edit(obj, delete_approvals=record(entry)), policies=[DELETION])
        assert not out.allowed and names.ANN_DELETE_APPROVALS in out.text, variant
        bypassed = edit(obj, delete_approvals=record(entry))  # written while the webhook was bypassed
        assert delete("dave", bypassed), variant
    approved_ = delete_approved(obj, "alice")
    tried("deletion approvals removed")
    out = admit("dave", approved_, edit(approved_, delete_approvals=None), policies=[DELETION])
    assert not out.allowed and "cannot be edited" in out.text


def test_who_may_approve_a_deletion():
    obj = live()
    tried("engineer approves a deletion")
    out = approve_delete("dave", obj)
    assert not out.allowed and "'dave' may not approve deleting shop/checkout" in out.text
    tried("same person approves a deletion twice")
    out = approve_delete("alice", delete_approved(obj, "alice"))
    assert not out.allowed and "'alice' has already approved deleting shop/checkout" in out.text
    out = approve_delete("alice", obj, value="not-the-uid")
    assert not out.allowed and f"does not name the uid {UID}" in out.text
    assert [p.code for p in out.problems] == [422]
    out = approve_delete("alice", live(critical=False))
    assert not out.allowed and "can be deleted without one" in out.text


def test_approvers_from_other_groups_do_not_count_for_a_deletion():
    sre = policy("sre", {"selector": {"rolloutSelector": {"matchLabels": {names.LABEL_TIER: "critical"}}},
                         "rules": {"deletion": {"count": 1, "approverGroups": ["sre"]}}})
    obj = live()
    for user in ("alice", "bob", "erin"):
        out = approve_delete(user, obj, policies=[DELETION, sre])
        assert out.allowed, out.text
        obj = out.obj
    assert delete("dave", obj, policies=[DELETION, sre]) == []
    without_erin = copy.deepcopy(obj)
    without_erin["metadata"]["annotations"][names.ANN_DELETE_APPROVALS] = record(*delete_entries(obj)[:2])
    [problem] = delete("dave", without_erin, policies=[DELETION, sre])
    assert "1 more from sre" in problem.message


def test_a_terminating_namespace_removes_its_rollouts_unasked():
    assert delete("dave", live(), terminating=True) == []


# ---------------------------------------------------------------- change records

RECORDS = policy("records", {
    "selector": {"rolloutSelector": {"matchLabels": {names.LABEL_TIER: "critical"}}},
    "rules": {"requireChangeRecord": True},
})
GOOD_RECORD = "CHG-1234 raise the checkout pool size to 20"


def critical(annotations: dict[str, str] | None = None, tmpl: dict[str, Any] = V2) -> dict[str, Any]:
    return rollout(tmpl, labels={names.LABEL_TIER: "critical"}, annotations=annotations)


@pytest.mark.parametrize("value", [GOOD_RECORD, "https://jira.example.com/browse/CHG-1 rotate the TLS keys",
                                   "OPS_SEC-7   fix the order drop on Fridays"])
def test_good_change_records(value: str):
    parsed, wrong = change_record.parse(value)
    assert wrong is None and parsed is not None
    assert (parsed.reference, parsed.summary) == tuple(part.strip() for part in value.split(" ", 1))


def test_a_critical_template_change_needs_a_change_record():
    old = critical()
    out = admit("dave", old, with_template(old, V3), policies=[RECORDS])
    assert not out.allowed
    assert out.text.startswith("shop/checkout: this change of spec.template")
    assert "required by policy records" in out.text and names.ANN_CHANGE_RECORD in out.text
    assert [p.code for p in out.problems] == [403]
    ok = admit("dave", old, edit(with_template(old, V3), change_record=GOOD_RECORD), policies=[RECORDS])
    assert ok.allowed, ok.text
    created = admit("dave", None, critical(), policies=[RECORDS])
    assert not created.allowed and "needs a change record" in created.text


def test_change_records_are_not_needed_elsewhere_or_without_a_template_change():
    old = rollout()
    assert admit("dave", old, with_template(old, V3), policies=[RECORDS]).allowed
    crit = critical()
    assert admit("dave", crit, edit(crit, note="x"), policies=[RECORDS]).allowed


def test_ai_assisted_rules_can_require_a_change_record():
    ai = policy("ai", {"selector": {"rolloutSelector": {"matchLabels": {names.LABEL_TIER: "critical"}}},
                       "aiAssisted": {"requireChangeRecord": True}})
    old = critical()
    assert admit("dave", old, with_template(old, V3), policies=[ai]).allowed
    marked = edit(with_template(old, V3), ai_assisted="true")
    out = admit("dave", old, marked, policies=[ai])
    assert not out.allowed and "required by policy ai" in out.text


def test_a_malformed_change_record_is_refused_wherever_it_is_written():
    old = rollout()
    out = admit("dave", old, edit(old, change_record="fixed stuff"))
    assert not out.allowed and out.text.startswith(names.ANN_CHANGE_RECORD)
    assert [p.code for p in out.problems] == [422]


def test_approvers_see_the_change_record_in_the_answer():
    obj = critical({names.ANN_CHANGE_RECORD: GOOD_RECORD})
    out = approve("alice", obj)
    assert out.allowed, out.text
    req = AdmissionInput("UPDATE", "alice", GROUPS["alice"], obj, out.obj)
    assert admission.acceptance_notes(req) == [
        f"approval of revision {R2} of shop/checkout recorded for alice (change record: {GOOD_RECORD})"
    ]
    refused = approve("dave", obj)
    assert not refused.allowed and f"(change record: {GOOD_RECORD})" in refused.text


def test_a_change_record_kept_across_a_template_change_is_pointed_out():
    old = critical({names.ANN_CHANGE_RECORD: GOOD_RECORD})
    out = admit("dave", old, with_template(old, V3), policies=[RECORDS])
    assert out.allowed, out.text
    assert any("same as for the previous revision" in w for w in out.warnings)
