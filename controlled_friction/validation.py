"""Rules on a Rollout the schema cannot express: one place, used by admission and by the planner
(so the webhook's refusal and the operator's Invalid status say the same thing)."""

from __future__ import annotations

from controlled_friction import names
from controlled_friction.analysis import query_problems
from controlled_friction.decisions import InvalidPolicy
from controlled_friction.models.rollout import RolloutSpec


def spec_problems(spec: RolloutSpec) -> list[str]:
    """Rules the schema cannot express that pydantic did not already enforce."""
    return query_problems(spec.analysis.metrics, "spec.analysis.metrics") + step_metric_problems(spec)


def step_metric_problems(spec: RolloutSpec) -> list[str]:
    """Analysis steps naming metrics the Rollout does not declare (admission refuses them too)."""
    problems = []
    known = {m.name for m in spec.analysis.metrics}
    for i, step in enumerate(spec.strategy.canary.steps):
        if step.analysis is not None:
            unknown = [n for n in step.analysis.metrics if n not in known]
            if unknown:
                problems.append(
                    f"spec.strategy.canary.steps[{i}].analysis.metrics: unknown metric(s) {unknown}; "
                    "declare them in spec.analysis.metrics"
                )
    return problems


def name_problems(name: str) -> list[str]:
    """The Rollout's name becomes a label value on its pods, so it must fit one."""
    if len(name) > 63:
        return [f"metadata.name: at most 63 characters, as it becomes the value of the {names.LABEL_ROLLOUT} "
                f"label of the pods ({len(name)} given); choose a shorter name"]
    return []


def policy_hold(invalid_policies: tuple[InvalidPolicy, ...], labels: dict[str, str],
                namespace_labels: dict[str, str]) -> str | None:
    """Why invalid policies hold a rollout, if they do: one whose selector matches it, or cannot be
    read, holds it (fail closed: a typo in a policy never drops its friction)."""
    held = [f"policy {p.name} is invalid ({p.message})" for p in invalid_policies
            if p.selector is None or p.selector.matches(labels, namespace_labels)]
    return "; ".join(held) + " — held until the policy is fixed" if held else None
