"""The generated CRDs: up to date with the models, structural, documented, and true to the contract.

Applying them to a real kube-apiserver is in tests/e2e/test_crds_apply.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel, Field

from controlled_friction import crdgen, names
from controlled_friction.durations import parse_duration
from controlled_friction.models.base import SpecModel
from controlled_friction.models.policy import FrictionPolicySpec
from controlled_friction.models.rollout import RolloutSpec

ROOT = Path(__file__).resolve().parents[1]
Schema = dict[str, Any]

# What a structural schema node may say; anything else would be a construct this test does not vet.
ALLOWED_KEYS = {
    "description", "type", "format", "enum", "default", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "required",
    "properties", "additionalProperties", "items", "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
}


def _crds() -> dict[str, Schema]:
    return {
        "Rollout": yaml.safe_load((ROOT / "crds" / crdgen.ROLLOUT_FILE).read_text()),
        "FrictionPolicy": yaml.safe_load((ROOT / "crds" / crdgen.POLICY_FILE).read_text()),
    }


def _root_schema(crd: Schema) -> Schema:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def _nodes(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _properties(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}", sub
        yield from _properties(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _properties(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _properties(schema["additionalProperties"], f"{path}{{}}")


@pytest.fixture(params=["Rollout", "FrictionPolicy"])
def crd(request: pytest.FixtureRequest) -> Schema:
    return _crds()[request.param]


# ---------------------------------------------------------------- freshness


def test_generated_files_match_the_models() -> None:
    problems = crdgen.stale(ROOT)
    assert not problems, "run `python -m controlled_friction.crdgen`:\n" + "\n".join(d for _, d in problems)


def test_check_mode_reports_stale_files_and_write_fixes_them(tmp_path: Path) -> None:
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1  # nothing generated yet
    assert crdgen.main(["--root", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 0
    target = tmp_path / "charts" / "controlled-friction" / "crds" / crdgen.ROLLOUT_FILE
    target.write_text(target.read_text().replace("cfro", "xx"))
    assert [p for p, _ in crdgen.stale(tmp_path)] == [target]


def test_the_packaged_copy_is_what_the_operator_installs() -> None:
    from controlled_friction.sandbox.operator_proc import crd_manifests

    installed = [d for d in yaml.safe_load_all(crd_manifests()) if d]
    assert sorted(d["metadata"]["name"] for d in installed) == [
        f"{names.POLICY_PLURAL}.{names.GROUP}", f"{names.ROLLOUT_PLURAL}.{names.GROUP}",
    ]
    assert installed == [_crds()["FrictionPolicy"], _crds()["Rollout"]]


# ---------------------------------------------------------------- contract


def test_rollout_names_scope_and_subresources_follow_the_contract() -> None:
    spec = _crds()["Rollout"]["spec"]
    assert spec["group"] == names.GROUP == "controlled-friction.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "Rollout"
    assert spec["names"]["plural"] == names.ROLLOUT_PLURAL == "rollouts"
    assert spec["names"]["singular"] == "rollout"
    assert spec["names"]["shortNames"] == ["cfro"]
    assert "all" not in spec["names"]["categories"]
    (version,) = spec["versions"]
    assert version["name"] == names.VERSION == "v1alpha1"
    assert version["served"] and version["storage"]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["replicas"]["type"] == "integer" and status["selector"]["type"] == "string"


def test_rollout_names_a_gateway_api_route() -> None:
    spec = _root_schema(_crds()["Rollout"])["properties"]["spec"]["properties"]
    route = spec["trafficRouting"]["properties"]["gatewayAPI"]["properties"]["httpRoute"]
    assert route["type"] == "string" and "HTTPRoute" in route["description"]
    assert spec["trafficRouting"]["properties"]["gatewayAPI"]["required"] == ["httpRoute"]


def test_policy_names_scope_and_subresources_follow_the_contract() -> None:
    spec = _crds()["FrictionPolicy"]["spec"]
    assert spec["group"] == names.GROUP
    assert spec["scope"] == "Cluster"
    assert spec["names"]["plural"] == names.POLICY_PLURAL == "frictionpolicies"
    assert spec["names"]["shortNames"] == ["fpol"]
    (version,) = spec["versions"]
    assert version["subresources"] == {"status": {}}


def test_rollout_printer_columns() -> None:
    (version,) = _crds()["Rollout"]["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    expected = {
        "Phase": ".status.phase",
        "Weight": ".status.canaryWeight",
        "Step": ".status.currentStepIndex",
        "Approvals": ".status.approvalsSummary",
        "Canary": ".status.canaryRevision",
        "Stable": ".status.stableRevision",
        "Message": ".status.message",
        "Age": ".metadata.creationTimestamp",
    }
    assert {name: c["jsonPath"] for name, c in columns.items()} == expected
    assert columns["Stable"]["priority"] == 1 and columns["Message"]["priority"] == 1
    assert all("priority" not in columns[n] for n in ("Phase", "Weight", "Step", "Approvals", "Canary", "Age"))


def test_policy_printer_columns() -> None:
    (version,) = _crds()["FrictionPolicy"]["spec"]["versions"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Valid"] == ".status.valid"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_printer_columns_point_at_declared_fields_of_the_right_type(crd: Schema) -> None:
    (version,) = crd["spec"]["versions"]
    root = _root_schema(crd)
    json_types = {"integer": "integer", "string": "string", "boolean": "boolean", "number": "number"}
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].lstrip(".").split(".")
        if path[0] == "metadata":
            continue
        node = root
        for part in path:
            node = node["properties"][part]
        assert json_types[column["type"]] == node["type"], column


# ---------------------------------------------------------------- structural


def test_schemas_are_structural(crd: Schema) -> None:
    for path, node in _nodes(_root_schema(crd)):
        assert set(node) <= ALLOWED_KEYS, f"{path}: {set(node) - ALLOWED_KEYS}"
        assert "$ref" not in node and "nullable" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            continue
        assert "type" in node, f"{path} has no type"
        if node["type"] == "object" and not node.get("x-kubernetes-preserve-unknown-fields") and path != ".metadata":
            # Exactly one way to describe the contents (the API server's metadata schema is implicit).
            assert ("properties" in node) != ("additionalProperties" in node), path
            assert node.get("properties") or isinstance(node.get("additionalProperties"), dict), path
        if node["type"] == "array":
            assert "items" in node, path
        for key in ("required",):
            for name in node.get(key, []):
                assert name in node["properties"], f"{path}: required {name} is not a property"


def test_every_field_has_a_description(crd: Schema) -> None:
    undocumented = [p for p, s in _properties(_root_schema(crd)) if p != ".metadata" and not s.get("description")]
    assert undocumented == []


def test_open_parts_preserve_unknown_fields() -> None:
    spec = _root_schema(_crds()["Rollout"])["properties"]["spec"]
    template = spec["properties"]["template"]
    assert template == {
        "description": template["description"],
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    labels = spec["properties"]["selector"]["properties"]["matchLabels"]
    assert labels["additionalProperties"] == {"type": "string"}


def test_durations_are_int_or_string_with_defaults_in_wire_form() -> None:
    analysis = _root_schema(_crds()["Rollout"])["properties"]["spec"]["properties"]["analysis"]["properties"]
    assert analysis["interval"]["default"] == "2s"
    assert analysis["window"]["default"] == "1m"
    assert analysis["interval"]["x-kubernetes-int-or-string"] is True
    policy = _root_schema(_crds()["FrictionPolicy"])["properties"]["spec"]["properties"]
    expiry = policy["rules"]["properties"]["approvals"]["properties"]["expiry"]
    assert expiry["default"] == "24h"
    assert "Duration such as" in expiry["description"]


@pytest.mark.parametrize(
    "text",
    ["30s", "2m", "1h30m", "500ms", "1.5h", "90", "2.5", "1h2m3s", "2 minutes", "2m ", "m", "-1s", "1d", ""],
)
def test_duration_pattern_agrees_with_the_parser(text: str) -> None:
    try:
        parse_duration(text)
        accepted = text == text.strip()  # the parser strips blanks; the API server need not
    except ValueError:
        accepted = False
    assert bool(re.fullmatch(crdgen.DURATION_PATTERN, text)) == accepted


def test_validation_keywords_and_enums_are_kept() -> None:
    spec = _root_schema(_crds()["Rollout"])["properties"]["spec"]["properties"]
    step = spec["strategy"]["properties"]["canary"]["properties"]["steps"]
    assert (step["minItems"], step["maxItems"]) == (1, 100)
    weight = step["items"]["properties"]["setWeight"]
    assert (weight["type"], weight["minimum"], weight["maximum"]) == ("integer", 0, 100)
    metric = spec["analysis"]["properties"]["metrics"]["items"]
    assert metric["properties"]["kind"]["enum"] == ["errorRatio", "orderRateDrop", "query"]
    assert metric["properties"]["name"]["pattern"].startswith("^[a-z0-9]")
    assert metric["required"] == ["name", "kind"]
    status = _root_schema(_crds()["Rollout"])["properties"]["status"]["properties"]
    assert "AwaitingApproval" in status["phase"]["enum"]
    assert status["history"]["items"]["properties"]["at"]["format"] == "date-time"
    assert _root_schema(_crds()["Rollout"])["required"] == ["spec"]


def test_status_declares_every_model_field_and_has_no_defaults() -> None:
    status = _root_schema(_crds()["Rollout"])["properties"]["status"]
    from controlled_friction.models.rollout import RolloutStatus

    assert set(status["properties"]) == {f.alias or n for n, f in RolloutStatus.model_fields.items()}
    assert all("default" not in node for _, node in _nodes(status))


def test_spec_defaults_validate_with_the_models() -> None:
    """Every default the API server would fill in must be something the models accept."""
    for crd, model in ((_crds()["Rollout"], RolloutSpec), (_crds()["FrictionPolicy"], FrictionPolicySpec)):
        spec = _root_schema(crd)["properties"]["spec"]
        defaulted_nodes = [(p, n) for p, n in _nodes(spec) if "default" in n]
        assert defaulted_nodes, model
        for path, node in defaulted_nodes:
            value = node["default"]
            if node.get("x-kubernetes-int-or-string"):
                assert isinstance(value, str) and re.fullmatch(node["pattern"], value), path
                parse_duration(value)
            elif node["type"] == "integer":
                assert isinstance(value, int), path
                assert node.get("minimum", value) <= value <= node.get("maximum", value), path
            else:
                assert isinstance(value, {"string": str, "boolean": bool, "number": float | int}[node["type"]]), path
    # A spec the API server has defaulted still validates and means the same.
    rollout = {
        "selector": {"matchLabels": {"app": "a"}},
        "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "a", "image": "a"}]}},
        "strategy": {"canary": {"steps": [{"setWeight": 10}, {"analysis": {}}]}},
        "analysis": {},
    }
    defaulted = _apply_defaults(rollout, _root_schema(_crds()["Rollout"])["properties"]["spec"])
    assert defaulted["analysis"]["interval"] == "2s"
    assert defaulted["strategy"]["canary"]["steps"][1]["analysis"]["duration"] == "1m"
    assert RolloutSpec.model_validate(defaulted) == RolloutSpec.model_validate(rollout)


def _apply_defaults(value: Any, schema: Schema) -> Any:
    """The API server's defaulting, for the constructs these CRDs use (objects, arrays, scalars)."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, sub in schema["properties"].items():
            if name not in out and "default" in sub:
                out[name] = sub["default"]
            if name in out:
                out[name] = _apply_defaults(out[name], sub)
        return out
    if isinstance(value, list) and "items" in schema:
        return [_apply_defaults(v, schema["items"]) for v in value]
    return value


# ---------------------------------------------------------------- the converter itself


class _Union(SpecModel):
    value: int | str = Field(description="Either.")


class _Documented(BaseModel):
    kind: Literal["only"] = Field(description="A constant.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Anything.")
    maybe: float | None = Field(default=None, ge=0, description="Optional number.")


def test_unions_other_than_optional_are_refused() -> None:
    with pytest.raises(crdgen.SchemaError, match="Optional"):
        crdgen.structural_schema(_Union, keep_defaults=True)


def test_const_open_dict_and_optional_conversions() -> None:
    schema = crdgen.structural_schema(_Documented, keep_defaults=True)
    props = schema["properties"]
    assert props["kind"] == {"description": "A constant.", "type": "string", "enum": ["only"]}
    assert props["extra"] == {
        "description": "Anything.", "type": "object", "x-kubernetes-preserve-unknown-fields": True,
    }
    assert props["maybe"] == {"description": "Optional number.", "type": "number", "minimum": 0}
    assert schema["required"] == ["kind"]
