"""Drift: an owned Deployment edited behind the operator's back is restored, decided in the planner."""

from __future__ import annotations

import copy
from dataclasses import replace

from controlled_friction.decisions import ApplyDeployment, RecordEvent
from controlled_friction.drift import changed_paths
from controlled_friction.workloads import pod_template
from tests.planner_world import World, spec
from tests.test_planner import deployed


def stored(template, name="checkout", track="stable", revision="r"):
    """A template as the API server stores it: ours plus defaults."""
    t = copy.deepcopy(pod_template(template, name, track, revision))
    t["spec"]["restartPolicy"] = "Always"
    for c in t["spec"]["containers"]:
        c.setdefault("imagePullPolicy", "IfNotPresent")
        c.setdefault("terminationMessagePath", "/dev/termination-log")
    return t


def test_defaults_and_canonical_quantities_are_not_drift():
    want = {"spec": {"containers": [{"name": "app", "image": "a:1", "resources": {"limits": {"cpu": "0.5"}}}]}}
    got = copy.deepcopy(want)
    got["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "500m"
    got["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    got["spec"]["dnsPolicy"] = "ClusterFirst"
    assert changed_paths(want, got) == []


def test_an_image_or_an_added_env_var_is_drift():
    want = {"spec": {"containers": [{"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}]}]}}
    got = copy.deepcopy(want)
    got["spec"]["containers"][0]["image"] = "evil:1"
    assert changed_paths(want, got) == ["template.spec.containers[app].image"]
    got = copy.deepcopy(want)
    got["spec"]["containers"][0]["env"].append({"name": "B", "value": "2"})
    assert changed_paths(want, got) == ["template.spec.containers[app].env"]


def test_an_edited_stable_is_restored_with_a_warning():
    w = World(spec([{"setWeight": 20}]))
    w.tick()
    w.tick()
    assert w.status.phase == "Healthy" and w.status.stable_template is not None
    rev = w.status.stable_revision
    edited = stored(w.spec.template, revision=rev)
    edited["spec"]["containers"][0]["image"] = "attacker/unreviewed:1"
    assert w.stable is not None
    w.stable = replace(w.stable, template=edited)
    d = w.tick()
    assert ApplyDeployment("stable", rev, w.status.stable_template, 10) in d.actions
    assert d.drift == ("stable",)
    [ev] = [a for a in d.actions if isinstance(a, RecordEvent) and a.reason == "DriftReverted"]
    assert "checkout-stable" in ev.message and "image" in ev.message
    w.stable = replace(w.stable, template=stored(w.spec.template, revision=rev))
    assert w.tick().drift == ()


def test_stable_is_restored_from_status_during_a_canary_not_from_the_new_template():
    w = deployed([{"setWeight": 20}, {"pause": {"duration": "10m"}}])
    w.tick()
    w.tick()
    assert w.status.canary_revision == w.revision
    old = w.status.stable_template
    assert old is not None and old != w.spec.template
    assert w.stable is not None
    edited = stored(old, revision=w.status.stable_revision)
    edited["spec"]["containers"][0]["image"] = "shop/checkout:2"  # someone shipped the canary by hand
    w.stable = replace(w.stable, template=edited)
    d = w.tick()
    assert ApplyDeployment("stable", w.status.stable_revision, old, 10) in d.actions


def test_an_edited_canary_is_restored():
    w = deployed([{"setWeight": 20}, {"pause": {"duration": "10m"}}])
    w.tick()
    w.tick()
    assert w.canary is not None
    edited = stored(w.spec.template, track="canary", revision=w.revision)
    edited["spec"]["containers"][0]["image"] = "other:9"
    w.canary = replace(w.canary, template=edited)
    d = w.tick()
    assert d.drift == ("canary",)
    assert any(isinstance(a, ApplyDeployment) and a.track == "canary" for a in d.actions)
