"""`-c snapstart=true` on the real app: `tenantml_cdk.application.build_app`, what `cdk synth -c
snapstart=true` runs, so the wiring checked here is the stack's own. The inference function snapshots
published versions and API Gateway invokes the alias of a published version, never the function.

The session synth (conftest.py) covers the default, SnapStart off; this module synthesizes the app once
more with the same runtime-layer bundle cache, so the layer is not rebuilt."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Template
from infra_helpers import CLI_CONTEXT, bundle_cache, cdk_json_context, methods_by_route, refs, resources_of
from pytest_socket import disable_socket, enable_socket
from tenantml_cdk.application import build_app
from tenantml_cdk.constructs.functions import function_id

from tenantml import resources

PRELOAD = "_shared/minilm-embed"
CONTEXT = {**cdk_json_context(), **CLI_CONTEXT, "snapstart": True, "preload_models": PRELOAD}
INFERENCE = function_id(next(d for d in resources.FUNCTIONS if d.name == "inference"))
INFERENCE_ROUTES = [r for r in resources.ROUTES if r.function == "inference"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict:
    built = build_app(context=CONTEXT, outdir=str(tmp_path_factory.mktemp("cdk.out-snapstart")), nag=False,
                      bundle_cache=bundle_cache())
    assert built.config.snapstart and built.config.preload_models == PRELOAD
    disable_socket(allow_unix_socket=True)   # hermetic, as the session synth
    try:
        return Template.from_stack(built.stateless).to_json()
    finally:
        enable_socket()


def test_inference_snapshots_published_versions_and_preloads(template):
    props = template["Resources"][INFERENCE]["Properties"]
    assert props["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    assert props["Environment"]["Variables"]["TENANTML_PRELOAD_MODELS"] == PRELOAD
    functions = resources_of(template, "AWS::Lambda::Function")
    others = {function_id(d) for d in resources.FUNCTIONS} - {INFERENCE}
    assert others and others <= set(functions)
    for other, fn in functions.items():
        if other != INFERENCE:
            assert "SnapStart" not in fn["Properties"], other
            assert "TENANTML_PRELOAD_MODELS" not in fn["Properties"].get("Environment", {}).get(
                "Variables", {}), other


def test_api_invokes_the_alias_of_a_published_version(template):
    (alias_id, alias), = resources_of(template, "AWS::Lambda::Alias").items()
    (version_id,) = refs(alias["Properties"]["FunctionVersion"])
    assert template["Resources"][version_id]["Type"] == "AWS::Lambda::Version"
    assert refs(template["Resources"][version_id]["Properties"]["FunctionName"]) == {INFERENCE}
    assert refs(alias["Properties"]["FunctionName"]) == {INFERENCE}

    methods = methods_by_route(template)
    assert INFERENCE_ROUTES
    for route in INFERENCE_ROUTES:
        uri = refs(methods[(route.method, route.path)]["Integration"]["Uri"])
        assert alias_id in uri and INFERENCE not in uri, route
    uris = [m["Integration"]["Uri"] for m in methods.values()]
    assert sum(alias_id in refs(u) for u in uris) == len(INFERENCE_ROUTES)
    assert not any(INFERENCE in refs(u) for u in uris)

    from_api = [p["Properties"] for p in resources_of(template, "AWS::Lambda::Permission").values()
                if p["Properties"]["Principal"] == "apigateway.amazonaws.com"]
    assert sum(alias_id in refs(p["FunctionName"]) for p in from_api) == len(INFERENCE_ROUTES)
    assert not any(INFERENCE in refs(p["FunctionName"]) for p in from_api)
