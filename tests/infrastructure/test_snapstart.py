"""`-c snapstart=true`: the inference function snapshots published versions and API Gateway invokes its
alias. Built from the same constructs as the app, in a small stack with a stand-in layer, so this needs
no second bundling of the runtime layer (the session synth covers the default, SnapStart off)."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import aws_lambda as lambda_
from aws_cdk.assertions import Template
from infra_helpers import ROOT, refs, resources_of
from tenantml_cdk.config import load_config
from tenantml_cdk.constructs.api import PlatformApi
from tenantml_cdk.constructs.functions import FunctionFactory

from tenantml import resources

CONTEXT = {"jwks_url": "https://idp.example.org/.well-known/jwks.json", "issuer": "https://idp.example.org/",
           "audience": "tenantml", "snapstart": True, "preload_models": "_shared/minilm-embed"}


@pytest.fixture(scope="module")
def template() -> dict:
    config = load_config(CONTEXT)
    app = cdk.App()
    stack = cdk.Stack(app, "SnapStartTest")
    layer = lambda_.LayerVersion(stack, "StandInLayer",
                                 code=lambda_.Code.from_asset(str(ROOT / "layers" / "runtime")))
    every_env = {key: f"value-of-{key}" for d in resources.FUNCTIONS for key in d.env}
    factory = FunctionFactory(stack, "Functions", config=config, layers=[layer], code_root=ROOT / "functions",
                              settings=every_env)
    fns = {d.name: factory.create(d, snapstart=config.snapstart and d.name == "inference",
                                  extra_environment={"TENANTML_PRELOAD_MODELS": config.preload_models}
                                  if d.name == "inference" else None)
           for d in resources.FUNCTIONS}
    PlatformApi(stack, "Api", config=config, routes=resources.ROUTES,
                targets={n: f.invoke_target for n, f in fns.items()},
                authorizer_function=fns["authorizer"].function)
    return Template.from_stack(stack).to_json()


def test_inference_snapshots_published_versions_and_preloads(template):
    props = template["Resources"]["InferenceFunction"]["Properties"]
    assert props["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    assert props["Environment"]["Variables"]["TENANTML_PRELOAD_MODELS"] == "_shared/minilm-embed"
    for other in ("AuthorizerFunction", "RegistryFunction"):
        assert "SnapStart" not in template["Resources"][other]["Properties"]


def test_api_invokes_the_alias_of_a_published_version(template):
    (alias_id, alias), = resources_of(template, "AWS::Lambda::Alias").items()
    (version_id,) = refs(alias["Properties"]["FunctionVersion"])
    assert template["Resources"][version_id]["Type"] == "AWS::Lambda::Version"
    assert refs(template["Resources"][version_id]["Properties"]["FunctionName"]) == {"InferenceFunction"}
    inference_routes = [r for r in resources.ROUTES if r.function == "inference"]
    methods = resources_of(template, "AWS::ApiGateway::Method").values()
    uris = [m["Properties"]["Integration"]["Uri"] for m in methods]
    assert sum(alias_id in refs(u) for u in uris) == len(inference_routes)
    assert not any("InferenceFunction" in refs(u) for u in uris)
    permissions = [p["Properties"] for p in resources_of(template, "AWS::Lambda::Permission").values()]
    assert sum(alias_id in refs(p["FunctionName"]) for p in permissions) == len(inference_routes)
