"""Rich renderings of Rollouts for the CLI: pure functions from API dicts (and `now`) to renderables.

Nothing here reads the clock or talks to the cluster, so every view can be tested with fabricated
status dicts. Every piece of state is spelled out in words as well as colour, so the output stays
readable with NO_COLOR or in a CI log. Dynamic text is always wrapped in `Text`, never parsed as
markup: messages routinely contain brackets (e.g. "unknown metric(s) ['x']").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from controlled_friction import errors, names
from controlled_friction.approvers import required_groups
from controlled_friction.durations import format_duration
from controlled_friction.models.rollout import (
    EffectivePlan,
    MetricSpec,
    MetricState,
    PlannedStep,
    RolloutStatus,
)
from controlled_friction.revision import revision_of
from controlled_friction.template_diff import ANN_CHANGE_RECORD, Change, ChangeReport, render_value

PHASE_STYLES = {
    "Pending": "dim",
    "Progressing": "cyan",
    "Paused": "yellow",
    "AwaitingApproval": "bold yellow",
    "Promoting": "blue",
    "Healthy": "green",
    "RolledBack": "bold red",
    "Invalid": "bold red",
}
VERDICT_STYLES = {"pass": "green", "fail": "bold red", "inconclusive": "yellow", "error": "magenta"}
OUTCOME_STYLES = {"Promoted": "green", "RolledBack": "red", "Aborted": "red", "Superseded": "dim"}
ACTIVE_PHASES = ("Progressing", "Paused", "AwaitingApproval", "Promoting")
CURRENT_MARK = "▶"
EVENTS_SHOWN = 8

# Defaults of spec.analysis, used when a Rollout leaves its limits out.
_LIMIT_DEFAULTS = {"failureLimit": 2, "inconclusiveLimit": 6, "errorLimit": 4}


# ---------------------------------------------------------------- small formatters


def parse_time(value: Any) -> datetime | None:
    """A timestamp from the API (ISO string, possibly with Z) or a datetime; naive means UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        ts = value
    else:
        try:
            ts = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def human_duration(seconds: float) -> str:
    """Compact, kubectl-like: 45s, 3m20s, 42m, 5h12m, 3d4h."""
    s = max(0, math.ceil(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 10:
        return f"{m}m{s}s" if s else f"{m}m"
    if m < 60:
        return f"{m}m"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m}m" if m and h < 10 else f"{h}h"
    d, h = divmod(h, 24)
    return f"{d}d{h}h" if h and d < 7 else f"{d}d"


def age(value: Any, now: datetime) -> str:
    ts = parse_time(value)
    return human_duration((now - ts).total_seconds()) if ts else "-"


def format_value(value: float | None) -> str:
    if value is None:
        return "no data"
    if value == 0:
        return "0"
    return f"{value:.4g}"


def phase_text(phase: str | None) -> Text:
    phase = phase or "Pending"
    return Text(phase, style=PHASE_STYLES.get(phase, ""))


def verdict_text(verdict: str) -> Text:
    return Text(verdict, style=VERDICT_STYLES.get(verdict, ""))


def _seconds(value: float | None) -> str:
    return format_duration(value) if value is not None else "-"


def _short(rev: Any) -> str:
    return str(rev) if rev else "-"


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return dict(_meta(obj).get("annotations") or {})


def read_status(obj: dict[str, Any]) -> tuple[RolloutStatus | None, str]:
    """The typed status, or None and why it could not be read (e.g. written by a newer operator)."""
    try:
        return RolloutStatus.model_validate(obj.get("status") or {}), ""
    except ValidationError as exc:
        return None, "; ".join(errors.describe(exc, "status"))


def template_revision(obj: dict[str, Any]) -> str | None:
    template = (obj.get("spec") or {}).get("template")
    return revision_of(template) if isinstance(template, dict) else None


def _has_canary(st: RolloutStatus) -> bool:
    return bool(st.canary_revision) and st.phase in ACTIVE_PHASES


# ---------------------------------------------------------------- steps


def step_summary(step: PlannedStep) -> str:
    """What a step of the effective plan does, in words."""
    if step.kind == "setWeight":
        return f"set canary weight to {step.set_weight}%"
    if step.kind == "pause":
        if step.pause_seconds is None:
            return "pause until the promote action"
        return f"bake {_seconds(step.pause_seconds)}"
    if step.kind == "approval":
        if not step.approvals:
            return "approval gate"
        return " and ".join(
            f"{a.count} approval{'s' if a.count != 1 else ''} from {', '.join(required_groups(a.groups))} "
            f"(required by {a.source})"
            for a in step.approvals
        )
    metrics = ", ".join(step.metrics) or "all metrics"
    return f"analyse {metrics} for {_seconds(step.analysis_seconds)}"


def step_progress(st: RolloutStatus, now: datetime) -> str:
    """The current step with its remaining bake/analysis time, or why there is none."""
    plan = st.effective_plan
    if plan is None or not plan.steps:
        return "-"
    total = len(plan.steps)
    idx = st.current_step_index
    if not _has_canary(st):
        if st.phase == "RolledBack" and st.canary_revision:
            return f"stopped at step {min(idx + 1, total)}/{total}"
        return "-"
    if idx >= total:
        return f"{total}/{total} done: promoting"
    step = plan.steps[idx]
    text = f"{idx + 1}/{total} {step.kind}: {step_summary(step)}"
    timed = step.pause_seconds if step.kind == "pause" else step.analysis_seconds if step.kind == "analysis" else None
    if timed is not None and st.step_started_at is not None:
        left = timed - (now - st.step_started_at).total_seconds()
        word = "bake" if step.kind == "pause" else "analysis"
        text += f" — {word} {human_duration(left)} left" if left > 0 else f" — {word} time done"
    elif step.kind == "setWeight" and st.canary_weight != step.set_weight:
        text += f" (scaling; {st.canary_weight}% in force)"
    return text


def added_by_text(step: PlannedStep) -> Text:
    if not step.added_by:
        return Text("rollout spec", style="dim")
    return Text("\n".join(f"{a.policy}: {a.rule}" for a in step.added_by))


# ---------------------------------------------------------------- status: list


def rollout_row(obj: dict[str, Any], now: datetime) -> dict[str, str]:
    """One line of the Rollout list, as text (the terminal table and the dashboard show the same)."""
    meta = _meta(obj)
    raw = obj.get("status") or {}
    st, _ = read_status(obj)
    step = "-"
    if st is not None and st.effective_plan is not None and _has_canary(st):
        total = len(st.effective_plan.steps)
        step = f"{min(st.current_step_index + 1, total)}/{total}"
    return {
        "namespace": str(meta.get("namespace", "")),
        "name": str(meta.get("name", "")),
        "phase": str(raw.get("phase") or "Pending"),
        "weight": f"{raw.get('canaryWeight', 0)}%",
        "step": step,
        "approvals": str(raw.get("approvalsSummary") or "-"),
        "canaryRevision": _short(raw.get("canaryRevision")),
        "stableRevision": _short(raw.get("stableRevision")),
        "age": age(meta.get("creationTimestamp"), now),
        "message": str(raw.get("message") or ""),
    }


def rollout_rows(items: Iterable[dict[str, Any]], now: datetime) -> list[dict[str, str]]:
    rows = sorted(items, key=lambda o: (_meta(o).get("namespace", ""), _meta(o).get("name", "")))
    return [rollout_row(obj, now) for obj in rows]


def rollouts_table(items: Iterable[dict[str, Any]], now: datetime) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("NAMESPACE", "NAME", "PHASE", "WEIGHT", "STEP", "APPROVALS", "CANARY", "STABLE", "AGE"):
        table.add_column(col, no_wrap=True)
    table.add_column("MESSAGE", overflow="fold")
    for row in rollout_rows(items, now):
        table.add_row(
            Text(row["namespace"]),
            Text(row["name"]),
            phase_text(row["phase"]),
            row["weight"],
            row["step"],
            Text(row["approvals"]),
            Text(row["canaryRevision"]),
            Text(row["stableRevision"]),
            row["age"],
            Text(row["message"]),
        )
    return table


# ---------------------------------------------------------------- status: one rollout


def _current_gate(st: RolloutStatus) -> PlannedStep | None:
    plan = st.effective_plan
    if plan is not None and _has_canary(st) and st.current_step_index < len(plan.steps):
        gate = plan.steps[st.current_step_index]
        if gate.kind == "approval" and gate.approvals:
            return gate
    return None


def approvals_info(st: RolloutStatus, now: datetime) -> dict[str, Any]:
    """Who approved when, how many more are needed and from which groups (when at a gate)."""
    gate = _current_gate(st)
    counted, _, required = (st.approvals_summary or "").partition("/")
    more = None
    if counted.isdigit() and required.isdigit():
        more = max(0, int(required) - int(counted))
    return {
        "summary": st.approvals_summary or "-",
        "approvers": [
            {"user": a.user, "time": a.time.isoformat() if a.time else None, "ago": age(a.time, now)}
            for a in st.approvals
        ],
        "atGate": gate is not None,
        "needs": step_summary(gate) if gate is not None else None,
        "groups": sorted({g for a in gate.approvals for g in required_groups(a.groups)}) if gate is not None else [],
        "more": more,
    }


def _approvals_text(st: RolloutStatus, now: datetime) -> Text:
    info = approvals_info(st, now)
    who = ", ".join(f"{a['user']} ({a['ago']} ago)" for a in info["approvers"])
    summary = info["summary"]
    if summary == "-" and not who:
        return Text("none required", style="dim")
    text = Text(summary if summary != "-" else f"{len(st.approvals)}", style="bold")
    text.append(f" — {who}" if who else " — nobody yet")
    if info["needs"]:
        text.append(f"\nneeds {info['needs']}", style="dim")
    return text


def _limits(spec: dict[str, Any]) -> dict[str, int]:
    analysis = spec.get("analysis") or {}
    out = {}
    for key, default in _LIMIT_DEFAULTS.items():
        try:
            out[key] = int(analysis.get(key, default))
        except (TypeError, ValueError):
            out[key] = default
    return out


def _streak(state: MetricState | None, limits: dict[str, int]) -> str:
    if state is None:
        return "-"
    if state.consecutive_failures:
        return f"{state.consecutive_failures}/{limits['failureLimit']} failing"
    if state.consecutive_errors:
        return f"{state.consecutive_errors}/{limits['errorLimit']} errors"
    if state.consecutive_inconclusive:
        return f"{state.consecutive_inconclusive}/{limits['inconclusiveLimit']} inconclusive"
    return f"{state.passes_in_step} pass(es) in step"


def measurements_table(st: RolloutStatus, spec: dict[str, Any], now: datetime) -> Table:
    """Last measurement per metric: value against its bound, verdict, and how close to a rollback."""
    table = Table(title="Analysis (last measurement per metric)", title_justify="left", header_style="bold")
    for col in ("metric", "verdict", "value", "bound", "streak", "measured"):
        table.add_column(col, no_wrap=True)
    table.add_column("message", overflow="fold")
    for row in measurement_rows(st, spec, now):
        if row["verdict"] is None:
            table.add_row(Text(row["metric"]), Text("not measured yet", style="dim"), "-", "-", "-", "-", "")
            continue
        table.add_row(
            Text(row["metric"]),
            verdict_text(row["verdict"]),
            row["value"],
            Text(row["bound"]),
            row["streak"],
            row["measured"],
            Text(row["message"]),
        )
    return table


def measurement_rows(st: RolloutStatus, spec: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    """The last measurement of each planned (then any other) metric, as text; verdict None if none yet."""
    states = {m.metric: m for m in st.analysis.metrics}
    planned = [m.name for m in st.effective_plan.metrics] if st.effective_plan else []
    limits = _limits(spec)
    rows: list[dict[str, Any]] = []
    for name in [*planned, *sorted(n for n in states if n not in planned)]:
        state = states.get(name)
        last = state.last if state else None
        if last is None:
            rows.append({"metric": name, "verdict": None, "value": "-", "bound": "-", "streak": "-",
                         "measured": "-", "message": ""})
            continue
        rows.append({
            "metric": name,
            "verdict": last.verdict,
            "value": format_value(last.value),
            "bound": last.bound or "-",
            "streak": _streak(state, limits),
            "measured": f"{age(last.time, now)} ago" if last.time else "-",
            "message": last.message,
        })
    return rows


def _event_time(ev: dict[str, Any]) -> datetime | None:
    meta = ev.get("metadata") or {}
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        ts = parse_time(ev.get(key))
        if ts:
            return ts
    return parse_time(meta.get("creationTimestamp"))


def events_table(events: Iterable[dict[str, Any]], now: datetime, limit: int = EVENTS_SHOWN) -> Table:
    table = Table(title="Recent events", title_justify="left", header_style="bold")
    for col in ("age", "type", "reason", "count"):
        table.add_column(col, no_wrap=True)
    table.add_column("message", overflow="fold")
    for ev in event_rows(events, now, limit):
        table.add_row(
            ev["age"],
            Text(ev["type"], style="yellow" if ev["type"] == "Warning" else ""),
            Text(ev["reason"]),
            str(ev["count"]),
            Text(ev["message"]),
        )
    return table


def event_rows(events: Iterable[dict[str, Any]], now: datetime, limit: int = EVENTS_SHOWN) -> list[dict[str, Any]]:
    """The most recent Events, oldest first."""
    epoch = datetime.fromtimestamp(0, UTC)
    recent = sorted(events, key=lambda e: _event_time(e) or epoch)[-limit:]
    return [
        {
            "age": age(_event_time(ev), now),
            "type": str(ev.get("type") or ""),
            "reason": str(ev.get("reason") or ""),
            "count": int(ev.get("count") or 1),
            "message": str(ev.get("message") or ""),
        }
        for ev in recent
    ]


def _field_grid() -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    return grid


def rollout_panel(
    obj: dict[str, Any], events: list[dict[str, Any]], now: datetime, change: str | None = None
) -> Panel:
    """Everything a person needs to know about one Rollout right now. `change` is the one-line
    summary of the stable -> canary template diff (`template_diff.summarize`), when known."""
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    raw = obj.get("status") or {}
    title = f"Rollout {meta.get('namespace', '?')}/{meta.get('name', '?')}"
    grid = _field_grid()
    st, problem = read_status(obj)
    if st is None:
        grid.add_row("Phase", phase_text(raw.get("phase")))
        grid.add_row("Message", Text(str(raw.get("message") or "")))
        grid.add_row("Status", Text(f"cannot read the rest of the status: {problem}", style="red"))
        return Panel(Group(grid, events_table(events, now)), title=title, title_align="left", expand=False)

    grid.add_row("Phase", phase_text(st.phase))
    grid.add_row("Message", Text(st.message or "-"))
    grid.add_row("Stable revision", Text(_short(st.stable_revision)))
    grid.add_row("Canary revision", Text(_short(st.canary_revision)))
    rev = template_revision(obj)
    generation = meta.get("generation")
    seen = st.observed_generation is not None and generation is not None and st.observed_generation >= generation
    grid.add_row("Template revision", Text(f"{_short(rev)}" + ("" if seen else " (not yet seen by the operator)")))
    if change:
        grid.add_row("Change", Text(change))
    grid.add_row(
        "Weight",
        Text(f"{st.canary_weight}% step weight, {st.effective_weight:g}% effective (canary share of ready pods)"),
    )
    grid.add_row("Step", Text(step_progress(st, now)))
    grid.add_row("Approvals", _approvals_text(st, now))
    ann = _annotations(obj)
    author = ann.get(names.ANN_AUTHOR)
    claimed = ann.get(names.ANN_CHANGE_AUTHOR)
    if author or claimed:
        who = author or "-"
        if claimed and claimed != author:
            who += f" (change author: {claimed})"
        grid.add_row("Author", Text(who))
    record = ann.get(ANN_CHANGE_RECORD)
    if record:
        grid.add_row("Change record", Text(record))
    if st.effective_plan is not None:
        grid.add_row("Policies", Text(", ".join(st.effective_plan.policies) or "none match"))
        if st.effective_plan.frozen_reason:
            grid.add_row("Frozen", Text(st.effective_plan.frozen_reason, style="yellow"))
    parts: list[RenderableType] = [grid]
    if st.analysis.metrics or (st.effective_plan and st.effective_plan.metrics):
        parts.append(measurements_table(st, spec, now))
    parts.append(events_table(events, now) if events else Text("No events.", style="dim"))
    return Panel(Group(*parts), title=title, title_align="left", expand=False)


# ---------------------------------------------------------------- explain


def metric_check(m: MetricSpec) -> str:
    """The bounds of a metric, in words."""
    checks: list[str] = []
    if m.kind == "errorRatio":
        if m.max_ratio is not None:
            checks.append(f"canary 5xx share ≤ {m.max_ratio:g}")
        if m.max_increase_over_stable is not None:
            checks.append(f"canary 5xx share ≤ stable's + {m.max_increase_over_stable:g}")
    elif m.kind == "orderRateDrop":
        if m.max_drop is not None:
            checks.append(f"orders per request ≥ stable's - {m.max_drop:.0%}")
        if m.max_baseline_drop is not None:
            checks.append(f"service order rate ≥ pre-rollout - {m.max_baseline_drop:.0%}")
    else:
        if m.min is not None:
            checks.append(f"value ≥ {m.min:g}")
        if m.max is not None:
            checks.append(f"value ≤ {m.max:g}")
        checks.append(f"query: {m.query}")
    return "\n".join(checks)


def _steps_table(plan: EffectivePlan, current: int | None) -> Table:
    table = Table(title="Steps", title_justify="left", header_style="bold")
    table.add_column("#", no_wrap=True, justify="right")
    table.add_column("kind", no_wrap=True)
    table.add_column("what", overflow="fold")
    table.add_column("added / changed by (policy: rule)", overflow="fold")
    for i, step in enumerate(plan.steps):
        is_current = current == i
        table.add_row(
            f"{CURRENT_MARK} {i + 1}" if is_current else str(i + 1),
            step.kind,
            Text(step_summary(step) + ("  ← current" if is_current else "")),
            added_by_text(step),
            style="bold" if is_current else None,
        )
    return table


def _metrics_table(plan: EffectivePlan) -> Table:
    table = Table(title="Metrics analysed", title_justify="left", header_style="bold")
    for col in ("metric", "kind", "window"):
        table.add_column(col, no_wrap=True)
    table.add_column("check", overflow="fold")
    table.add_column("from", overflow="fold")
    for m in plan.metrics:
        sources = plan.metric_sources.get(m.name) or ["rollout"]
        table.add_row(
            Text(m.name),
            m.kind,
            _seconds(m.window) if m.window is not None else "default",
            Text(metric_check(m)),
            Text(", ".join("rollout spec" if s == "rollout" else f"policy {s}" for s in sources)),
        )
    return table


def explain_view(obj: dict[str, Any], preview: EffectivePlan | None = None) -> RenderableType:
    """The effective plan step by step, with the policy and rule behind every change.

    A canary in progress shows the plan frozen for it; otherwise `preview` (the plan the next
    template change would get), else the last canary's plan."""
    meta = _meta(obj)
    title = f"Effective plan of {meta.get('namespace', '?')}/{meta.get('name', '?')}"
    st, problem = read_status(obj)
    if st is None:
        body = Text(f"cannot read the status: {problem}", style="red")
        return Panel(body, title=title, title_align="left", expand=False)
    active = _has_canary(st)
    plan = st.effective_plan if active or preview is None else preview
    if plan is None:
        return Panel(
            Text(
                "No effective plan yet: the operator computes it when a canary starts "
                "(apply a new template to start one)."
            ),
            title=title,
            title_align="left",
            expand=False,
        )
    grid = _field_grid()
    if active:
        grid.add_row("Canary", Text(f"revision {st.canary_revision}, phase {st.phase}"))
    elif plan is preview:
        grid.add_row(
            "Canary",
            Text(f"none in progress (phase {st.phase}); preview of the plan the next template change gets, "
                 "from the Rollout and the FrictionPolicies as they are now"),
        )
    else:
        grid.add_row("Canary", Text(f"none in progress (phase {st.phase}); this is the plan of the last canary"))
    grid.add_row(
        "Policies",
        Text(", ".join(plan.policies) if plan.policies else "none match this rollout (plan = the rollout's own steps)"),
    )
    record = _annotations(obj).get(ANN_CHANGE_RECORD)
    grid.add_row("Change record", Text(record or "- (none given)", style="" if record else "dim"))
    ann_ai = _annotations(obj).get(names.ANN_AI_ASSISTED, "").strip().lower() == "true"
    if plan.ai_assisted:
        ai = "yes: the aiAssisted rules of the matching policies apply"
    elif ann_ai and plan is not preview:
        ai = "annotated, but this plan was computed without it; it applies from the next revision"
    else:
        ai = f'no (annotate {names.ANN_AI_ASSISTED}="true" to apply the policies\' aiAssisted rules)'
    grid.add_row("AI-assisted", Text(ai))
    if plan.analysis_interval_seconds:
        grid.add_row("Analysis interval", Text(f"at most {_seconds(plan.analysis_interval_seconds)}"))
    if plan.approval_expiry_seconds:
        grid.add_row("Approval expiry", Text(f"approvals older than {_seconds(plan.approval_expiry_seconds)} lapse"))
    if plan.frozen_reason:
        grid.add_row("Frozen", Text(plan.frozen_reason, style="yellow"))
    parts: list[RenderableType] = [grid, _steps_table(plan, st.current_step_index if active else None)]
    # Requested vs achievable weight per setWeight step: exact with a router, else what replica counts
    # give (traffic.replica_plan: fits, a stable surge, or a hold with the fix).
    from controlled_friction.models.rollout import RolloutSpec
    from controlled_friction.planner.traffic import replica_plan

    try:
        rspec: RolloutSpec | None = RolloutSpec.model_validate(obj.get("spec") or {})
    except ValidationError:
        rspec = None
    weight_steps = [(i, s) for i, s in enumerate(plan.steps) if s.kind == "setWeight" and s.set_weight]
    if rspec is not None and weight_steps:
        routing = rspec.traffic_routing.gateway_api if rspec.traffic_routing else None
        wtable = Table(title="Weights: requested vs achievable", title_justify="left", header_style="bold")
        for col in ("#", "requested", "achievable", "how"):
            wtable.add_column(col, overflow="fold", no_wrap=col != "how")
        canary = rspec.strategy.canary
        for i, step in weight_steps:
            if routing is not None:
                wtable.add_row(str(i + 1), f"{step.set_weight}%", f"{step.set_weight}%",
                               Text(f"exact: HTTPRoute {routing.http_route} weights"))
                continue
            wp = replica_plan(rspec.replicas, step, canary.weight_tolerance, canary.max_surge)
            achievable = f"{wp.share:.1f}%" if wp.share is not None else f"{wp.achievable:.1f}% (held)"
            style = "yellow" if wp.decision == "hold" else ""
            wtable.add_row(str(i + 1), f"{step.set_weight}%", Text(achievable, style=style),
                           Text(f"{wp.decision}: {wp.message}", style=style))
        parts.append(wtable)
    parts.append(_metrics_table(plan) if plan.metrics else Text("No metrics analysed.", style="dim"))
    return Panel(Group(*parts), title=title, title_align="left", expand=False)


# ---------------------------------------------------------------- history


def history_table(obj: dict[str, Any], now: datetime) -> RenderableType:
    meta = _meta(obj)
    st, problem = read_status(obj)
    if st is None:
        return Text(f"cannot read the status: {problem}", style="red")
    if not st.history:
        return Text(f"No history yet for {meta.get('namespace', '?')}/{meta.get('name', '?')}.")
    table = Table(
        title=f"History of {meta.get('namespace', '?')}/{meta.get('name', '?')} (oldest first)",
        title_justify="left",
        header_style="bold",
    )
    for col in ("revision", "outcome", "time"):
        table.add_column(col, no_wrap=True)
    table.add_column("reason", overflow="fold")
    table.add_column("approvers", overflow="fold")
    table.add_column("author", no_wrap=True)
    table.add_column("change record", overflow="fold")
    for h in st.history:
        at = (h.at if h.at.tzinfo else h.at.replace(tzinfo=UTC)).astimezone(UTC)
        table.add_row(
            Text(h.revision),
            Text(h.outcome, style=OUTCOME_STYLES.get(h.outcome, "")),
            f"{at.strftime('%Y-%m-%d %H:%M:%SZ')} ({age(at, now)} ago)",
            Text(h.reason),
            Text(", ".join(h.approvers) or "-"),
            Text(h.author or "-"),
            Text(h.change_record or "-"),
        )
    return table


# ---------------------------------------------------------------- diff


CHANGE_MARKS = {"added": ("+", "green"), "removed": ("-", "red"), "changed": ("~", "yellow")}


def change_line(change: Change) -> str:
    """`~ spec.containers[app].image: shop/app:1 → shop/app:2` (also the dashboard's wording)."""
    mark = CHANGE_MARKS[change.kind][0]
    if change.kind == "added":
        return f"{mark} {change.path}: {render_value(change.new)}"
    if change.kind == "removed":
        return f"{mark} {change.path}: {render_value(change.old)}"
    return f"{mark} {change.path}: {render_value(change.old)} → {render_value(change.new)}"


def diff_view(report: ChangeReport) -> Panel:
    """The stable -> canary template diff with who asked for it and why."""
    grid = _field_grid()
    grid.add_row("Stable", Text(f"revision {_short(report.stable_revision)}"
                                + ("" if report.stable_found else " (no stable Deployment)")))
    grid.add_row("Canary", Text(f"revision {_short(report.canary_revision)} (spec.template)"))
    who = report.author or "- (not recorded by the admission webhook)"
    if report.change_author and report.change_author != report.author:
        who += f" (change author: {report.change_author})"
    grid.add_row("Author", Text(who))
    grid.add_row("Change record", Text(report.change_record or "- (none given)",
                                       style="" if report.change_record else "dim"))
    grid.add_row("Summary", Text(report.summary, style="bold"))
    lines = Text()
    for i, change in enumerate(report.changes):
        if i:
            lines.append("\n")
        lines.append(change_line(change), style=CHANGE_MARKS[change.kind][1])
    body: list[RenderableType] = [grid]
    if report.changes:
        body.append(Text("Changes (stable → canary)", style="bold"))
        body.append(lines)
    title = f"Template diff of {report.namespace}/{report.name}"
    return Panel(Group(*body), title=title, title_align="left", expand=False)


# ---------------------------------------------------------------- one rollout as data (dashboard)


def step_rows(st: RolloutStatus, now: datetime) -> list[dict[str, Any]]:
    """The effective plan as a timeline: each step done, current or pending, time left, and who added it."""
    plan = st.effective_plan
    if plan is None:
        return []
    active = _has_canary(st)
    rows = []
    for i, step in enumerate(plan.steps):
        state = "pending"
        if active:
            state = "done" if i < st.current_step_index else "current" if i == st.current_step_index else "pending"
        elif st.phase == "Healthy" and not st.canary_revision:
            state = "done"
        timed = step.pause_seconds if step.kind == "pause" else step.analysis_seconds if step.kind == "analysis" \
            else None
        left = None
        if state == "current" and timed is not None and st.step_started_at is not None:
            left = max(0.0, timed - (now - st.step_started_at).total_seconds())
        rows.append({
            "index": i + 1,
            "kind": step.kind,
            "summary": step_summary(step),
            "state": state,
            "durationSeconds": timed,
            "remainingSeconds": left,
            "addedBy": [{"policy": a.policy, "rule": a.rule} for a in step.added_by],
        })
    return rows


def rollout_data(
    obj: dict[str, Any], events: list[dict[str, Any]], now: datetime, report: ChangeReport | None = None,
    report_error: str | None = None,
) -> dict[str, Any]:
    """Everything `rollout_panel` shows, as JSON-ready data, plus the step timeline and the diff."""
    meta = _meta(obj)
    raw = obj.get("status") or {}
    row = rollout_row(obj, now)
    st, problem = read_status(obj)
    ann = _annotations(obj)
    data: dict[str, Any] = {
        **row,
        "statusProblem": problem or None,
        "templateRevision": template_revision(obj),
        "author": ann.get(names.ANN_AUTHOR),
        "changeAuthor": ann.get(names.ANN_CHANGE_AUTHOR),
        "changeRecord": ann.get(ANN_CHANGE_RECORD),
        "events": event_rows(events, now),
        "diff": report.to_json() if report is not None else None,
        "diffError": report_error,
        "diffLines": [change_line(c) for c in report.changes] if report is not None else [],
        "pendingAction": ann.get(names.ANN_ACTION),
        "generation": meta.get("generation"),
        "observedGeneration": raw.get("observedGeneration"),
    }
    if st is None:
        return {**data, "stepText": "-", "steps": [], "approvals": None, "measurements": [], "policies": [],
                "frozen": None, "effectiveWeight": None, "actedRevision": None}
    return {
        **data,
        "stepText": step_progress(st, now),
        "steps": step_rows(st, now),
        "approvals": approvals_info(st, now),
        "measurements": measurement_rows(st, obj.get("spec") or {}, now),
        "policies": list(st.effective_plan.policies) if st.effective_plan else [],
        "frozen": st.effective_plan.frozen_reason if st.effective_plan else None,
        "effectiveWeight": st.effective_weight,
        "actedRevision": st.canary_revision or (st.aborted_revision if st.phase == "RolledBack" else None),
        "hasCanary": _has_canary(st),
    }
