"""DynamoRegistry specifics on moto: the table layout of tenantml.resources and optimistic concurrency
(a registration that read a stale model item must not lose the other writer's update)."""

from __future__ import annotations

import re

import pytest
from moto import mock_aws

from tenantml import resources
from tenantml.aws import client
from tenantml.errors import Conflict
from tenantml.local.provision import create_resources
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.registry.memory import manifest_for
from tenantml.settings import AwsSettings

AWS = AwsSettings(region="us-east-1")
NAMES = resources.LocalNames.make("tenantml-test")
TABLE = NAMES.tables[resources.REGISTRY_TABLE.id]


@pytest.fixture
def ddb():
    with mock_aws():
        create_resources(AWS, NAMES)
        yield client("dynamodb", AWS)


@pytest.fixture
def reg(ddb):
    return DynamoRegistry(TABLE, AWS)


def manifest(model="risk", payload=b"x"):
    return manifest_for(model, {"model.onnx": payload})


def items(ddb) -> dict[tuple[str, str], dict]:
    return {(i["pk"]["S"], i["sk"]["S"]): i for i in ddb.scan(TableName=TABLE)["Items"]}


def test_items_follow_the_documented_layout(reg, ddb):
    reg.register_version("acme", "risk", manifest(), "alice", aliases=["production"])
    keys = items(ddb)
    model, version = keys[("T#acme", "M#risk")], keys[("T#acme", "M#risk#V#1")]
    assert model["aliases"]["M"] == {"production": {"S": "1"}} and model["latest"]["S"] == "1"
    assert (model["task"]["S"], model["backend"]["S"]) == ("tabular-classification", "cpu")
    assert version["status"]["S"] == "active" and version["registered_by"]["S"] == "alice"
    assert '"name":"risk"' in version["manifest"]["S"]
    assert re.match(r"\d{4}-.*Z$", version["registered_at"]["S"])
    [(pk, sk)] = [k for k in keys if k[0] == "T#acme#AUDIT"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z#[0-9a-f-]{36}", sk)
    audit = keys[(pk, sk)]
    assert (audit["action"]["S"], audit["actor"]["S"], audit["tenant"]["S"], audit["model"]["S"],
            audit["version"]["S"]) == ("register_version", "alice", "acme", "risk", "1")
    assert len(keys) == 3


def interleave(reg, monkeypatch, concurrent, times=1):
    """Make the next `times` model reads return what was read just BEFORE `concurrent` ran: the state a
    registration sees when another writer commits between its read and its write."""
    real = reg._read_model
    left = {"n": times}

    def stale_read(owner, model, **kw):
        state = real(owner, model, **kw)
        if left["n"] > 0:
            left["n"] -= 1
            concurrent()
        return state
    monkeypatch.setattr(reg, "_read_model", stale_read)


def test_concurrent_registration_loses_no_update(reg, ddb, monkeypatch):
    reg.register_version("acme", "risk", manifest(), "alice")
    other = DynamoRegistry(TABLE, AWS)
    interleave(reg, monkeypatch, lambda: other.register_version("acme", "risk", manifest(payload=b"bob"),
                                                                "bob", aliases=["canary"]))
    mine = reg.register_version("acme", "risk", manifest(payload=b"carol"), "carol", aliases=["production"])
    assert mine.version == "3"                       # the stale plan said "2": it was re-planned, not lost
    [summary] = reg.list_models("acme")
    assert summary.versions == ("1", "2", "3")
    assert summary.aliases == {"canary": "2", "production": "3"}    # bob's alias survived carol's write
    assert reg.get_version("acme", "risk", "2").manifest.files["model.onnx"].size == 3
    assert [r.actor for r in reg.list_audit("acme").records] == ["carol", "bob", "alice"]


def test_first_registrations_racing_do_not_overwrite_each_other(reg, monkeypatch):
    other = DynamoRegistry(TABLE, AWS)
    interleave(reg, monkeypatch, lambda: other.register_version("acme", "risk", manifest(), "bob",
                                                                version="a"))
    reg.register_version("acme", "risk", manifest(), "carol", version="b")
    assert reg.list_models("acme")[0].versions == ("a", "b")


def test_explicit_version_taken_by_a_concurrent_writer_is_a_conflict(reg, monkeypatch):
    reg.register_version("acme", "risk", manifest(), "alice")
    other = DynamoRegistry(TABLE, AWS)
    interleave(reg, monkeypatch,
               lambda: other.register_version("acme", "risk", manifest(), "bob", version="9"))
    with pytest.raises(Conflict):
        reg.register_version("acme", "risk", manifest(), "carol", version="9")
    assert [r.actor for r in reg.list_audit("acme").records] == ["bob", "alice"]


def test_a_writer_that_keeps_losing_gives_up_with_409_and_writes_nothing(ddb, monkeypatch):
    reg = DynamoRegistry(TABLE, AWS, max_attempts=2)
    reg.register_version("acme", "risk", manifest(), "alice")
    other = DynamoRegistry(TABLE, AWS)
    interleave(reg, monkeypatch, lambda: other.register_version("acme", "risk", manifest(), "bob"), times=2)
    with pytest.raises(Conflict) as exc:
        reg.register_version("acme", "risk", manifest(), "carol", version="carols")
    assert "carol" not in {r.actor for r in reg.list_audit("acme").records}
    assert ("T#acme", "M#risk#V#carols") not in items(ddb)
    assert exc.value.detail and "acme/risk" in exc.value.detail


def test_concurrent_alias_changes_are_serialized(reg, monkeypatch):
    reg.register_version("acme", "risk", manifest(), "alice")
    reg.register_version("acme", "risk", manifest(), "alice")
    other = DynamoRegistry(TABLE, AWS)
    interleave(reg, monkeypatch, lambda: other.set_alias("acme", "risk", "canary", "2", "bob"))
    change = reg.set_alias("acme", "risk", "production", "1", "carol")
    assert change.previous is None
    assert reg.list_models("acme")[0].aliases == {"canary": "2", "production": "1"}
    reg.register_version("acme", "risk", manifest(), "alice")
    interleave(reg, monkeypatch, lambda: other.set_alias("acme", "risk", "production", "2", "bob"))
    change = reg.set_alias("acme", "risk", "production", "3", "carol")
    assert change.previous == "2"                    # re-read after bob's change, and the audit says so
    carol, bob = reg.list_audit("acme").records[:2]
    assert (carol.actor, carol.details) == ("carol", {"alias": "production", "previous": "2"})
    assert (bob.actor, bob.details) == ("bob", {"alias": "production", "previous": "1"})


class Throttling:
    """The real (moto) client, except that BatchGetItem leaves every key unprocessed `times` times."""

    def __init__(self, real, times: int) -> None:
        self.real, self.left = real, times

    def __getattr__(self, name):
        return getattr(self.real, name)

    def batch_get_item(self, RequestItems):  # noqa: N803 - boto3's name
        if self.left > 0:
            self.left -= 1
            return {"Responses": {}, "UnprocessedKeys": RequestItems}
        return self.real.batch_get_item(RequestItems=RequestItems)


def test_unprocessed_keys_are_retried_then_reported_as_throttling(ddb, monkeypatch):
    from tenantml.errors import Throttled
    from tenantml.registry import dynamo

    monkeypatch.setattr(dynamo.time, "sleep", lambda s: None)
    DynamoRegistry(TABLE, AWS).register_version("_shared", "minilm", manifest("minilm"), "op")
    assert DynamoRegistry(TABLE, AWS, client=Throttling(ddb, 2)).resolve("acme", "minilm").owner == "_shared"
    with pytest.raises(Throttled):
        DynamoRegistry(TABLE, AWS, client=Throttling(ddb, 99)).resolve("acme", "minilm")
