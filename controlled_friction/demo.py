"""`controlled-friction demo`: the whole story on a real local control plane, in a few minutes.

(a) a good release of a critical service stops at the approval gate; the author cannot approve;
    alice and bob approve with their own identities; it is promoted.
(b) a bad release (orders -99%) is rolled back by itself; the failing metric, its value, the time to
    rollback and the orders lost are printed.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import yaml
from rich.console import Console

from controlled_friction import names
from controlled_friction.adapters.kube import Kube, load_api_client
from controlled_friction.revision import revision_of
from controlled_friction.sandbox import cluster
from controlled_friction.sandbox.operator_proc import OperatorProcess, install_crds

console = Console(highlight=False, soft_wrap=True)
POLICY = "demo-critical-services"


def policy() -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": "FrictionPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "selector": {
                "rolloutSelector": {"matchLabels": {names.LABEL_TIER: "critical"}},
                "namespaceSelector": {"matchLabels": {names.LABEL_TIER: "critical"}},
            },
            "rules": {
                "maxFirstWeight": 10,
                "minBake": "10s",
                "approvals": {"count": 2, "approverGroups": [names.SENIOR_GROUP], "expiry": "1h"},
                "requiredMetrics": [{"name": "orders", "kind": "orderRateDrop", "maxDrop": 0.3}],
            },
        },
    }


def rollout(namespace: str, image: str, **sim: str) -> dict[str, Any]:
    annotations = {names.SIM_PREFIX + k: v for k, v in sim.items()}
    return {
        "apiVersion": names.API_VERSION,
        "kind": "Rollout",
        "metadata": {"name": "checkout", "namespace": namespace, "labels": {names.LABEL_TIER: "critical"}},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "checkout"}},
            "template": {
                "metadata": {"labels": {"app": "checkout"}, "annotations": annotations},
                "spec": {"containers": [{"name": "checkout", "image": image}]},
            },
            "strategy": {
                "canary": {
                    "steps": [
                        {"setWeight": 10},
                        {"pause": {"duration": "10s"}},
                        {"setWeight": 50},
                        {"pause": {"duration": "10s"}},
                    ]
                }
            },
            "analysis": {
                "interval": "2s",
                "window": "20s",
                "metrics": [{"name": "errors", "kind": "errorRatio", "maxRatio": 0.05}],
            },
        },
    }


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.last: tuple[Any, ...] | None = None

    def say(self, text: str, style: str = "") -> None:
        console.print(f"[dim]{time.monotonic() - self.t0:7.1f}s[/dim]  {text}", style=style)

    def show(self, obj: dict[str, Any]) -> None:
        st = obj.get("status") or {}
        key = (st.get("phase"), st.get("canaryWeight"), st.get("currentStepIndex"), st.get("approvalsSummary"))
        if key != self.last:
            self.last = key
            self.say(
                f"[bold]{st.get('phase', '-'):16}[/bold] weight {st.get('canaryWeight', 0):>3}%  "
                f"step {st.get('currentStepIndex', 0)}  approvals {st.get('approvalsSummary', '-'):4}  "
                f"{st.get('message', '')}"
            )


def wait_until(kube: Kube, ns: str, tl: Timeline, pred: Callable[[dict[str, Any]], bool], timeout: float,
               what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = kube.get_rollout(ns, "checkout")
        tl.show(obj)
        if pred(obj):
            return obj
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def as_user(user: str, *args: str, stdin: str | None = None) -> tuple[bool, str]:
    proc = cluster.kubectl(*args, kubeconfig_file=cluster.kubeconfig_path(user), stdin=stdin, check=False)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def lost_orders(sim_url: str, ns: str) -> float | None:
    try:
        with urllib.request.urlopen(f"{sim_url}/lost", timeout=3) as resp:
            data = json.load(resp)
    except OSError:
        return None
    total = 0.0
    for entry in data if isinstance(data, list) else data.get("services", []):
        if entry.get("namespace") == ns:
            total += float(entry.get("lost", 0))
    return total


def main() -> int:
    tl = Timeline()
    console.rule("controlled-friction demo")
    tl.say("bringing up the sandbox (the first run builds Kubernetes from source: ~15 min on 2 cores)")
    info = cluster.up(quiet=False)
    install_crds()
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(policy()))
    tl.say(f"FrictionPolicy {POLICY}: critical services need 2 senior approvals, first step ≤ 10%, bake ≥ 10s")

    op = OperatorProcess(log_path=info.state_dir / "logs" / "demo-operator.log", webhook_port=info.ports.get(
        "webhook", 19443), metrics_port=0)
    op.start()
    try:
        op.wait_webhook_ready()
        tl.say(f"operator running (pid {op.proc.pid if op.proc else '?'}, log {op.log_path})")
        return _story(tl, info.simulator_url)
    finally:
        op.stop()
        # Leave the sandbox as found: a cluster-wide policy would add friction to whatever runs next.
        cluster.kubectl("delete", "frictionpolicy", POLICY, "--ignore-not-found", check=False)
        tl.say("operator stopped; the sandbox keeps running (`controlled-friction sandbox down` to stop it)")


def _story(tl: Timeline, sim_url: str) -> int:
    kube = Kube(load_api_client(str(cluster.kubeconfig_path("admin"))))
    ns = f"shop-{uuid.uuid4().hex[:4]}"
    cluster.kubectl("create", "namespace", ns)
    console.rule(f"setup: carol deploys checkout v1 into {ns}")
    ok, out = as_user("carol", "apply", "-f", "-", stdin=yaml.safe_dump(rollout(ns, "shop/checkout:1")))
    if not ok:
        raise RuntimeError(out)
    wait_until(kube, ns, tl, lambda o: (o.get("status") or {}).get("phase") == "Healthy", 120, "v1 stable")

    console.rule("(a) a good release of a critical service")
    good = rollout(ns, "shop/checkout:2")
    rev = revision_of(good["spec"]["template"])
    as_user("carol", "apply", "-f", "-", stdin=yaml.safe_dump(good))
    tl.say(f"carol (a senior engineer) applied revision {rev}: she is its author")
    wait_until(kube, ns, tl, lambda o: (o.get("status") or {}).get("phase") == "AwaitingApproval", 180, "the gate")
    for user, who in (("carol", "the author"), ("dave", "not a senior engineer")):
        ok, out = as_user(user, "annotate", "rollout", "checkout", "-n", ns, f"{names.ANN_APPROVE}={rev}")
        tl.say(f"{user} ({who}) tries to approve: {'accepted?!' if ok else 'refused'} — {out.splitlines()[-1]}",
               "red" if ok else "yellow")
    for user in ("alice", "bob"):
        ok, out = as_user(user, "annotate", "rollout", "checkout", "-n", ns, f"{names.ANN_APPROVE}={rev}")
        tl.say(f"{user} approves {rev}: {'recorded' if ok else out}", "green" if ok else "red")
    obj = wait_until(kube, ns, tl, lambda o: (o.get("status") or {}).get("stableRevision") == rev
                     and (o.get("status") or {}).get("phase") == "Healthy", 300, "promotion")
    approvers = [a["user"] for a in (obj["status"].get("approvals") or [])]
    tl.say(f"promoted {rev} to 100% (approved by {', '.join(approvers) or 'n/a'})", "bold green")

    console.rule("(b) a bad release: orders -99% on the canary")
    bad = rollout(ns, "shop/checkout:3", **{"order-drop": "0.99"})
    bad_rev = revision_of(bad["spec"]["template"])
    lost_before = lost_orders(sim_url, ns) or 0.0
    as_user("carol", "apply", "-f", "-", stdin=yaml.safe_dump(bad))
    tl.say(f"carol applied revision {bad_rev} (simulated: loses 99% of its orders)")
    wait_until(kube, ns, tl, lambda o: (o.get("status") or {}).get("canaryWeight", 0) > 0, 120, "canary traffic")
    t_traffic = time.monotonic()
    obj = wait_until(kube, ns, tl, lambda o: (o.get("status") or {}).get("phase") == "RolledBack", 300, "rollback")
    t_rollback = time.monotonic() - t_traffic
    st = obj["status"]
    failing = [m.get("last") for m in (st.get("analysis") or {}).get("metrics", [])
               if (m.get("last") or {}).get("verdict") == "fail"]
    for m in failing:
        tl.say(f"failing metric {m['metric']}: value {m.get('value')} (bound {m.get('bound')}) — {m.get('message')}",
               "red")
    lost = lost_orders(sim_url, ns)
    lost_txt = f"{lost - lost_before:.0f}" if lost is not None else "unknown (simulator /lost unavailable)"
    tl.say(f"rolled back {t_rollback:.1f}s after the canary took traffic; orders lost: {lost_txt}", "bold")
    stable = kube.get_deployment(ns, "checkout-stable") or {}
    labels = stable.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    tl.say(f"stable untouched: still revision {labels.get(names.LABEL_REVISION)} "
           f"with {stable.get('spec', {}).get('replicas')} replicas")
    ok_story = bool(failing) and labels.get(names.LABEL_REVISION) == rev
    console.rule("done" if ok_story else "done, with surprises")
    return 0 if ok_story else 1
