"""Template helpers for the infrastructure suite. Resources are found by construct path (aws:cdk:path)
or by the readable logical ids the app sets on purpose (e.g. InferenceFunction), never by hashed ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# What the CDK CLI adds to the context of every synth (path metadata is also what SAM reads).
CLI_CONTEXT = {
    "aws:cdk:enable-path-metadata": True,
    "aws:cdk:enable-asset-metadata": True,
    # Report nag/validation failures in validation-report.json (asserted by test_nag_and_lint)
    # instead of raising from synth, so one bad finding does not hide every other test's result.
    "@aws-cdk/core:failSynthOnValidationErrors": False,
}


def cdk_json_context() -> dict[str, Any]:
    """The context `cdk synth` gets from cdk.json (defaults and feature flags)."""
    return dict(json.loads((ROOT / "cdk.json").read_text())["context"])


def bundle_cache() -> Path:
    """The runtime-layer bundle cache every synth of this suite uses: the app's default
    (.tenantml/bundles), so a second synth reuses the first one's pip bundle instead of rebuilding it."""
    from tenantml_cdk.bundling import default_cache_dir  # loaded by conftest.py, after this module

    return default_cache_dir()


def resources_of(template: dict, cfn_type: str) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == cfn_type}


def by_path(template: dict, path_suffix: str) -> tuple[str, dict]:
    """The one resource whose aws:cdk:path ends with `path_suffix` (construct path, not a logical id)."""
    hits = [(k, v) for k, v in template["Resources"].items()
            if v.get("Metadata", {}).get("aws:cdk:path", "").endswith(path_suffix)]
    assert len(hits) == 1, f"{path_suffix}: {len(hits)} matches"
    return hits[0]


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def refs(value: Any) -> set[str]:
    """Logical ids that `value` points at through Ref or Fn::GetAtt (recursively)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str):
                if not inner.startswith("AWS::"):      # pseudo parameters are not resources
                    found.add(inner)
            elif key == "Fn::GetAtt":
                found.add(inner[0] if isinstance(inner, list) else str(inner).split(".")[0])
            else:
                found |= refs(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= refs(inner)
    return found


def function_role(template: dict, function_id: str) -> str:
    (role,) = refs(template["Resources"][function_id]["Properties"]["Role"])
    return role


def role_statements(template: dict, role_id: str) -> list[dict]:
    """Every IAM statement that applies to a role: its inline policies and attached AWS::IAM::Policy."""
    role = template["Resources"][role_id]["Properties"]
    out = [s for p in role.get("Policies", []) for s in as_list(p["PolicyDocument"]["Statement"])]
    for policy in resources_of(template, "AWS::IAM::Policy").values():
        if role_id in refs(policy["Properties"].get("Roles", [])):
            out += as_list(policy["Properties"]["PolicyDocument"]["Statement"])
    return out


def actions(statements: list[dict]) -> set[str]:
    return {a for s in statements if s["Effect"] == "Allow" for a in as_list(s["Action"])}


def api_paths(template: dict) -> dict[str, str]:
    """API Gateway resource logical id -> its path ('/' for the root, reached via RootResourceId)."""
    resources = resources_of(template, "AWS::ApiGateway::Resource")
    paths: dict[str, str] = {}

    def path_of(rid: str) -> str:
        if rid not in paths:
            props = resources[rid]["Properties"]
            parent = props["ParentId"]
            if isinstance(parent, dict) and "Fn::GetAtt" in parent:      # RestApi.RootResourceId
                base = ""
            else:
                (pid,) = refs(parent)
                base = path_of(pid)
            paths[rid] = f"{base}/{props['PathPart']}"
        return paths[rid]

    for rid in resources:
        path_of(rid)
    return paths


def methods_by_route(template: dict) -> dict[tuple[str, str], dict]:
    """(HTTP method, path) -> Method properties, for every method of the REST API."""
    paths = api_paths(template)
    out: dict[tuple[str, str], dict] = {}
    for method in resources_of(template, "AWS::ApiGateway::Method").values():
        props = method["Properties"]
        resource = props["ResourceId"]
        (rid,) = refs(resource)
        path = "/" if "Fn::GetAtt" in resource else paths[rid]
        out[(props["HttpMethod"], path)] = props
    return out
