"""Registration rules (tenantml.registry.service) on the in-memory fakes: verification before anything is
written, backbones, permissions, and what the error messages may say."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tenantml.api.context import Caller
from tenantml.errors import BadRequest, Conflict, Forbidden, ModelNotFound, PayloadTooLarge
from tenantml.manifest import BackboneRef, Manifest
from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry, manifest_for
from tenantml.registry.service import (
    MANIFEST_FILE,
    RegistrationService,
    check_write_access,
    parse_manifest,
    summarize_validation,
)

MODEL = {"model.onnx": b"\x08\x07onnx-bytes", "baseline.json": b'{"features": {}}'}
EMB = {"model.onnx": b"embedding-model", "tokenizer.json": b'{"model": {}}'}


@pytest.fixture
def svc() -> RegistrationService:
    return RegistrationService(MemoryRegistry(), MemoryArtifactStore(), max_inline_bytes=1024)


def store(svc: RegistrationService) -> MemoryArtifactStore:
    return svc.store  # type: ignore[return-value]


def registry(svc: RegistrationService) -> MemoryRegistry:
    return svc.registry  # type: ignore[return-value]


def head(backbone: BackboneRef) -> tuple[Manifest, dict[str, bytes]]:
    files = {"head.npz": b"prototypes"}
    return manifest_for("tickets", files, task="text-classification", backbone=backbone), files


def register_backbone(svc: RegistrationService, owner: str = "_shared", **kw) -> None:
    svc.register(owner=owner, model="minilm", manifest=manifest_for("minilm", EMB, task="embedding", **kw),
                 actor="op", files=EMB)


def test_inline_files_are_verified_uploaded_with_manifest_and_registered(svc):
    mv = svc.register(owner="acme", model="risk", manifest=manifest_for("risk", MODEL), actor="u1",
                      files=MODEL, aliases=["production"])
    assert (mv.owner, mv.model, mv.version) == ("acme", "risk", "1")
    objects = store(svc).objects
    assert objects["models/acme/risk/1/model.onnx"] == MODEL["model.onnx"]
    assert Manifest.model_validate_json(objects[f"models/acme/risk/1/{MANIFEST_FILE}"]) == mv.manifest
    assert registry(svc).resolve("acme", "risk").version == "1"
    [record] = registry(svc).audit("acme")
    assert (record.action, record.actor, record.version, record.details["aliases"]) == (
        "register_version", "u1", "1", ["production"])


def test_files_already_stored_are_hashed_in_place(svc):
    for name, data in MODEL.items():
        store(svc).put("acme", "risk", "4", name, data)
    mv = svc.register(owner="acme", model="risk", manifest=manifest_for("risk", MODEL), actor="u",
                      version="4")
    assert mv.version == "4"


def test_sha256_mismatch_is_refused_and_nothing_is_written(svc):
    claimed = manifest_for("risk", MODEL)
    tampered = {**MODEL, "model.onnx": b"\x08\x07onnx-bytez"}   # same size, other bytes
    with pytest.raises(BadRequest) as exc:
        svc.register(owner="acme", model="risk", manifest=claimed, actor="u", files=tampered)
    assert "model.onnx" in exc.value.public_message and "sha256" in exc.value.public_message
    assert store(svc).objects == {}
    assert registry(svc).list_models("acme") == [] and registry(svc).audit("acme") == []


def test_stored_file_mismatch_or_absence_is_refused_with_nothing_registered(svc):
    store(svc).put("acme", "risk", "1", "baseline.json", MODEL["baseline.json"])
    store(svc).put("acme", "risk", "1", "model.onnx", b"something else")
    with pytest.raises(BadRequest) as exc:
        svc.register(owner="acme", model="risk", manifest=manifest_for("risk", MODEL), actor="u", version="1")
    assert "does not match" in exc.value.public_message
    assert "s3://" not in exc.value.public_message and "models/acme" not in exc.value.public_message
    store(svc).put("acme", "risk", "1", "model.onnx", MODEL["model.onnx"])
    del store(svc).objects["models/acme/risk/1/baseline.json"]
    with pytest.raises(BadRequest) as exc:   # baseline.json is gone
        svc.register(owner="acme", model="risk", manifest=manifest_for("risk", MODEL), actor="u", version="1")
    assert "baseline.json" in exc.value.public_message
    assert registry(svc).list_models("acme") == []
    assert f"models/acme/risk/1/{MANIFEST_FILE}" not in store(svc).objects


def test_inline_files_must_be_listed_small_enough_and_complete_without_a_version(svc):
    m = manifest_for("risk", MODEL)
    with pytest.raises(BadRequest):
        svc.register(owner="acme", model="risk", manifest=m, actor="u", files={**MODEL, "extra.bin": b"1"})
    with pytest.raises(PayloadTooLarge):
        big = {"model.onnx": b"x" * 2000}
        svc.register(owner="acme", model="risk", manifest=manifest_for("risk", big), actor="u", files=big)
    with pytest.raises(BadRequest) as exc:
        svc.register(owner="acme", model="risk", manifest=m, actor="u",
                     files={"model.onnx": MODEL["model.onnx"]})
    assert "'version' is required" in exc.value.public_message


def test_registered_version_is_a_conflict_and_its_artifacts_never_change(svc):
    svc.register(owner="acme", model="risk", manifest=manifest_for("risk", MODEL), actor="u", files=MODEL)
    other = {**MODEL, "model.onnx": b"a different model"}
    with pytest.raises(Conflict):
        svc.register(owner="acme", model="risk", manifest=manifest_for("risk", other), actor="u",
                     files=other, version="1")
    with pytest.raises(Conflict):   # even straight through the upload path
        svc.upload_artifact("acme", "risk", "1", "model.onnx", other["model.onnx"])
    assert store(svc).objects["models/acme/risk/1/model.onnx"] == MODEL["model.onnx"]
    assert [r.action for r in registry(svc).audit("acme")] == ["register_version"]


def test_leftovers_of_an_unfinished_registration_are_replaced(svc):
    store(svc).put("acme", "risk", "2", "model.onnx", b"half-finished earlier attempt")
    svc.upload_artifact("acme", "risk", "2", "model.onnx", MODEL["model.onnx"])
    assert store(svc).objects["models/acme/risk/2/model.onnx"] == MODEL["model.onnx"]


def test_registered_name_wins_over_the_manifest_name(svc):
    mv = svc.register(owner="acme", model="risk-v2", manifest=manifest_for("risk", MODEL), actor="u",
                      files=MODEL)
    assert mv.manifest.name == "risk-v2" == registry(svc).resolve("acme", "risk-v2").manifest.name


@pytest.mark.parametrize("owner", ["_shared", "acme"])
def test_head_on_a_backbone_the_tenant_may_use(svc, owner):
    register_backbone(svc, owner)
    manifest, files = head(BackboneRef(tenant=owner, model="minilm", version="1"))
    mv = svc.register(owner="acme", model="tickets", manifest=manifest, actor="u", files=files)
    assert mv.version == "1"


def test_backbone_missing_or_foreign_gets_the_same_refusal(svc):
    manifest, files = head(BackboneRef(tenant="_shared", model="minilm", version="1"))
    with pytest.raises(BadRequest) as missing:
        svc.register(owner="acme", model="tickets", manifest=manifest, actor="u", files=files)
    register_backbone(svc, "globex")
    manifest, files = head(BackboneRef(tenant="globex", model="minilm", version="1"))
    with pytest.raises(BadRequest) as foreign:
        svc.register(owner="acme", model="tickets", manifest=manifest, actor="u", files=files)
    assert missing.value.public_message == foreign.value.public_message
    assert "globex" not in foreign.value.public_message
    assert registry(svc).list_models("acme") == [] and store(svc).objects.keys().isdisjoint(
        {"models/acme/tickets/1/head.npz"})


def test_backbone_must_be_a_pinned_cpu_embedding_version_and_not_a_head(svc):
    register_backbone(svc)
    svc.registry.set_alias("_shared", "minilm", "production", "1", "op")
    for ref in (BackboneRef(model="minilm", version="production"), BackboneRef(model="minilm", version="2")):
        with pytest.raises(BadRequest):
            svc.register(owner="acme", model="tickets", manifest=head(ref)[0], actor="u", files=head(ref)[1])
    manifest, files = head(BackboneRef(model="minilm", version="1"))
    svc.register(owner="_shared", model="tickets", manifest=manifest, actor="op", files=files)
    stacked, files = head(BackboneRef(model="tickets", version="1"))
    with pytest.raises(BadRequest, match="itself a head"):
        svc.register(owner="acme", model="tickets", manifest=stacked, actor="u", files=files)
    svc.register(owner="_shared", model="risk", manifest=manifest_for("risk", MODEL), actor="op", files=MODEL)
    on_tabular, files = head(BackboneRef(model="risk", version="1"))
    with pytest.raises(BadRequest, match="cpu embedding"):
        svc.register(owner="acme", model="tickets", manifest=on_tabular, actor="u", files=files)


def test_plan_version(svc):
    assert svc.plan_version("acme", "risk") == "1"
    svc.register(owner="acme", model="risk", manifest=manifest_for("risk", MODEL), actor="u", files=MODEL)
    assert svc.plan_version("acme", "risk") == "2"
    assert svc.plan_version("acme", "risk", "9") == "9"
    with pytest.raises(Conflict):
        svc.plan_version("acme", "risk", "1")


@pytest.mark.parametrize(("tenant", "scopes", "owner", "refusal"), [
    ("acme", {"models:write"}, "acme", None),
    ("acme", {"models:read"}, "acme", "missing scope 'models:write'"),
    ("acme", {"models:write", "models:admin"}, "globex", "you can change only your own tenant's models"),
    ("acme", {"models:write"}, "globex", "you can change only your own tenant's models"),
    # the shared models: any tenant's platform operator, with models:write AND models:admin
    ("acme", {"models:write", "models:admin"}, "_shared", None),
    ("acme", {"models:write"}, "_shared", "missing scope 'models:admin'"),
    ("acme", {"models:admin"}, "_shared", "missing scope 'models:write'"),
    ("_shared", {"models:write"}, "_shared", "missing scope 'models:admin'"),
    ("_shared", {"models:write", "models:admin"}, "_shared", None),
])
def test_write_access(tenant, scopes, owner, refusal):
    caller = Caller(tenant=tenant, sub="u", scopes=frozenset(scopes))
    if refusal is None:
        check_write_access(caller, owner)
    else:
        with pytest.raises(Forbidden) as exc:
            check_write_access(caller, owner)
        assert exc.value.public_message == refusal


def test_validation_summary_names_the_fields_and_never_echoes_input():
    secret = "sk-live-DO-NOT-ECHO"
    with pytest.raises(BadRequest) as exc:
        parse_manifest({"name": secret, "task": "regression", "inputs": [], "outputs": [], "files": {}})
    message = exc.value.public_message
    assert "manifest.name" in message and "manifest.task" in message and secret not in message
    try:
        Manifest.model_validate({"surprise": 1})
    except ValidationError as err:
        summary = summarize_validation(err)
    assert summary.startswith("invalid request: ") and "and 1 more" in summary   # 5 missing, 1 extra


def test_set_alias_goes_through_the_registry(svc):
    svc.register(owner="acme", model="risk", manifest=manifest_for("risk", MODEL), actor="u", files=MODEL)
    change = svc.set_alias(owner="acme", model="risk", alias="production", version="1", actor="u")
    assert (change.previous, change.version) == (None, "1")
    with pytest.raises(ModelNotFound):
        svc.set_alias(owner="acme", model="risk", alias="production", version="2", actor="u")
