"""events/*.json are what `sam local invoke -e` feeds the functions: each must parse with the model of the
trigger of the function its name prefix maps to (`<function>-<anything>.json`), and a proxy event must
hit a route that function serves.

Proxy events are parsed with Powertools' APIGatewayProxyEventModel, with one extension: in a REST API
event behind a Lambda REQUEST authorizer, `requestContext.authorizer` holds the authorizer's context, whose
values API Gateway only allows to be strings, numbers or booleans. Our authorizer's `scopes` is therefore
a space-separated string, while Powertools types `authorizer.scopes` as a list (the Cognito shape).
"""

from __future__ import annotations

import json

import pytest
from aws_lambda_powertools.utilities.parser.models import (
    ApiGatewayAuthorizerRequest,
    APIGatewayEventRequestContext,
    APIGatewayProxyEventModel,
    DynamoDBStreamModel,
    EventBridgeModel,
    SqsModel,
)
from infra_helpers import ROOT
from pydantic import BaseModel, ConfigDict

from tenantml import resources


class LambdaAuthorizerContext(BaseModel):
    """requestContext.authorizer of a REST proxy event behind a Lambda authorizer."""

    model_config = ConfigDict(extra="allow")
    principalId: str
    tenant_id: str
    sub: str | None = None
    scopes: str | None = None
    integrationLatency: int | None = None


class LambdaAuthorizedRequestContext(APIGatewayEventRequestContext):
    authorizer: LambdaAuthorizerContext | None = None  # type: ignore[assignment]


class RestProxyEvent(APIGatewayProxyEventModel):
    requestContext: LambdaAuthorizedRequestContext  # type: ignore[assignment]


EVENTS = sorted((ROOT / "events").glob("*.json"))
FUNCTION_NAMES = {d.name for d in resources.FUNCTIONS}
ROUTED = {r.function for r in resources.ROUTES}
AUTHORIZER = "authorizer"


def _function_of(path) -> str:
    prefix = path.stem.split("-", 1)[0]
    assert prefix in FUNCTION_NAMES, \
        f"{path.name}: prefix '{prefix}' maps to no function {sorted(FUNCTION_NAMES)}"
    return prefix


@pytest.mark.parametrize("path", EVENTS, ids=lambda p: p.name)
def test_event_parses_with_its_function_trigger_model(path):
    function = _function_of(path)
    event = json.loads(path.read_text())
    if function == AUTHORIZER:
        parsed = ApiGatewayAuthorizerRequest.model_validate(event)
        assert parsed.type == "REQUEST" and parsed.methodArn
    elif function in ROUTED:
        parsed = RestProxyEvent.model_validate(event)
        routes = {(r.method, r.path): r for r in resources.ROUTES if r.function == function}
        route = routes.get((parsed.httpMethod, parsed.resource))
        assert route, f"{path.name}: {parsed.httpMethod} {parsed.resource} is not a route of {function}"
        if route.auth:   # API Gateway only invokes an authorized route with the authorizer's context
            assert parsed.requestContext.authorizer is not None, f"{path.name}: no authorizer context"
    elif resources.function(function).triggers:
        trigger_models = {"stream": DynamoDBStreamModel, "sqs": SqsModel, "rule": EventBridgeModel,
                          "schedule": EventBridgeModel}
        kinds = {t.kind for t in resources.function(function).triggers}
        assert any(_parses(trigger_models[k], event) for k in kinds), \
            f"{path.name}: matches no trigger of {function}"
    else:
        pytest.fail(f"{path.name}: no trigger model known for function {function}")


def _parses(model: type[BaseModel], event: dict) -> bool:
    try:
        model.model_validate(event)
    except ValueError:
        return False
    return True


def test_prefix_mapping_rejects_unknown_functions(tmp_path):
    with pytest.raises(AssertionError, match="maps to no function"):
        _function_of(tmp_path / "billing-charge.json")
