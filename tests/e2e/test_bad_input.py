"""Bad input against the real API server: every malformed Rollout and FrictionPolicy of the shared
corpus (`tests/test_bad_input_unit.py`) is sent twice while a healthy rollout progresses.

1. With the admission webhooks in place: each is refused (by the CRD schema, the API server or the
   webhook) with a message naming the field.
2. With the webhook configurations removed (as if installed without them): each is either refused
   by the API server naming the field, or it gets in and the operator marks it `Invalid` (Rollouts)
   or `valid: false` (policies) with a message naming the field; a Rollout matched by such a policy
   is held, naming the policy.

Meanwhile the operator must not crash or restart, must not fail a reconcile of these objects, and
the healthy rollout must finish.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlled_friction import names
from controlled_friction.adapters.kube import Kube
from controlled_friction.sandbox import cluster
from controlled_friction.sandbox.operator_proc import OperatorProcess

from ..test_bad_input_unit import ALL_CASES, BadInput, mentions, valid_rollout
from .rollouts import admin, apply_as, canary_steps, revision, rollout, status, wait_phase
from .waiting import wait_for

pytestmark = pytest.mark.e2e
WEBHOOK_KINDS = ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
# An invalid policy whose selector cannot be read holds every rollout in the cluster (fail closed):
# sent with the webhook bypassed it would hold this test's healthy rollout too, so it is only sent
# through admission here (the unit test covers the hold).
HOLDS_EVERYTHING = {"policy-selector-empty", "policy-selector-missing"}


def _create(kubeconfig: Path, obj: dict[str, Any]) -> tuple[int, str]:
    proc = cluster.kubectl("create", "-f", "-", stdin=yaml.safe_dump(obj), check=False, kubeconfig_file=kubeconfig)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


@contextmanager
def webhooks_bypassed() -> Iterator[None]:
    """Remove the webhook configurations kopf registered, and put the very same ones back after."""
    saved = []
    for kind in WEBHOOK_KINDS:
        obj = json.loads(cluster.kubectl("get", kind, names.GROUP, "-o", "json").stdout)
        for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
            obj["metadata"].pop(key, None)
        saved.append(obj)
    for kind in WEBHOOK_KINDS:
        cluster.kubectl("delete", kind, names.GROUP)
    try:
        yield
    finally:
        for obj in saved:
            cluster.kubectl("create", "-f", "-", stdin=json.dumps(obj))


class Sender:
    def __init__(self, ns: str, token: str) -> None:
        self.ns, self.token = ns, token
        self.sent = 0
        # Written once here: kubeconfig_path rewrites the file, which threads must not race on.
        self.kubeconfigs = {"Rollout": cluster.kubeconfig_path("dave"),
                            "FrictionPolicy": cluster.kubeconfig_path("admin")}

    def name_of(self, i: int, case: BadInput) -> str:
        return f"bad-{i:02d}" if case.kind == "Rollout" else f"e2e-bad-{self.token}-{i:02d}"

    def build(self, i: int, case: BadInput) -> dict[str, Any]:
        return case.build(self.name_of(i, case), self.ns, ns_label=self.token)

    def send_all(self, cases: list[tuple[int, BadInput]]) -> dict[int, tuple[int, str]]:
        def send(item: tuple[int, BadInput]) -> tuple[int, tuple[int, str]]:
            i, case = item
            return i, _create(self.kubeconfigs[case.kind], self.build(i, case))

        with ThreadPoolExecutor(4) as pool:
            out = dict(pool.map(send, cases))
        self.sent += len(cases)
        return out


def _reconcile_failures(op: OperatorProcess, ns: str) -> list[str]:
    return [line for line in op.log_path.read_text(errors="replace").splitlines()
            if "reconcile failed" in line and f'"{ns}"' in line]


def test_malformed_objects_are_refused_or_marked_invalid(live_operator: OperatorProcess, namespace: str,
                                                         make_namespace: Callable[..., str]):
    kube = admin()
    token = uuid.uuid4().hex[:8]
    held_ns = make_namespace("held", labels={"cf-e2e-bad-input": token})
    pid = live_operator.proc.pid if live_operator.proc else None

    # A healthy rollout that must keep progressing through all of this.
    steps = canary_steps(20, "20s", 50, "2s")
    v1 = rollout(namespace, "shop/app:1", steps, name="healthy", replicas=2)
    apply_as("dave", v1)
    wait_phase(kube, namespace, "Healthy", name="healthy", revision_=revision(v1))
    v2 = rollout(namespace, "shop/app:2", steps, name="healthy", replicas=2)
    apply_as("dave", v2)

    sender = Sender(namespace, token)
    cases = list(enumerate(ALL_CASES))
    problems: list[str] = []

    # 1. Through admission: everything is refused, naming the field; except pod templates only the
    #    API server's Deployment checks can judge: those get in and the operator marks them Invalid.
    admitted: dict[int, dict[str, Any]] = {}
    for i, (code, out) in sorted(sender.send_all(cases).items()):
        case = ALL_CASES[i]
        if code == 0 and case.layer == "workload":
            admitted[i] = sender.build(i, case)
        elif code == 0:
            problems.append(f"{case.id}: admitted with the webhooks in place")
        elif not mentions(out, case):
            problems.append(f"{case.id}: refusal does not name {case.names_}: {out}")
    refused_at_admission = len(cases) - len(admitted) - sum(p.endswith("in place") for p in problems)

    # 2. Webhooks bypassed: refused by the API server, or admitted and marked Invalid by the operator.
    # Change records are checked by admission alone (the operator shows what is there), so they are
    # sent through the webhook only.
    bypass = [(i, c) for i, c in cases if c.id not in HOLDS_EVERYTHING and i not in admitted
              and c.layer != "record"]
    admitted_first = len(admitted)
    created_policies: list[str] = []
    try:
        with webhooks_bypassed():
            for i, (code, out) in sorted(sender.send_all(bypass).items()):
                case, obj = ALL_CASES[i], sender.build(i, ALL_CASES[i])
                if code == 0:
                    admitted[i] = obj
                    if case.kind == "FrictionPolicy":
                        created_policies.append(obj["metadata"]["name"])
                elif not mentions(out, case):
                    problems.append(f"{case.id} (no webhook): refusal does not name {case.names_}: {out}")
            # A good Rollout where the admitted invalid policies apply (created while they exist).
            held = valid_rollout("held", held_ns)
            held_admitted = bool(created_policies)
            if held_admitted:
                apply_as("dave", held)

        def verdicts() -> dict[int, tuple[bool, str]]:
            out = {}
            for i, obj in admitted.items():
                if obj["kind"] == "Rollout":
                    st = status(kube, namespace, obj["metadata"]["name"])
                    out[i] = (st.get("phase") == "Invalid", str(st.get("message", "")))
                else:
                    st = _policy_status(kube, obj["metadata"]["name"])
                    out[i] = (st.get("valid") is False, str(st.get("message", "")))
            return out

        def all_invalid() -> dict[int, tuple[bool, str]] | None:
            v = verdicts()
            return v if all(ok for ok, _ in v.values()) else None

        final = wait_for(all_invalid, 60, message="every admitted object marked invalid") if admitted else {}
        assert final is not None
        for i, (_, message) in final.items():
            case = ALL_CASES[i]
            if not mentions(message, case):
                problems.append(f"{case.id} (admitted): Invalid message does not name {case.names_}: {message}")
        if held_admitted:
            st = wait_phase(kube, held_ns, "Invalid", name="held", timeout=60)
            assert all(name in st["message"] for name in created_policies), st["message"]
            assert st["message"].startswith("invalid policy: ") and "policy is fixed" in st["message"], st["message"]
    finally:
        for name in created_policies:
            cluster.kubectl("delete", names.POLICY_PLURAL, name, "--ignore-not-found", check=False)

    print(f"\nbad inputs tried: {sender.sent} ({len(ALL_CASES)} kinds, each with and without the webhook); "
          f"refused at admission: {refused_at_admission}/{len(cases)}; admitted and marked invalid: "
          f"{len(admitted)} ({sorted(ALL_CASES[i].id for i in admitted)}); with the webhook bypassed, refused "
          f"by the API server: {len(bypass) - len(admitted) + admitted_first}")
    assert not problems, "\n".join(problems)
    wait_phase(kube, namespace, "Healthy", name="healthy", revision_=revision(v2), timeout=120)
    assert live_operator.alive() and live_operator.proc is not None and live_operator.proc.pid == pid, \
        "the operator restarted"
    assert _reconcile_failures(live_operator, namespace) == []
    assert _reconcile_failures(live_operator, held_ns) == []


def _policy_status(kube: Kube, name: str) -> dict[str, Any]:
    obj: Any = kube.custom.get_cluster_custom_object(names.GROUP, names.VERSION, names.POLICY_PLURAL, name)
    return dict(obj.get("status") or {})
