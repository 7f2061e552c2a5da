"""Crash suite: many seeded rollouts at once, the operator SIGKILLed at seeded random moments.

Every rollout's status is polled throughout; afterwards statuses, Events, history and Deployments
are audited for the promises a crash must not break:

* a bake timer is never restarted (a step's `stepStartedAt` never changes once seen; the canary's
  `rolloutStartedAt` never changes) and never skipped (nothing after a bake starts before
  start + bake, and every bake and gate of a promoted rollout was seen in force);
* an approval gate is never passed before both approvals were given;
* no double promotion (history: at most one `Promoted` per revision; one `CanaryStarted` Event);
* no rollout is stuck, and each ends right: good -> Healthy on the new revision, bad -> RolledBack
  with stable untouched.

Knobs: CF_CRASH_SEED, CF_CRASH_ROLLOUTS (default 50), CF_CRASH_KILLS (default 8).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from controlled_friction import names
from controlled_friction.adapters.kube import Kube
from controlled_friction.sandbox.operator_proc import OperatorProcess, _listening

from .rollouts import ERRORS, ORDERS, create_rollout, patch_spec, revision, rollout, user_kube
from .waiting import wait_for

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("CF_CRASH_SEED", "20260523"))
ROLLOUTS = int(os.environ.get("CF_CRASH_ROLLOUTS", "50"))
KILLS = int(os.environ.get("CF_CRASH_KILLS", "8"))
NAMESPACES = 4
FINISH_TIMEOUT = 300.0
TERMINAL = ("Healthy", "RolledBack")
APPROVERS = ("alice", "bob")


@dataclass
class Case:
    ns: str
    name: str
    plan: str  # bake | gate (own approval step) | critical (the e2e policy adds the gate)
    fault: dict[str, str] | None
    v1: dict[str, Any]
    v2: dict[str, Any]

    @property
    def good(self) -> bool:
        return self.fault is None

    @property
    def rev1(self) -> str:
        return revision(self.v1)

    @property
    def rev2(self) -> str:
        return revision(self.v2)


@dataclass
class Seen:
    """What the poller saw of one rollout's canary revision."""

    starts: dict[int, datetime] = field(default_factory=dict)
    rollout_started: str | None = None
    plan: list[dict[str, Any]] = field(default_factory=list)
    awaiting: set[int] = field(default_factory=set)
    approved_at: dict[str, datetime] = field(default_factory=dict)  # user -> just before the request
    approval_unverifiable: bool = False
    max_index: int = 0
    last: dict[str, Any] = field(default_factory=dict)


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def build_cases(rng: random.Random, namespaces: list[str]) -> list[Case]:
    cases = []
    for i in range(ROLLOUTS):
        ns = namespaces[i % len(namespaces)]
        plan = rng.choice(["bake", "bake", "gate", "critical"])
        fault = rng.choice([{"error-rate": "0.5"}, {"order-drop": "0.99"}]) if rng.random() < 0.3 else None
        b1, b2 = rng.choice([6, 8, 10]), rng.choice([6, 8, 10])
        steps: list[dict[str, Any]] = [{"setWeight": 25}, {"pause": {"duration": f"{b1}s"}}]
        if plan == "gate":
            steps.append({"approval": {"count": 2}})
        steps += [{"setWeight": 50}, {"pause": {"duration": f"{b2}s"}}]
        metrics = [ERRORS, ORDERS] if fault else rng.choice([[], [ERRORS], [ERRORS, ORDERS]])
        # Generous no-data limits: this suite is about crashes, not about a loaded Prometheus.
        common: dict[str, Any] = {"name": f"app-{i:02d}", "replicas": 1, "metrics": metrics,
                                  "critical": plan == "critical", "inconclusiveLimit": 60, "errorLimit": 30}
        v1, v2 = rollout(ns, "shop/app:1", steps, **common), rollout(ns, "shop/app:2", steps, sim=fault, **common)
        for obj in (v1, v2):  # one pod each: 25% is served as 1 of 2 pods = 50%, which this suite accepts
            obj["spec"]["strategy"]["canary"]["weightTolerance"] = 25
        cases.append(Case(ns, common["name"], plan, fault, v1, v2))
    return cases


class Audit:
    def __init__(self, cases: list[Case]) -> None:
        self.cases = {(c.ns, c.name): c for c in cases}
        self.seen: dict[tuple[str, str], Seen] = {key: Seen() for key in self.cases}
        self.violations: list[str] = []
        self.unsampled = 0  # bakes that passed between two polls (still checked, by their bounds)
        self.approvals = 0
        self.lock = threading.Lock()

    def flag(self, case: Case, what: str) -> None:
        self.violations.append(f"{case.ns}/{case.name} ({case.plan}, {'good' if case.good else 'bad'}): {what}")

    def observe(self, kube: Kube, namespaces: list[str]) -> None:
        objs = [obj for ns in namespaces for obj in kube.list_rollouts(ns)]
        with self.lock:
            for obj in objs:
                case = self.cases.get((obj["metadata"]["namespace"], obj["metadata"]["name"]))
                if case is not None:
                    self._observe_one(case, obj.get("status") or {})

    def _observe_one(self, case: Case, st: dict[str, Any]) -> None:
        s = self.seen[(case.ns, case.name)]
        s.last = st
        if st.get("canaryRevision") != case.rev2 or st.get("phase") in TERMINAL:
            return
        s.plan = ((st.get("effectivePlan") or {}).get("steps")) or s.plan
        started = st.get("rolloutStartedAt")
        if s.rollout_started is None:
            s.rollout_started = started
        elif started != s.rollout_started:
            self.flag(case, f"canary restarted: rolloutStartedAt {s.rollout_started} -> {started}")
            s.rollout_started = started
        idx = int(st.get("currentStepIndex") or 0)
        if idx < s.max_index:
            self.flag(case, f"step index went back from {s.max_index} to {idx}")
        s.max_index = max(s.max_index, idx)
        if st.get("stepStartedAt"):
            at = _t(st["stepStartedAt"])
            first = s.starts.setdefault(idx, at)
            if first != at:
                self.flag(case, f"step {idx} timer restarted: started {first.isoformat()}, now {at.isoformat()}")
        if st.get("phase") == "AwaitingApproval":
            s.awaiting.add(idx)

    def finished(self, case: Case) -> bool:
        """The canary revision reached an end, right or wrong (promoted or rolled back)."""
        st = self.seen[(case.ns, case.name)].last
        return st.get("phase") in TERMINAL and case.rev2 in (st.get("stableRevision"), st.get("abortedRevision"))

    def approve_waiting(self, kubes: dict[str, Kube]) -> int:
        """Give alice's and bob's approvals to every rollout waiting at a gate (retried while the
        webhook is down with the operator); returns how many approvals were recorded."""
        done = 0
        with self.lock:
            waiting = [(self.cases[key], s) for key, s in self.seen.items()
                       if s.last.get("phase") == "AwaitingApproval"
                       and s.last.get("canaryRevision") == self.cases[key].rev2
                       and len(s.approved_at) < len(APPROVERS)]
        for case, s in waiting:
            for user in APPROVERS:
                if user in s.approved_at:
                    continue
                before = datetime.now(UTC)
                try:
                    kubes[user].patch_rollout_annotations(case.ns, case.name, {names.ANN_APPROVE: case.rev2})
                except ApiException as exc:
                    if "already approved" not in str(exc.body):
                        break  # webhook down (operator restarting) or racing: try again next round
                    with self.lock:
                        s.approval_unverifiable = True  # an earlier attempt went through after all
                except Exception:
                    break  # API server busy: next round
                with self.lock:
                    s.approved_at[user] = before
                done += 1
        return done

    def approver(self, kubes: dict[str, Kube], stop: threading.Event) -> None:
        """alice and bob, approving whatever waits at a gate (a thread, so slow webhook calls while
        the operator restarts never stall the polling)."""
        while not stop.is_set():
            self.approvals += self.approve_waiting(kubes)
            stop.wait(0.3)

    # ------------------------------------------------------------ the audit after the run

    def check_final(self, kube: Kube, namespaces: list[str]) -> dict[str, int]:
        counts = {"good": 0, "bad": 0, "gated": 0, "events_lost": 0, "bakes_checked": 0}
        rollouts = {(ns, o["metadata"]["name"]): o for ns in namespaces for o in kube.list_rollouts(ns)}
        events: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for ns in namespaces:
            for e in kube.core.list_namespaced_event(ns).items:
                ev = kube._dict(e)
                events[(ns, ev["involvedObject"]["name"])].append(ev)
        for key, case in self.cases.items():
            st = rollouts[key].get("status") or {}
            counts["good" if case.good else "bad"] += 1
            counts["gated"] += case.plan in ("gate", "critical")
            self._check_outcome(case, st)
            self._check_history(case, st)
            counts["bakes_checked"] += self._check_steps(case, st)
            counts["events_lost"] += self._check_events(case, events[key])
        return counts

    def _check_outcome(self, case: Case, st: dict[str, Any]) -> None:
        phase = st.get("phase")
        if case.good and (phase != "Healthy" or st.get("stableRevision") != case.rev2):
            self.flag(case, f"expected Healthy on {case.rev2}, got {phase} on {st.get('stableRevision')}: "
                            f"{st.get('message')}")
        if not case.good and (phase != "RolledBack" or st.get("abortedRevision") != case.rev2
                              or st.get("stableRevision") != case.rev1):
            self.flag(case, f"expected RolledBack of {case.rev2} with stable {case.rev1}, got {phase}, "
                            f"stable {st.get('stableRevision')}: {st.get('message')}")

    def _check_history(self, case: Case, st: dict[str, Any]) -> None:
        history = st.get("history") or []
        promoted: dict[str, int] = defaultdict(int)
        for h in history:
            if h.get("outcome") == "Promoted":
                promoted[h["revision"]] += 1
        for rev, n in promoted.items():
            if n > 1:
                self.flag(case, f"revision {rev} promoted {n} times")
        mine = [h for h in history if h.get("revision") == case.rev2]
        if case.good:
            if [h["outcome"] for h in mine] != ["Promoted"]:
                self.flag(case, f"history of {case.rev2}: {[h['outcome'] for h in mine]}, expected one Promoted")
            elif case.plan in ("gate", "critical") and sorted(mine[0].get("approvers") or []) != list(APPROVERS):
                self.flag(case, f"promoted with approvers {mine[0].get('approvers')}, expected alice and bob")
        elif [h["outcome"] for h in mine] != ["RolledBack"]:
            self.flag(case, f"history of {case.rev2}: {[h['outcome'] for h in mine]}, expected one RolledBack")

    def _check_steps(self, case: Case, st: dict[str, Any]) -> int:
        """Bakes neither restarted (checked while polling) nor cut short nor skipped; gates held."""
        s = self.seen[(case.ns, case.name)]
        if not s.plan:
            self.flag(case, "never saw its canary in progress")
            return 0
        promoted_at = next((_t(h["at"]) for h in st.get("history") or []
                            if h.get("revision") == case.rev2 and h.get("outcome") == "Promoted"), None)
        checked = 0
        for i, step in enumerate(s.plan):
            later = [at for j, at in s.starts.items() if j > i] + ([promoted_at] if promoted_at else [])
            ended = min(later) if later else None
            if step["kind"] == "pause" and step.get("pauseSeconds") is not None:
                if ended is None:
                    continue  # never got past it (rolled back while baking)
                # Independent of how often we polled: from the latest start seen at or before this
                # step (or the canary's start), every bake up to this one must fit before the next
                # start seen. A skipped or shortened bake cannot pass this.
                known = [(j, at) for j, at in s.starts.items() if j <= i]
                if known:
                    j0, lower = max(known)
                elif s.rollout_started:
                    j0, lower = 0, _t(s.rollout_started)
                else:
                    self.flag(case, f"bake step {i}: no start known before it")
                    continue
                needed = sum(p.get("pauseSeconds") or 0 for p in s.plan[j0:i + 1] if p["kind"] == "pause")
                checked += 1
                self.unsampled += i not in s.starts
                if ended - lower < timedelta(seconds=needed):
                    self.flag(case, f"bake step {i} skipped or cut short: {needed}s of bakes from step {j0} "
                                    f"(started {lower.isoformat()}) but step after {i} at {ended.isoformat()}")
            elif step["kind"] == "approval":
                if promoted_at is None:
                    continue
                if i not in s.awaiting:
                    self.flag(case, f"approval gate {i} was never seen waiting")
                if s.approval_unverifiable:
                    continue
                given = [s.approved_at.get(u) for u in APPROVERS]
                if None in given:
                    self.flag(case, f"gate {i} passed without approvals from {APPROVERS}")
                elif ended is not None and ended < max(g for g in given if g is not None):
                    self.flag(case, f"gate {i} passed at {ended.isoformat()} before the second approval")
        return checked

    def _check_events(self, case: Case, events: list[dict[str, Any]]) -> int:
        def count(reason: str, contains: str) -> int:
            return sum(int(e.get("count") or 1) for e in events
                       if e.get("reason") == reason and contains in (e.get("message") or ""))

        started = count("CanaryStarted", case.rev2)
        if started > 1:
            self.flag(case, f"CanaryStarted recorded {started} times for {case.rev2}")
        if count("RollbackTriggered", case.rev2) > 1:
            self.flag(case, "RollbackTriggered recorded more than once")
        if count("Healthy", f"promoted {case.rev2}") > 1:
            self.flag(case, "promotion recorded more than once")
        return 1 - started  # an Event is best effort: a kill between the status write and it loses it


def _until_all(predicate: Callable[[], bool], what: str, timeout: float = 120) -> None:
    wait_for(predicate, timeout, interval=1.0, message=what)


def test_sigkill_storm_keeps_every_promise(live_operator: OperatorProcess, make_namespace: Callable[..., str]):
    rng = random.Random(SEED)
    namespaces = [make_namespace(f"crash{i}") for i in range(NAMESPACES)]
    cases = build_cases(rng, namespaces)
    dave, admin = user_kube("dave"), user_kube("admin")
    kubes = {u: user_kube(u) for u in APPROVERS}
    t0 = time.monotonic()

    for c in cases:
        create_rollout(dave, c.v1)

    def all_stable() -> bool:
        healthy = {(ns, o["metadata"]["name"]) for ns in namespaces for o in admin.list_rollouts(ns)
                   if (o.get("status") or {}).get("phase") == "Healthy"}
        return len(healthy) == len(cases)

    _until_all(all_stable, f"{len(cases)} first revisions Healthy")
    audit = Audit(cases)
    for i, c in enumerate(cases):  # the canaries, all at once
        patch_spec(dave, c.v2)
        if i % 5 == 4:  # keep watching while patching: the first canaries may be done before the last is sent
            audit.observe(admin, namespaces)
    t_start = time.monotonic()

    kill_rng = random.Random(SEED + 1)
    kills, up = 0, True
    stop = threading.Event()
    approver = threading.Thread(target=audit.approver, args=(kubes, stop), daemon=True)
    approver.start()
    last_poll, max_gap = time.monotonic(), 0.0
    next_kill = time.monotonic() + kill_rng.uniform(1, 5)
    deadline = time.monotonic() + FINISH_TIMEOUT
    while True:
        try:
            audit.observe(admin, namespaces)
            max_gap, last_poll = max(max_gap, time.monotonic() - last_poll), time.monotonic()
        except Exception as exc:  # the API server is busy; the next round reads again
            print(f"poll failed: {exc!r}")
        now = time.monotonic()
        if up and kills < KILLS and now >= next_kill:
            live_operator.kill()  # SIGKILL, wherever it is
            kills += 1
            live_operator.start()
            up = False
        elif not up and _listening(live_operator.webhook_port):
            up = True
            next_kill = now + kill_rng.uniform(1, 6)
        if kills >= KILLS and all(audit.finished(c) for c in cases):
            break
        if now > deadline:
            break
        time.sleep(0.5)
    t_done = time.monotonic()
    stop.set()
    approver.join(timeout=60)
    live_operator.wait_webhook_ready()

    stuck = [f"{c.ns}/{c.name}: {audit.seen[(c.ns, c.name)].last.get('phase')} "
             f"{audit.seen[(c.ns, c.name)].last.get('message')}" for c in cases if not audit.finished(c)]
    # Canary Deployments end at 0 replicas; stable runs the right revision (bad ones never touched it).
    def workloads_settled() -> list[str]:
        wrong = []
        for ns in namespaces:
            deps = {d["metadata"]["name"]: d for d in map(admin._dict, admin.apps.list_namespaced_deployment(ns).items)}
            for c in (c for c in cases if c.ns == ns):
                stable, canary = deps.get(f"{c.name}-stable"), deps.get(f"{c.name}-canary")
                want = c.rev2 if c.good else c.rev1
                got = stable["spec"]["template"]["metadata"]["labels"].get(names.LABEL_REVISION) if stable else None
                if got != want:
                    wrong.append(f"{ns}/{c.name}: stable runs {got}, expected {want}")
                if canary is not None and canary["spec"]["replicas"] != 0:
                    wrong.append(f"{ns}/{c.name}: canary still has {canary['spec']['replicas']} replicas")
        return wrong

    if not stuck:
        try:
            wait_for(lambda: not workloads_settled(), 60, interval=1.0, message="workloads settled")
        except TimeoutError:
            audit.violations += workloads_settled()
    counts = audit.check_final(admin, namespaces)
    print(
        f"\ncrash suite (seed {SEED}): rollouts={len(cases)} (good={counts['good']}, bad={counts['bad']}, "
        f"gated={counts['gated']}) in {NAMESPACES} namespaces; kills={kills}; approvals={audit.approvals}; "
        f"bakes checked={counts['bakes_checked']} ({audit.unsampled} between polls, longest poll gap "
        f"{max_gap:.1f}s); CanaryStarted Events lost to kills={counts['events_lost']}; "
        f"stuck={len(stuck)}; violations={len(audit.violations)}; "
        f"setup {t_start - t0:.0f}s, rollouts+kills {t_done - t_start:.0f}s"
    )
    assert kills == KILLS, f"only {kills} kills happened"
    assert not stuck, "rollouts stuck after the kills:\n" + "\n".join(stuck)
    assert not audit.violations, "\n".join(audit.violations)
    assert live_operator.alive()
