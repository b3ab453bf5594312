"""The registry's pure rules (tenantml.registry): version selection, registration plans, page tokens."""

from __future__ import annotations

import base64
import json

import pytest

from tenantml.errors import BadRequest
from tenantml.registry import (
    ModelState,
    audit_sort_key,
    decode_page_token,
    encode_page_token,
    is_valid_lookup,
    lookup_owners,
    plan_registration,
    select_version,
)
from tenantml.registry.memory import manifest_for

NOW = "2026-11-22T10:00:00.000000Z"
SK = audit_sort_key(NOW, "0f8fad5b-d9cb-469f-a165-70867728950e")


def state(latest: str = "3", aliases: dict[str, str] | None = None, max_int: int = 3) -> ModelState:
    return ModelState(owner="acme", model="risk", task="tabular-classification", backend="cpu", latest=latest,
                      max_int=max_int, version_count=3, aliases=aliases or {}, created_at=NOW, updated_at=NOW)


def test_select_version_prefers_production_then_latest_and_maps_aliases():
    assert select_version(state(), None) == "3"
    assert select_version(state(aliases={"production": "2"}), None) == "2"
    assert select_version(state(aliases={"production": "2", "canary": "3"}), "canary") == "3"
    assert select_version(state(aliases={"production": "2"}), "1") == "1"


def test_lookup_order_is_own_then_shared():
    assert lookup_owners("acme") == ("acme", "_shared")
    assert lookup_owners("_shared") == ("_shared",)


@pytest.mark.parametrize(("model", "version", "ok"), [
    ("risk", None, True), ("risk", "12", True), ("risk", "production", True),
    ("Risk", None, False), ("risk#V#1", None, False), ("risk", "1#x", False), ("", None, False),
])
def test_names_that_cannot_exist_are_never_looked_up(model, version, ok):
    assert is_valid_lookup(model, version) is ok


def test_first_registration_is_version_1_and_numbers_continue_from_the_highest_integer():
    m = manifest_for("risk", {"model.onnx": b"x"})
    first = plan_registration(None, "acme", "risk", m, None, (), NOW)
    assert (first.latest, first.max_int, first.version_count) == ("1", 1, 1)
    seven = plan_registration(first, "acme", "risk", m, "7", (), NOW)
    assert (seven.latest, seven.max_int) == ("7", 7)
    named = plan_registration(seven, "acme", "risk", m, "2026-q4", ("staging",), NOW)
    assert (named.latest, named.max_int, named.version_count) == ("2026-q4", 7, 3)
    assert named.aliases == {"staging": "2026-q4"}
    assert plan_registration(named, "acme", "risk", m, None, (), NOW).latest == "8"


def test_plan_refuses_bad_names_and_alias_collisions():
    m = manifest_for("risk", {"model.onnx": b"x"})
    with pytest.raises(BadRequest):
        plan_registration(None, "acme", "risk", manifest_for("other", {}), None, (), NOW)
    with pytest.raises(BadRequest):
        plan_registration(None, "acme", "risk", m, "../1", (), NOW)
    with pytest.raises(BadRequest):
        plan_registration(None, "acme", "risk", m, None, ("Prod!",), NOW)
    with pytest.raises(BadRequest):
        plan_registration(state(aliases={"staging": "3"}), "acme", "risk", m, "staging", (), NOW)
    with pytest.raises(BadRequest):
        plan_registration(None, "ACME", "risk", m, None, (), NOW)


def test_page_token_round_trips_and_is_opaque():
    token = encode_page_token(SK)
    assert decode_page_token(token) == SK
    assert "acme" not in token and "T#" not in base64.urlsafe_b64decode(token + "==").decode()


@pytest.mark.parametrize("token", [
    "", "garbage!", base64.urlsafe_b64encode(b"not json").decode(),
    base64.urlsafe_b64encode(json.dumps({"v": 1, "after": "T#other#AUDIT"}).encode()).decode(),
    base64.urlsafe_b64encode(json.dumps({"v": 2, "after": SK}).encode()).decode(),
    base64.urlsafe_b64encode(json.dumps(["x"]).encode()).decode(),
])
def test_foreign_or_forged_tokens_are_bad_requests(token):
    with pytest.raises(BadRequest) as exc:
        decode_page_token(token)
    assert exc.value.public_message == "invalid next_token"
