"""A token never outlives its expiry in the functions, however long API Gateway caches the authorizer's
Allow: the authorizer puts `valid_until` (exp + its leeway) in the context and every function refuses the
request from then on (401); the inference routes also need scope models:read (403 without it)."""

from __future__ import annotations

import copy
import json
import time

import pytest
from moto_env import lambda_account

from tenantml.api.context import caller_from_event
from tenantml.errors import Unauthorized

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


def with_context(event: dict, **context: str) -> dict:
    event = copy.deepcopy(event)
    event["requestContext"]["authorizer"].update(context)
    return event


@pytest.mark.parametrize(("function", "sample"), [("inference", "inference-list-models"),
                                                  ("registry", "registry-list-models")])
def test_an_expired_token_is_refused_even_with_a_cached_allow(monkeypatch, load_handler, load_event,
                                                              lambda_context, function, sample):
    with lambda_account(monkeypatch, function):
        fn = load_handler(function)
        past = str(int(time.time()) - 1)
        resp = fn.handler(with_context(load_event(sample), valid_until=past), lambda_context)
        assert (resp["statusCode"], json.loads(resp["body"])) == (401, {"error": "token expired"})
        missing = load_event(sample)
        del missing["requestContext"]["authorizer"]["valid_until"]
        resp = fn.handler(missing, lambda_context)
        assert (resp["statusCode"], json.loads(resp["body"])) == (401, {"error": "unauthorized"})
        assert fn.handler(load_event(sample), lambda_context)["statusCode"] == 200


def test_inference_needs_the_read_scope(monkeypatch, load_handler, load_event, lambda_context):
    with lambda_account(monkeypatch, "inference"):
        fn = load_handler("inference")
        for sample in ("inference-list-models", "inference-infer-risk", "inference-model-metadata"):
            resp = fn.handler(with_context(load_event(sample), scopes="models:feedback"), lambda_context)
            denied = (403, {"error": "missing scope 'models:read'"})
            assert (resp["statusCode"], json.loads(resp["body"])) == denied


@pytest.mark.parametrize("value", ["", "soon", "١٢٣", "-5", "12.5"])
def test_a_deadline_that_is_not_plain_epoch_seconds_is_refused(value):
    event = {"requestContext": {"authorizer": {"tenant_id": "acme", "valid_until": value}}}
    with pytest.raises(Unauthorized):
        caller_from_event(event, now=0)


def test_the_deadline_is_exclusive():
    event = {"requestContext": {"authorizer": {"tenant_id": "acme", "valid_until": "1000"}}}
    assert caller_from_event(event, now=999.9).tenant == "acme"
    with pytest.raises(Unauthorized, match="token expired"):
        caller_from_event(event, now=1000)
