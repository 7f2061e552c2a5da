"""The shell's picture of the cluster: a reconcile plans from our own last write until the watch
delivers it (else every reconcile of a busy Rollout would 409 on a body older than its own write)."""

from __future__ import annotations

from controlled_friction.operator.world import World


def rollout(rv: str, phase: str) -> dict:
    return {"metadata": {"namespace": "ns", "name": "r", "resourceVersion": rv}, "spec": {}, "status": {"phase": phase}}


def world(body: dict) -> World:
    return World({"rollout_index": {("ns", "r"): [body]}, "deployment_index": {}, "service_index": {},
                  "route_index": {}, "policy_index": {}, "namespace_index": {}})


def test_our_newer_write_wins_until_the_watch_catches_up():
    w = world(rollout("100", "Progressing"))
    written = {("ns", "r"): rollout("105", "Healthy")}
    snap = w.snapshot(("ns", "r"), written)
    assert snap is not None and snap.body["status"]["phase"] == "Healthy"
    w.rollouts[("ns", "r")] = [rollout("107", "Healthy")]  # the watch delivered it (and more)
    snap = w.snapshot(("ns", "r"), written)
    assert snap is not None and snap.body["metadata"]["resourceVersion"] == "107"
    assert ("ns", "r") not in written
