"""Registration end to end on moto (DynamoDB + S3): the CLI verbs with settings from the environment, and
the service's refusals leaving nothing registered."""

from __future__ import annotations

import pytest
from moto_env import AWS, NAMES, lambda_account
from serving_models import classifier_version, embedding_version, tabular_with

from tenantml import cli
from tenantml.errors import BadRequest
from tenantml.manifest import BackboneRef, Manifest
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.registry.s3 import S3ArtifactStore
from tenantml.registry.service import RegistrationService

# Real tiny models: every registration loads what it registers, as serving would.
RISK, FILES = tabular_with("risk", **{"baseline.json": b'{"features": {"x": {}}}'})
EMB = embedding_version()
HEAD = classifier_version("acme", "tickets")


def risk(name: str = "risk", **update) -> Manifest:
    return RISK.model_copy(update={"name": name, **update})


@pytest.fixture
def env(monkeypatch):
    with lambda_account(monkeypatch, "registry"):
        yield


@pytest.fixture
def svc(env) -> RegistrationService:
    return RegistrationService(DynamoRegistry(NAMES.tables["registry"], AWS),
                               S3ArtifactStore(NAMES.buckets["artifacts"], AWS))


def build(folder, files, manifest: Manifest) -> str:
    folder.mkdir(parents=True)
    for n, data in files.items():
        (folder / n).write_bytes(data)
    (folder / "manifest.json").write_text(manifest.model_dump_json())
    return str(folder)


def test_cli_registers_shared_backbone_then_a_tenant_head_and_lists_them(env, tmp_path, capsys):
    backbone = build(tmp_path / "minilm-embed", EMB.artifacts, EMB.manifest)
    head = build(tmp_path / "tickets", HEAD.artifacts, HEAD.manifest)
    assert cli.main(["models", "register", backbone, "--tenant", "_shared"]) == 0
    assert cli.main(["models", "register", head, "--tenant", "acme", "--alias", "production",
                     "--alias", "canary"]) == 0
    out = capsys.readouterr().out
    assert "registered _shared/minilm-embed version 1 (aliases: production)" in out
    assert "registered acme/tickets version 1 (aliases: production, canary)" in out
    assert cli.main(["models", "list", "--tenant", "acme"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[:3] for r in rows] == [["minilm-embed", "_shared", "embedding"],
                                     ["tickets", "own", "text-classification"]]
    store = S3ArtifactStore(NAMES.buckets["artifacts"], AWS)
    assert store.get("acme", "tickets", "1", "head.json") == HEAD.artifacts["head.json"]
    stored = Manifest.model_validate_json(store.get("acme", "tickets", "1", "manifest.json"))
    assert stored.backbone == BackboneRef(model="minilm-embed", version="1")
    assert cli.main(["models", "list", "--tenant", "globex"]) == 0
    assert "tickets" not in capsys.readouterr().out


def test_cli_refuses_a_head_whose_backbone_does_not_resolve(env, tmp_path, capsys):
    head = build(tmp_path / "tickets", HEAD.artifacts, HEAD.manifest)
    assert cli.main(["models", "register", head, "--tenant", "acme"]) == 1
    assert "backbone model 'minilm-embed' version '1' not found" in capsys.readouterr().err
    assert cli.main(["models", "list", "--tenant", "acme"]) == 0
    assert "no models" in capsys.readouterr().out


def test_sha256_mismatch_in_s3_is_refused_with_nothing_registered(svc):
    manifest = risk()
    svc.store.put("acme", "risk", "1", "baseline.json", FILES["baseline.json"])
    model = FILES["model.onnx"]
    svc.store.put("acme", "risk", "1", "model.onnx", model[:-1] + bytes([model[-1] ^ 1]))   # same size
    with pytest.raises(BadRequest) as exc:
        svc.register(owner="acme", model="risk", manifest=manifest, actor="u", version="1")
    assert exc.value.public_message == "file 'model.onnx' does not match the sha256/size in the manifest"
    assert svc.registry.list_models("acme") == [] and svc.registry.list_audit("acme").records == ()
    assert svc.store.digest("acme", "risk", "1", "manifest.json") is None


def test_missing_file_is_refused_and_then_registration_succeeds_once_uploaded(svc):
    manifest = risk()
    svc.store.put("acme", "risk", "1", "model.onnx", FILES["model.onnx"])
    with pytest.raises(BadRequest, match="baseline.json"):
        svc.register(owner="acme", model="risk", manifest=manifest, actor="u", version="1")
    assert svc.registry.list_models("acme") == []
    svc.store.put("acme", "risk", "1", "baseline.json", FILES["baseline.json"])
    mv = svc.register(owner="acme", model="risk", manifest=manifest, actor="u", version="1",
                      aliases=["production"])
    assert svc.registry.resolve("acme", "risk") == mv
    assert Manifest.model_validate_json(svc.store.get("acme", "risk", "1", "manifest.json")) == manifest


def test_inline_registration_of_a_shared_backbone_and_a_foreign_backbone_refusal(svc):
    svc.register(owner="globex", model="private-embed", manifest=EMB.manifest, actor="g", files=EMB.artifacts)
    foreign = HEAD.manifest.model_copy(update={
        "backbone": BackboneRef(tenant="globex", model="private-embed", version="1")})
    with pytest.raises(BadRequest) as exc:
        svc.register(owner="acme", model="tickets", manifest=foreign, actor="u", files=HEAD.artifacts)
    assert "globex" not in exc.value.public_message
    assert svc.store.digest("acme", "tickets", "1", "head.json") is None


def objects_under(prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", region_name=AWS.region, endpoint_url=AWS.endpoint_url)
    return [o["Key"] for o in s3.list_objects_v2(Bucket=NAMES.buckets["artifacts"], Prefix=prefix)
            .get("Contents", [])]


def test_an_item_dynamodb_cannot_hold_is_413_and_the_uploads_are_removed(env):
    from tenantml.errors import PayloadTooLarge
    from tenantml.registry.service import Quotas

    # The service's own limit lifted, so DynamoDB's 400 KB item limit is what refuses the version.
    svc = RegistrationService(DynamoRegistry(NAMES.tables["registry"], AWS),
                              S3ArtifactStore(NAMES.buckets["artifacts"], AWS),
                              quotas=Quotas(max_manifest_bytes=10 ** 7))
    big = risk("bulky", build={"notes": "x" * 450_000})
    with pytest.raises(PayloadTooLarge):
        svc.register(owner="acme", model="bulky", manifest=big, actor="u", files=FILES)
    assert objects_under("models/acme/bulky/") == []


def test_an_oversized_manifest_is_413_with_nothing_uploaded(svc):
    from tenantml.errors import PayloadTooLarge

    big = risk("bulky", build={"notes": "x" * 300_000})
    with pytest.raises(PayloadTooLarge) as exc:
        svc.register(owner="acme", model="bulky", manifest=big, actor="u", files=FILES)
    assert "TENANTML_MAX_MANIFEST_BYTES" in exc.value.public_message
    assert objects_under("models/acme/bulky/") == []


def test_a_failed_registration_leaves_nothing_under_the_version_prefix(svc, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("DynamoDB unreachable")

    monkeypatch.setattr(svc.registry, "register_version", refuse)
    with pytest.raises(RuntimeError):
        svc.register(owner="acme", model="risk", manifest=risk(), actor="u", files=FILES)
    assert objects_under("models/acme/risk/1/") == []


def test_model_quota_on_dynamodb_counts_only_the_owners_models(env):
    from tenantml.errors import Conflict
    from tenantml.registry.service import Quotas

    svc = RegistrationService(DynamoRegistry(NAMES.tables["registry"], AWS),
                              S3ArtifactStore(NAMES.buckets["artifacts"], AWS),
                              quotas=Quotas(max_models_per_tenant=2, max_versions_per_model=2))
    for owner, model in (("globex", "g1"), ("globex", "g2"), ("acme", "a"), ("acme", "a"), ("acme", "b")):
        svc.register(owner=owner, model=model, manifest=risk(model), actor="u", files=FILES)
    assert svc.registry.count_models("acme") == 2 and svc.registry.count_versions("acme", "a") == 2
    with pytest.raises(Conflict, match="TENANTML_MAX_MODELS_PER_TENANT"):
        svc.register(owner="acme", model="c", manifest=risk("c"), actor="u", files=FILES)
    with pytest.raises(Conflict, match="TENANTML_MAX_VERSIONS_PER_MODEL"):
        svc.register(owner="acme", model="a", manifest=risk("a"), actor="u", files=FILES)
    assert objects_under("models/acme/c/") == [] and objects_under("models/acme/a/3/") == []
