"""The registry contract, run against DynamoRegistry on moto AND MemoryRegistry: the fake other engineers
test with must answer exactly like the adapter (resolution, shadowing, aliases, numbering, conflicts,
audit paging)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from moto import mock_aws

from tenantml import resources
from tenantml.errors import BadRequest, Conflict, ModelNotFound
from tenantml.local.provision import create_resources
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.registry.memory import MemoryRegistry, manifest_for
from tenantml.settings import AwsSettings

AWS = AwsSettings(region="us-east-1")
NAMES = resources.LocalNames.make("tenantml-test")


def ticking_clock():
    """1 ms per call: audit order is then well defined (real clocks tie within a microsecond rarely)."""
    start = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    counter = itertools.count()
    return lambda: start + timedelta(milliseconds=next(counter))


@pytest.fixture(params=["dynamo", "memory"])
def reg(request):
    if request.param == "memory":
        yield MemoryRegistry(clock=ticking_clock())
        return
    with mock_aws():
        create_resources(AWS, NAMES)
        yield DynamoRegistry(NAMES.tables[resources.REGISTRY_TABLE.id], AWS, clock=ticking_clock())


def add(reg, tenant, model, version=None, aliases=(), task="tabular-classification", actor="tester"):
    manifest = manifest_for(model, {"model.onnx": f"{tenant}/{model}".encode()}, task=task)
    return reg.register_version(tenant, model, manifest, actor, version=version, aliases=aliases)


def test_register_then_resolve_own(reg):
    mv = add(reg, "acme", "risk")
    got = reg.resolve("acme", "risk")
    assert (got.owner, got.model, got.version, got.status) == ("acme", "risk", "1", "active")
    assert got.manifest == mv.manifest
    assert reg.get_version("acme", "risk", "1").manifest == mv.manifest


def test_none_is_production_else_latest_and_version_may_be_an_alias(reg):
    add(reg, "acme", "risk")
    add(reg, "acme", "risk")
    assert reg.resolve("acme", "risk").version == "2"          # no production alias: latest
    reg.set_alias("acme", "risk", "production", "1", "ops")
    assert reg.resolve("acme", "risk").version == "1"
    add(reg, "acme", "risk", aliases=["canary"])
    assert reg.resolve("acme", "risk").version == "1"          # latest does not move production
    assert reg.resolve("acme", "risk", "canary").version == "3"
    assert reg.resolve("acme", "risk", "2").version == "2"
    with pytest.raises(ModelNotFound) as exc:
        reg.resolve("acme", "risk", "4")
    assert exc.value.public_message == "model 'risk' version '4' not found"
    with pytest.raises(ModelNotFound):
        reg.resolve("acme", "risk", "staging")


def test_shared_fallback_and_shadowing(reg):
    add(reg, "_shared", "minilm", task="embedding", aliases=["production"])
    add(reg, "_shared", "sentiment")
    add(reg, "acme", "sentiment")                              # acme's own shadows the shared one
    assert reg.resolve("globex", "minilm").owner == "_shared"
    assert reg.resolve("globex", "sentiment").owner == "_shared"
    assert reg.resolve("acme", "sentiment").owner == "acme"
    assert reg.resolve("_shared", "minilm").owner == "_shared"
    add(reg, "_shared", "sentiment")
    with pytest.raises(ModelNotFound):                         # shadowing is whole-model: no version mixing
        reg.resolve("acme", "sentiment", "2")
    listed = {(s.model, s.owner, s.versions) for s in reg.list_models("acme")}
    assert listed == {("minilm", "_shared", ("1",)), ("sentiment", "acme", ("1",))}
    assert [s.model for s in reg.list_models("globex")] == ["minilm", "sentiment"]


def test_foreign_model_is_indistinguishable_from_a_missing_one(reg):
    with pytest.raises(ModelNotFound) as missing:
        reg.resolve("globex", "secret-model")
    with pytest.raises(ModelNotFound) as missing_versions:
        reg.list_versions("globex", "secret-model")
    add(reg, "acme", "secret-model", aliases=["production"])
    for call in (lambda: reg.resolve("globex", "secret-model"),
                 lambda: reg.resolve("globex", "secret-model", "production")):
        with pytest.raises(ModelNotFound) as foreign:
            call()
        assert type(foreign.value) is type(missing.value) and foreign.value.status == 404
        assert "acme" not in str(foreign.value)
    with pytest.raises(ModelNotFound) as foreign:
        reg.resolve("globex", "secret-model")
    assert foreign.value.public_message == missing.value.public_message
    with pytest.raises(ModelNotFound) as foreign_versions:
        reg.list_versions("globex", "secret-model")
    assert foreign_versions.value.public_message == missing_versions.value.public_message
    assert [s.model for s in reg.list_models("globex")] == []
    with pytest.raises(ModelNotFound):
        reg.set_alias("globex", "secret-model", "production", "1", "intruder")


@pytest.mark.parametrize("bad", ["risk#V#1", "M#risk", "RISK", "../risk"])
def test_names_that_could_reach_into_keys_are_not_found(reg, bad):
    add(reg, "acme", "risk")
    with pytest.raises(ModelNotFound):
        reg.resolve("acme", bad)
    with pytest.raises(ModelNotFound):
        reg.resolve("acme", "risk", "1#x")


def test_versions_auto_increment_past_explicit_integers_only(reg):
    assert [add(reg, "acme", "risk").version for _ in range(3)] == ["1", "2", "3"]
    assert add(reg, "acme", "risk", version="7").version == "7"
    assert add(reg, "acme", "risk", version="2026-q4").version == "2026-q4"
    assert reg.next_version("acme", "risk") == "8"
    assert add(reg, "acme", "risk").version == "8"
    assert reg.next_version("acme", "other") == "1"
    [summary] = reg.list_models("acme")
    assert summary.versions == ("1", "2", "3", "7", "2026-q4", "8")   # registration order


def test_duplicate_version_is_a_conflict_and_changes_nothing(reg):
    add(reg, "acme", "risk", aliases=["production"])
    add(reg, "acme", "risk", version="5")
    before = (reg.list_models("acme"), reg.list_versions("acme", "risk"), reg.list_audit("acme"))
    with pytest.raises(Conflict) as exc:
        add(reg, "acme", "risk", version="5", aliases=["production"])
    assert exc.value.status == 409
    assert (reg.list_models("acme"), reg.list_versions("acme", "risk"), reg.list_audit("acme")) == before
    assert reg.resolve("acme", "risk").version == "1"


def test_set_alias_checks_the_version_and_name_collisions(reg):
    add(reg, "acme", "risk")
    add(reg, "acme", "risk", version="beta")
    with pytest.raises(ModelNotFound):
        reg.set_alias("acme", "risk", "production", "3", "ops")
    with pytest.raises(ModelNotFound):
        reg.set_alias("acme", "nothing", "production", "1", "ops")
    with pytest.raises(BadRequest):
        reg.set_alias("acme", "risk", "beta", "1", "ops")            # alias named like a version
    with pytest.raises(BadRequest):
        reg.set_alias("acme", "risk", "Prod", "1", "ops")
    first = reg.set_alias("acme", "risk", "production", "1", "ops")
    second = reg.set_alias("acme", "risk", "production", "beta", "ops")
    same = reg.set_alias("acme", "risk", "production", "beta", "ops")
    assert (first.previous, second.previous, same.previous) == (None, "1", "beta")
    actions = [r.action for r in reg.list_audit("acme").records]
    assert actions == ["set_alias", "set_alias", "register_version", "register_version"]  # no-op not audited
    with pytest.raises(BadRequest):
        add(reg, "acme", "risk", version="production")               # version named like an alias


def test_list_versions_with_aliases_for_own_and_shared(reg):
    add(reg, "_shared", "minilm", task="embedding", actor="platform-op")
    add(reg, "_shared", "minilm", task="embedding", aliases=["production"], actor="platform-op")
    records = reg.list_versions("acme", "minilm")
    assert [(r.owner, r.version, r.aliases, r.registered_by, r.task) for r in records] == [
        ("_shared", "1", (), "platform-op", "embedding"),
        ("_shared", "2", ("production",), "platform-op", "embedding")]
    assert records[0].registered_at < records[1].registered_at


def test_every_change_appends_one_audit_record(reg):
    add(reg, "acme", "risk", actor="alice", aliases=["production"])
    reg.set_alias("acme", "risk", "canary", "1", "bob")
    page = reg.list_audit("acme")
    assert page.next_token is None
    alias_rec, reg_rec = page.records
    assert (reg_rec.tenant, reg_rec.action, reg_rec.actor, reg_rec.model, reg_rec.version) == (
        "acme", "register_version", "alice", "risk", "1")
    assert reg_rec.details["aliases"] == ["production"] and "model.onnx" in reg_rec.details["files"]
    assert (alias_rec.action, alias_rec.actor, alias_rec.details) == (
        "set_alias", "bob", {"alias": "canary", "previous": None})
    assert reg_rec.timestamp.endswith("Z") and reg_rec.timestamp < alias_rec.timestamp
    assert reg.list_audit("globex").records == ()


def test_audit_pages_newest_first_and_tokens_stay_in_the_callers_log(reg):
    for i in range(5):
        add(reg, "acme", f"m{i}")
    add(reg, "globex", "g0")
    seen, token, pages = [], None, 0
    while True:
        page = reg.list_audit("acme", limit=2, next_token=token)
        seen += [r.model for r in page.records]
        pages += 1
        token = page.next_token
        if token is None:
            break
    assert seen == ["m4", "m3", "m2", "m1", "m0"] and pages == 3
    acme_token = reg.list_audit("acme", limit=1).next_token
    other = reg.list_audit("globex", limit=10, next_token=acme_token)
    assert all(r.tenant == "globex" for r in other.records)
    assert reg.list_audit("acme", limit=5).next_token is None
    with pytest.raises(BadRequest):
        reg.list_audit("acme", limit=0)
    with pytest.raises(BadRequest):
        reg.list_audit("acme", next_token="bm90LWEtdG9rZW4")


# --- rollouts -----------------------------------------------------------------------------------------------

def _rollout_start(reg, previous=None, candidate="2"):
    from tenantml.rollout.machine import start

    return start(owner="acme", model="risk", stable="1", candidate=candidate, actor="eng", reason="try 2",
                 now=datetime(2026, 11, 22, 11, 0, tzinfo=UTC), previous=previous)


def _two_versions(reg):
    add(reg, "acme", "risk", aliases=["production"])
    add(reg, "acme", "risk")


def test_a_rollout_is_stored_on_the_model_and_travels_with_resolution(reg):
    from tenantml.rollout.machine import Transition

    _two_versions(reg)
    assert reg.get_rollout("acme", "risk") is None
    r = _rollout_start(reg)
    reg.apply_rollout("acme", "risk", Transition(action="start", before=None, after=r, reason="try 2",
                                                 actor="eng"))
    assert reg.get_rollout("acme", "risk") == r
    resolved = reg.resolve("acme", "risk")
    assert resolved.version == "1" and resolved.rollout == r          # production still answers
    with pytest.raises(ModelNotFound):
        reg.resolve("globex", "risk")                                  # another tenant sees nothing
    (record,) = [a for a in reg.list_audit("acme").records if a.action == "rollout_start"]
    assert (record.actor, record.version, record.details["from_weight"], record.details["to_weight"]) == (
        "eng", "2", 0, 5)


def test_a_rollout_transition_applies_once_and_completion_moves_production(reg):
    from tenantml.rollout.machine import Transition, promote, rollback

    _two_versions(reg)
    r = _rollout_start(reg)
    reg.apply_rollout("acme", "risk", Transition(action="start", before=None, after=r, reason="x",
                                                 actor="eng"))
    back = rollback(r, candidate="2", now=r.started_at, actor="alarm", reason="alarm")
    done = promote(r, now=r.started_at, actor="eng")
    assert reg.live_rollouts() == [("acme", "risk")]
    reg.apply_rollout("acme", "risk", back)
    assert reg.live_rollouts() == []
    with pytest.raises(Conflict, match="changed concurrently"):
        reg.apply_rollout("acme", "risk", done)                        # computed from the same revision
    with pytest.raises(Conflict):
        reg.apply_rollout("acme", "risk", back)                        # a duplicate delivery
    assert reg.get_rollout("acme", "risk").status == "rolled_back"
    assert reg.resolve("acme", "risk").version == "1"
    assert [a.action for a in reg.list_audit("acme").records][:2] == ["rollout_rollback", "rollout_start"]

    again = _rollout_start(reg, previous=reg.get_rollout("acme", "risk"))
    reg.apply_rollout("acme", "risk", Transition(action="start", before=reg.get_rollout("acme", "risk"),
                                                 after=again, reason="x", actor="eng"))
    reg.apply_rollout("acme", "risk", promote(again, now=again.started_at, actor="eng"))
    assert reg.resolve("acme", "risk").version == "2"                 # production moved with completion


def test_a_rollout_needs_its_candidate_and_survives_registrations(reg):
    from tenantml.rollout.machine import Transition

    add(reg, "acme", "risk", aliases=["production"])
    with pytest.raises(ModelNotFound):
        reg.apply_rollout("acme", "risk", Transition(action="start", before=None, after=_rollout_start(reg),
                                                     reason="x", actor="eng"))
    add(reg, "acme", "risk")
    r = _rollout_start(reg)
    reg.apply_rollout("acme", "risk", Transition(action="start", before=None, after=r, reason="x",
                                                 actor="eng"))
    add(reg, "acme", "risk")                                           # version 3 arrives mid-rollout
    reg.set_alias("acme", "risk", "staging", "3", "ops")
    assert reg.get_rollout("acme", "risk") == r
