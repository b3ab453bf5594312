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


# The rules below (verification, quotas at the byte boundary, backbones, cleanup) are the service's own
# and hold whatever the bytes are: these tests register placeholder bytes, so they opt out of the content
# checks that every real registration path runs (those are tested with real tiny models further down).
@pytest.fixture
def svc() -> RegistrationService:
    return RegistrationService(MemoryRegistry(), MemoryArtifactStore(), max_inline_bytes=1024,
                               validate_content=False)


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


# --- quotas ---------------------------------------------------------------------------------------------

def quota_svc(**limits) -> RegistrationService:
    from tenantml.registry.service import Quotas

    return RegistrationService(MemoryRegistry(), MemoryArtifactStore(), quotas=Quotas(**limits),
                               validate_content=False)   # placeholder bytes, as above


def add(svc: RegistrationService, owner: str, model: str, files=MODEL):
    return svc.register(owner=owner, model=model, manifest=manifest_for(model, files), actor="u", files=files)


def test_models_per_tenant_quota_counts_only_the_owner_and_refuses_at_the_boundary():
    svc = quota_svc(max_models_per_tenant=2)
    add(svc, "acme", "a")
    add(svc, "acme", "b")                      # exactly at the limit: accepted
    for name in ("x", "y", "z"):               # another tenant's models never count against acme
        add(svc, "globex", name) if name != "z" else None
    add(svc, "acme", "a")                      # a new version of an existing model is not a new model
    with pytest.raises(Conflict) as exc:
        add(svc, "acme", "c")
    msg = exc.value.public_message
    assert exc.value.status == 409
    assert "2 models" in msg and "limit 2" in msg and "TENANTML_MAX_MODELS_PER_TENANT" in msg
    assert "globex" not in msg
    assert not any(k.startswith("models/acme/c/") for k in store(svc).objects)
    assert [s.model for s in registry(svc).list_models("acme")] == ["a", "b"]


def test_versions_per_model_quota_refuses_the_version_after_the_limit():
    svc = quota_svc(max_versions_per_model=2)
    add(svc, "acme", "risk")
    add(svc, "acme", "risk")
    add(svc, "globex", "risk")                 # globex's own count
    with pytest.raises(Conflict) as exc:
        add(svc, "acme", "risk")
    msg = exc.value.public_message
    assert "TENANTML_MAX_VERSIONS_PER_MODEL" in msg and "limit 2" in msg
    assert not any(k.startswith("models/acme/risk/3/") for k in store(svc).objects)
    assert add(svc, "globex", "risk").version == "2"


def test_files_and_bytes_per_version_quotas_answer_413_at_the_boundary():
    size = sum(len(d) for d in MODEL.values())
    assert add(quota_svc(max_files_per_version=2, max_version_bytes=size), "acme", "risk").version == "1"
    svc = quota_svc(max_files_per_version=1)
    with pytest.raises(PayloadTooLarge) as exc:
        add(svc, "acme", "risk")
    assert exc.value.status == 413 and "TENANTML_MAX_FILES_PER_VERSION" in exc.value.public_message
    svc = quota_svc(max_version_bytes=size - 1)
    with pytest.raises(PayloadTooLarge) as exc:
        add(svc, "acme", "risk")
    msg = exc.value.public_message
    assert "TENANTML_MAX_VERSION_BYTES" in msg and f"limit {size - 1}" in msg
    assert store(svc).objects == {}


def test_an_oversized_manifest_is_413_before_anything_is_written():
    svc = quota_svc(max_manifest_bytes=2048)
    small = manifest_for("risk", MODEL, build={"note": "x" * 100})
    assert svc.register(owner="acme", model="risk", manifest=small, actor="u", files=MODEL).version == "1"
    big = manifest_for("risk", MODEL, build={"note": "x" * 4096})
    with pytest.raises(PayloadTooLarge) as exc:
        svc.register(owner="acme", model="risk", manifest=big, actor="u", files=MODEL)
    assert "TENANTML_MAX_MANIFEST_BYTES" in exc.value.public_message
    assert not any(k.startswith("models/acme/risk/2/") for k in store(svc).objects)


def test_the_settings_defaults_are_the_quotas_defaults():
    from tenantml.registry.service import Quotas
    from tenantml.settings import RegistrySettings

    settings = RegistrySettings(artifact_bucket="b", registry_table="t", max_versions_per_model=7)
    assert Quotas.from_settings(settings) == Quotas(max_versions_per_model=7)
    assert Quotas() == Quotas(100, 50, 16, 2 * 1024 ** 3, 256 * 1024)
    with pytest.raises(ValidationError):
        RegistrySettings(artifact_bucket="b", registry_table="t", max_manifest_bytes=400_000)


# --- cleanup after a failed registration -------------------------------------------------------------

def test_a_registration_failing_after_upload_deletes_only_what_it_uploaded(svc, monkeypatch):
    store(svc).put("acme", "risk", "1", "baseline.json", MODEL["baseline.json"])   # uploaded beforehand

    def refuse(*args, **kwargs):
        raise RuntimeError("registry down")

    monkeypatch.setattr(registry(svc), "register_version", refuse)
    with pytest.raises(RuntimeError):
        svc.register(owner="acme", model="risk", manifest=manifest_for("risk", MODEL), actor="u",
                     version="1", files={"model.onnx": MODEL["model.onnx"]})
    assert list(store(svc).objects) == ["models/acme/risk/1/baseline.json"]


def test_cleanup_keeps_the_files_when_the_version_got_registered_concurrently(svc, monkeypatch):
    real = registry(svc).register_version

    def lose_the_race(owner, model, manifest, actor, version=None, aliases=()):
        real(owner, model, manifest, "other", version=version)
        raise Conflict("version '1' of model 'risk' already exists")

    monkeypatch.setattr(registry(svc), "register_version", lose_the_race)
    with pytest.raises(Conflict):
        add(svc, "acme", "risk")
    assert "models/acme/risk/1/model.onnx" in store(svc).objects


# --- content validation ------------------------------------------------------------------------------

@pytest.fixture
def checking() -> RegistrationService:
    return RegistrationService(MemoryRegistry(), MemoryArtifactStore())   # content checks: the default


def register_version(svc: RegistrationService, v, **kw):
    return svc.register(owner=v.owner, model=v.manifest.name, manifest=v.manifest, actor="u",
                        files=v.artifacts, **kw)


def refused(svc: RegistrationService, v) -> str:
    with pytest.raises(BadRequest) as exc:
        register_version(svc, v)
    assert exc.value.status == 400
    assert not any(k.startswith(f"models/{v.owner}/{v.manifest.name}/") for k in store(svc).objects)
    return exc.value.public_message


def replaced(v, **artifacts):
    import serving_models as sm

    files = {**v.artifacts, **artifacts}
    return sm.Version(v.owner, v.manifest.model_copy(update={"files": sm._files(files)}), files, v.version)


def test_real_versions_of_each_kind_register_with_content_checks(checking):
    import serving_models as sm

    assert register_version(checking, sm.tabular_version(owner="acme")).version == "1"
    assert register_version(checking, sm.embedding_version()).version == "1"
    assert register_version(checking, sm.classifier_version("acme")).version == "1"


def test_a_model_that_is_not_onnx_is_refused(checking):
    import serving_models as sm

    msg = refused(checking, replaced(sm.tabular_version(owner="acme"), **{"model.onnx": b"\x08\x07garbage"}))
    assert msg == "file 'model.onnx' is not a valid ONNX model"
    msg = refused(checking, replaced(sm.tabular_version(owner="acme"), **{"model.onnx": b"\xff" * 64}))
    assert msg == "file 'model.onnx' is not a valid ONNX model"


def external_data_model() -> bytes:
    import onnx
    import serving_models as sm
    from onnx.external_data_helper import set_external_data

    model = onnx.load_model_from_string(sm.encoder_onnx(sm.embedding_table()))
    table = next(t for t in model.graph.initializer if t.name == "table")
    set_external_data(table, location="../../../../etc/passwd")
    table.data_location = onnx.TensorProto.EXTERNAL
    table.ClearField("raw_data")
    return model.SerializeToString()


def test_a_model_with_external_data_is_refused_before_onnxruntime_opens_it(checking, monkeypatch):
    import onnxruntime as ort
    import serving_models as sm

    opened = []
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: opened.append(a))
    msg = refused(checking, replaced(sm.embedding_version(), **{"model.onnx": external_data_model()}))
    assert "model.onnx" in msg and "external data" in msg and opened == []


def test_the_external_data_walk_on_its_own():
    import serving_models as sm

    from tenantml.registry.validation import ExternalData, NotOnnx, check_no_external_data

    check_no_external_data(sm.encoder_onnx(sm.embedding_table()))
    check_no_external_data(sm.tabular_onnx()[0])
    with pytest.raises(ExternalData):
        check_no_external_data(external_data_model())
    for junk in (b"", b"\x0f", b"\x3a\xff\xff\xff\x0f"):
        with pytest.raises(NotOnnx):
            check_no_external_data(junk)


def test_graph_inputs_and_outputs_must_fit_the_manifest(checking):
    import serving_models as sm

    tabular_graph = sm.tabular_onnx()[0]
    msg = refused(checking, replaced(sm.embedding_version(), **{"model.onnx": tabular_graph}))
    assert msg.startswith("file 'model.onnx' does not fit the manifest: unsupported graph inputs")
    v = sm.tabular_version(owner="acme")
    wrong = v.manifest.model_copy(update={"build": {"onnx_outputs": {"probabilities": "nope"}}})
    msg = refused(checking, sm.Version("acme", wrong, v.artifacts, "1"))
    assert msg.startswith("file 'model.onnx' does not fit the manifest: onnx_outputs")
    v = sm.embedding_version()
    wider = v.manifest.outputs[0].model_copy(update={"shape": [-1, 16]})
    wide = v.manifest.model_copy(update={"outputs": [wider]})
    msg = refused(checking, sm.Version(v.owner, wide, v.artifacts, "1"))
    assert msg == (f"file 'model.onnx' produces embeddings of dimension {sm.DIM}, the manifest declares 16 "
                   "(outputs.embedding.shape)")


def test_a_broken_tokenizer_is_refused(checking):
    import serving_models as sm

    msg = refused(checking, replaced(sm.embedding_version(), **{"tokenizer.json": b'{"model": {}}'}))
    assert msg == "file 'tokenizer.json' is not a valid tokenizer (tokenizers.Tokenizer.from_str failed)"
    msg = refused(checking, replaced(sm.embedding_version(), **{"tokenizer.json": b"\xff\xfe"}))
    assert "tokenizer.json" in msg


def test_a_head_must_match_its_backbones_dimension(checking):
    import serving_models as sm

    register_version(checking, sm.embedding_version())
    narrow = sm.linear_head_json(dim=4)
    msg = refused(checking, replaced(sm.classifier_version("acme"), **{"head.json": narrow}))
    assert msg == (f"file 'head.json' has embedding_dim 4, but backbone model 'minilm-embed' version '1' "
                   f"produces embeddings of dimension {sm.DIM}")
    msg = refused(checking, replaced(sm.classifier_version("acme"), **{"head.json": b'{"kind": "linear"}'}))
    assert msg.startswith("file 'head.json' does not fit the manifest")


def test_a_gpu_version_is_walked_not_loaded(checking):
    import serving_models as sm

    v = sm.embedding_version(name="gpu-embed")
    gpu = v.manifest.model_copy(update={"backend": "gpu"})
    assert register_version(checking, sm.Version(v.owner, gpu, v.artifacts, "1")).version == "1"
    bad = replaced(sm.Version(v.owner, gpu, v.artifacts, "1"), **{"model.onnx": external_data_model()})
    assert "external data" in refused(checking, sm.Version(v.owner, gpu.model_copy(
        update={"name": "gpu-embed2", "files": bad.manifest.files}), bad.artifacts, "1"))
