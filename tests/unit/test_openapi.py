"""The OpenAPI document (tenantml.api.openapi): generated from ROUTES and the models the handlers parse,
its committed copy (docs/openapi.json) current, and the documented models the ones the code really uses
(spied on while the handlers run), so the document cannot drift from the code."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import serving_models as sm

from tenantml import cli, errors, resources
from tenantml.api import openapi
from tenantml.api.errors import ErrorBody, error_response
from tenantml.api.inference_routes import create_app as inference_app
from tenantml.api.registry_routes import create_app as registry_app
from tenantml.observability import metrics
from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
from tenantml.registry.service import RegistrationService
from tenantml.serving.service import InferenceService
from tenantml.settings import ServingSettings

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "openapi.json"
pytestmark = pytest.mark.filterwarnings("ignore:Dimension .* has already been added",
                                        "ignore:No application metrics to publish")


@pytest.fixture(scope="module")
def doc() -> dict:
    return openapi.openapi_document()


@pytest.fixture(autouse=True)
def _fresh_metrics():
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


def test_the_committed_document_is_the_generated_one():
    assert COMMITTED.read_text(encoding="utf-8") == openapi.render(), \
        "docs/openapi.json is stale: run `tenantml openapi --out docs/openapi.json`"


def test_the_cli_prints_and_writes_it(tmp_path, capsys):
    out = tmp_path / "openapi.json"
    assert cli.main(["openapi", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == openapi.render()
    assert cli.main(["openapi"]) == 0
    assert json.loads(capsys.readouterr().out)["openapi"] == "3.1.0"


def test_every_route_with_its_method_parameters_and_scope(doc):
    operations = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert operations == {(r.method, r.path) for r in resources.ROUTES}
    for route in resources.ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        declared = [p["name"] for p in op.get("parameters", ()) if p["in"] == "path"]
        assert declared == re.findall(r"{(\w+)}", route.path)
        if route.auth:
            assert op["security"] == [{"bearer": [route.scope]}] and op["x-tenantml-scope"] == route.scope
            assert {"400", "401", "403", "404", "429"} <= set(op["responses"])
        else:
            assert op["security"] == [] and set(op["responses"]) == {"200"}
    bearer = doc["components"]["securitySchemes"]["bearer"]
    assert bearer == {**bearer, "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}


def test_every_body_route_has_the_model_and_every_ref_resolves(doc):
    for route in resources.ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert ("requestBody" in op) == (route.method in ("POST", "PUT")), route
    text = json.dumps(doc)
    for ref in set(re.findall(r'"\$ref": "#/components/(\w+)/(\w+)"', text)):
        assert ref[1] in doc["components"][ref[0]], ref


def test_every_error_is_the_one_documented_shape(doc):
    assert doc["components"]["schemas"]["ErrorBody"] == ErrorBody.model_json_schema()
    assert doc["components"]["schemas"]["ErrorBody"]["additionalProperties"] is False
    for status, response in doc["components"]["responses"].items():
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
        assert int(status.removeprefix("Error")) in openapi.ERROR_STATUSES
    # every status a domain error maps to is documented (500 is never meant to happen)
    statuses = {cls.status for cls in _subclasses(errors.TenantMLError)} - {500}
    assert statuses <= set(openapi.ERROR_STATUSES)
    ErrorBody.model_validate_json(error_response(404, "model 'x' not found").body)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


# --- the documented models are the ones the handlers parse ------------------------------------------


class Spy:
    """Records which pydantic model validated a request body (model_validate / model_validate_json)."""

    def __init__(self, monkeypatch, models) -> None:
        self.seen: list[str] = []
        for model in models:
            for name in ("model_validate", "model_validate_json"):
                original = getattr(model, name)
                monkeypatch.setattr(model, name, self._wrap(model.__name__, original))

    def _wrap(self, label, original):
        def spy(*args, **kw):
            self.seen.append(label)
            return original(*args, **kw)
        return classmethod(lambda cls, *a, **k: spy(*a, **k))


SAMPLES = {
    ("POST", "/v2/models/{model}/infer"): "inference-infer-embed",
    ("POST", "/v2/models/{model}/versions/{version}/infer"): "inference-infer-version",
    ("POST", "/v2/models/{model}/feedback"): "inference-feedback",
    ("POST", "/admin/models/{model}/versions"): "registry-register-version",
    ("PUT", "/admin/models/{model}/aliases/{alias}"): "registry-set-alias",
    ("POST", "/admin/models/{model}/rollout"): "registry-rollout-start",
    ("POST", "/admin/models/{model}/rollout/{action}"): "registry-rollout-start",
}


def _apps():
    registry, store = sm.populated(MemoryArtifactStore(), MemoryRegistry())
    service = InferenceService(registry=registry, store=store, put_object=lambda key, data: None,
                               settings=ServingSettings(artifact_bucket="bucket", registry_table="table"))
    return {"inference": inference_app(service),
            "registry": registry_app(RegistrationService(MemoryRegistry(), MemoryArtifactStore()))}


@pytest.mark.parametrize("key", sorted(openapi.request_models()))
def test_the_documented_request_model_is_the_one_the_handler_parses(key, load_event, lambda_context,
                                                                   monkeypatch):
    assert set(openapi.request_models()) == set(SAMPLES)
    name, _ = openapi.request_models()[key]
    models = openapi._models()
    spy = Spy(monkeypatch, [m for n, m in models.items() if n != "ErrorBody"])
    event = copy.deepcopy(load_event(SAMPLES[key]))
    event["requestContext"]["authorizer"]["scopes"] = "models:read models:write models:feedback"
    if key[1].endswith("{action}"):
        event["resource"] = event["requestContext"]["resourcePath"] = key[1]
        event["path"] += "/promote"
        event["pathParameters"] = {**event["pathParameters"], "action": "promote"}
        event["body"] = json.dumps({"reason": "spied"})
    function = next(r.function for r in resources.ROUTES if (r.method, r.path) == key)
    _apps()[function].resolve(event, lambda_context)
    assert spy.seen and spy.seen[0] == name, (key, spy.seen)


def test_the_documented_response_models_fit_the_real_responses(load_event, lambda_context):
    from tenantml.monitoring.feedback import FeedbackAccepted
    from tenantml.serving.oip import InferResponse, ModelMetadataResponse

    app = _apps()["inference"]

    def call(name: str, **changes) -> str:
        event = copy.deepcopy(load_event(name))
        event["requestContext"]["authorizer"]["scopes"] = "models:read models:feedback"
        event.update(changes)
        out = app.resolve(event, lambda_context)
        assert out["statusCode"] < 300, out
        return out["body"]

    InferResponse.model_validate_json(call("inference-infer-embed"))
    ModelMetadataResponse.model_validate_json(call("inference-model-metadata", path="/v2/models/minilm-embed",
                                                   pathParameters={"model": "minilm-embed"}))
    body = json.dumps({"feedback": [{"id": "req-1", "label": "bug"}, {"id": "req-2", "index": 1,
                                                                      "label": "feature"}]})
    answer = FeedbackAccepted.model_validate_json(call("inference-feedback", body=body, isBase64Encoded=False,
                                                       path="/v2/models/minilm-embed/feedback",
                                                       pathParameters={"model": "minilm-embed"}))
    assert answer.accepted == 2
