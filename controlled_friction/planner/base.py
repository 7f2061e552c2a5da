"""The planner's shared state and plumbing: what every concern (steps, analysis, approvals, promotion)
reads and writes while one decision is being made."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from controlled_friction import names
from controlled_friction.decisions import (
    Action,
    ClearAction,
    Decision,
    DeploymentObs,
    EnsureService,
    RecordEvent,
    RollbackReason,
    RolloutInput,
    ScaleDeployment,
    Track,
)
from controlled_friction.models.rollout import Condition, HistoryEntry, Phase, RolloutStatus
from controlled_friction.revision import revision_of

HISTORY_LIMIT = 20
ACTIONS = ("promote", "abort", "retry")
# A rollout in flight is looked at again at least this often even if nothing seems to change (a lost
# watch event must not strand it). A settled one (Healthy, RolledBack, Invalid) waits for a change.
RESYNC = timedelta(seconds=60)
SETTLED: tuple[Phase, ...] = ("Healthy", "RolledBack", "Invalid")


def effective_weight(stable: DeploymentObs | None, canary: DeploymentObs | None) -> float:
    s = stable.ready_replicas if stable else 0
    c = canary.ready_replicas if canary else 0
    return round(100.0 * c / (s + c), 1) if s + c else 0.0


class Base:
    def __init__(self, inp: RolloutInput) -> None:
        self.inp = inp
        self.spec = inp.spec
        self.obs = inp.obs
        self.now = inp.now
        self.st = inp.status.model_copy(deep=True)
        self.before_phase: Phase = inp.status.phase
        self.actions: list[Action] = []
        self.wakes: list[tuple[datetime, bool]] = []  # (instant, routine)
        self.rollback_reason: RollbackReason | None = None
        self.drifted: list[Track] = []
        self.revision = revision_of(inp.spec.template)
        self.action = self._take_action()

    # -- plumbing

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.actions.append(RecordEvent(type_, reason, message))

    def set_phase(self, phase: Phase, message: str) -> None:
        self.st.phase = phase
        self.st.message = message

    def wake_at(self, when: datetime | None, routine: bool = False) -> None:
        """Ask to be looked at again at `when` even if nothing changes by then; `routine` for the
        analysis grid, which may run late under load, as opposed to a deadline (a bake's end)."""
        if when is not None:
            self.wakes.append((when, routine))

    def _take_action(self) -> str | None:
        raw = self.inp.annotations.get(names.ANN_ACTION)
        if raw is None:
            return None
        self.actions.append(ClearAction(raw))
        value = raw.strip().lower()
        if value not in ACTIONS:
            self.event("Warning", "UnknownAction", f"ignored action {raw!r}; use one of {', '.join(ACTIONS)}")
            return None
        return value

    def history(self, revision: str, outcome: str, reason: str, approvers: list[str] | None = None) -> None:
        entry = HistoryEntry.model_validate(
            {
                "revision": revision,
                "outcome": outcome,
                "at": self.now,
                "reason": reason,
                "approvers": approvers or [],
                "author": self.inp.annotations.get(names.ANN_AUTHOR),
                "changeRecord": self.inp.annotations.get(names.ANN_CHANGE_RECORD),
            }
        )
        self.st.history = [*self.st.history, entry][-HISTORY_LIMIT:]

    def finish(self) -> Decision:
        unique: list[Action] = []
        for a in self.actions:  # several branches may ask for the same scale; send it once
            if a not in unique:
                unique.append(a)
        self.actions = unique
        self.st.observed_generation = self.inp.generation
        if self.st.phase == "Healthy":
            self.st.effective_weight = 0.0  # stable serves all; a retired canary's pods get no new requests
        elif not (self.st.phase == self.before_phase == "Promoting"):
            # While stable rolls to the promoted revision both tracks run it, and the pods' share moves
            # with every pod started: it keeps the share the last step served instead of a write per pod.
            self.st.effective_weight = effective_weight(self.obs.stable, self.obs.canary)
        self.traffic_status()
        if self.st.phase != self.before_phase:
            kind: Literal["Normal", "Warning"] = (
                "Warning" if self.st.phase in ("RolledBack", "Invalid") else "Normal"
            )
            self.event(kind, self.st.phase, self.st.message)
        set_conditions(self.st, self.now)
        nxt = self._next_look()
        return Decision(self.st, tuple(self.actions), nxt[0] if nxt else None, self.rollback_reason,
                        tuple(self.drifted), next_look_routine=nxt[1] if nxt else False)

    def _next_look(self) -> tuple[datetime, bool] | None:
        """The earliest instant asked for, and whether only routine wake-ups asked for it."""
        wakes = [w for w in self.wakes if w[0] > self.now]
        if self.st.phase not in SETTLED:
            wakes.append((self.now + RESYNC, True))
        elif any(not isinstance(a, RecordEvent) for a in self.actions):
            # Workload writes of a settling rollout: look once more soon, in case an event is lost.
            wakes.append((self.now + RESYNC, True))
        if not wakes:
            return None
        first = min(w[0] for w in wakes)
        return first, all(routine for when, routine in wakes if when == first)

    def traffic_status(self) -> None:
        """Fill the traffic fields of the status (see `traffic.Traffic`)."""

    # -- workloads

    def ensure_service(self) -> None:
        svc = self.spec.service
        if svc is not None and not self.obs.service_exists:
            self.actions.append(
                EnsureService(svc.name, svc.port, svc.target_port, dict(self.spec.selector.match_labels))
            )

    def scale_canary_to_zero(self) -> None:
        if self.obs.canary is not None and self.obs.canary.replicas != 0:
            self.actions.append(ScaleDeployment("canary", 0))

    def ensure_stable_replicas(self) -> None:
        if self.obs.stable is not None and self.obs.stable.replicas != self.spec.replicas:
            self.actions.append(ScaleDeployment("stable", self.spec.replicas))


def set_conditions(st: RolloutStatus, now: datetime) -> None:
    wanted = {
        "Healthy": ("True" if st.phase == "Healthy" else "False", st.phase),
        "Progressing": (
            "True" if st.phase in ("Progressing", "Paused", "AwaitingApproval", "Promoting") else "False",
            st.phase,
        ),
        "RolledBack": ("True" if st.phase == "RolledBack" else "False", st.phase),
        "Valid": ("False" if st.phase == "Invalid" else "True", st.phase),
    }
    old = {c.type: c for c in st.conditions}
    out = []
    for ctype, (status, reason) in wanted.items():
        prev = old.get(ctype)
        changed = prev is None or prev.status != status
        out.append(
            Condition.model_validate(
                {
                    "type": ctype,
                    "status": status,
                    "reason": reason,
                    "message": st.message if status == "True" or ctype == "Valid" else "",
                    "lastTransitionTime": now if changed or prev is None else prev.last_transition_time,
                }
            )
        )
    st.conditions = out
