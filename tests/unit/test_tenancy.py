"""tenantml.tenancy: acting for one tenant, per-tenant STS sessions cached for their lifetime, clients that
call as the tenant acted for and refuse to call outside one (the IAM side: tests/infrastructure/
test_tenant_boundary.py)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from moto import mock_aws

from tenantml.settings import AwsSettings, TenancySettings
from tenantml.tenancy import (
    TENANT_TAG,
    NoTenantContext,
    ScopedClient,
    TenantSessions,
    acting_for,
    current_tenant,
)

AWS = AwsSettings(region="us-east-1")
ROLE = "arn:aws:iam::123456789012:role/tenantml-inference-tenant-data"


class RecordingSts:
    """The real (moto) STS client, recording each AssumeRole request."""

    def __init__(self) -> None:
        from tenantml.aws import botocore_client

        self._sts = botocore_client("sts", AWS)
        self.calls: list[dict[str, Any]] = []

    def assume_role(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return self._sts.assume_role(**kwargs)


@pytest.fixture()
def sts(monkeypatch) -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield RecordingSts()


def test_acting_for_sets_the_tenant_for_the_block_only_and_restores_the_outer_one():
    with pytest.raises(NoTenantContext):
        current_tenant()
    with acting_for("acme"):
        assert current_tenant() == "acme"
        with acting_for("_shared"):
            assert current_tenant() == "_shared"
        assert current_tenant() == "acme"
    with pytest.raises(NoTenantContext):
        current_tenant()


def test_acting_for_restores_the_context_when_the_block_raises():
    with pytest.raises(ValueError), acting_for("acme"):
        raise ValueError
    with pytest.raises(NoTenantContext):
        current_tenant()


@pytest.mark.parametrize("tenant", ["", "Acme", "acme/../globex", "a" * 64, None, "acme\n"])
def test_acting_for_refuses_an_invalid_tenant_id(tenant):
    with pytest.raises(NoTenantContext):
        with acting_for(tenant):  # type: ignore[arg-type]
            pass


def test_a_thread_does_not_inherit_another_threads_tenant():
    seen: list[str] = []

    def other() -> None:
        try:
            seen.append(current_tenant())
        except NoTenantContext:
            seen.append("none")

    with acting_for("acme"):
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen == ["none"]


def test_one_assume_role_per_tenant_with_the_tenant_session_tag_then_cached(sts):
    sessions = TenantSessions(ROLE, AWS, sts=sts)
    with acting_for("acme"):
        first = sessions.client("s3")
        assert sessions.client("s3") is first            # a warm request: no STS call, same client
        ddb = sessions.client("dynamodb")
    with acting_for("globex"):
        other = sessions.client("s3")
    assert other is not first and ddb is not first
    assert [c["Tags"] for c in sts.calls] == [[{"Key": TENANT_TAG, "Value": "acme"}],
                                              [{"Key": TENANT_TAG, "Value": "globex"}]]
    assert [c["RoleSessionName"] for c in sts.calls] == ["tenantml-acme", "tenantml-globex"]
    assert {c["RoleArn"] for c in sts.calls} == {ROLE} and {c["DurationSeconds"] for c in sts.calls} == {3600}
    assert sessions.assumed == 2


def test_the_clients_carry_the_assumed_credentials_not_the_functions(sts):
    sessions = TenantSessions(ROLE, AWS, sts=sts)
    client = sessions.client("s3", "acme")
    creds = client._request_signer._credentials.get_frozen_credentials()
    assert creds.access_key != "testing" and creds.token
    assert creds.access_key == sessions.session("acme").credentials["AccessKeyId"]


def test_credentials_are_renewed_before_they_expire(sts):
    now = [time.time()]
    sessions = TenantSessions(ROLE, AWS, sts=sts, clock=lambda: now[0], refresh_margin_s=300)
    expires = sessions.session("acme").expires_at
    assert expires - now[0] == pytest.approx(3600, abs=5)
    now[0] = expires - 301
    sessions.session("acme")
    assert sessions.assumed == 1                          # still more than the margin left
    now[0] = expires - 299
    renewed = sessions.session("acme")
    assert sessions.assumed == 2 and renewed.clients == {}    # new credentials, new clients


def test_at_most_maxsize_tenants_sessions_are_kept(sts):
    sessions = TenantSessions(ROLE, AWS, sts=sts, maxsize=2)
    for tenant in ("a1", "a2", "a1", "a3", "a1", "a2"):
        sessions.session(tenant)
    # a1 stays (recently used), a2 was dropped for a3 and is assumed again
    assert [c["Tags"][0]["Value"] for c in sts.calls] == ["a1", "a2", "a3", "a2"]


def test_concurrent_first_requests_of_one_tenant_assume_the_role_once(sts):
    sessions = TenantSessions(ROLE, AWS, sts=sts)

    def call(_: int) -> Any:
        with acting_for("acme"):
            return sessions.client("s3")

    with ThreadPoolExecutor(8) as pool:
        clients = list(pool.map(call, range(16)))
    assert sessions.assumed == 1 and len({id(c) for c in clients}) == 1


def test_a_scoped_client_calls_as_the_tenant_acted_for_and_fails_closed_outside(sts):
    sessions = TenantSessions(ROLE, AWS, sts=sts)
    s3 = ScopedClient(sessions, "s3")
    with pytest.raises(NoTenantContext):
        s3.list_buckets()
    assert sessions.assumed == 0                          # never falls back to the function's role
    with acting_for("acme"):
        s3.list_buckets()
        assert s3.meta is sessions.client("s3", "acme").meta
    with acting_for("globex"):
        assert s3.meta is sessions.client("s3", "globex").meta


def test_from_settings_is_none_without_a_role_and_honours_the_session_length():
    assert TenantSessions.from_settings(TenancySettings(), AWS) is None
    sessions = TenantSessions.from_settings(TenancySettings(tenant_role_arn=ROLE, tenant_session_seconds=900,
                                                            tenant_sessions_max=3), AWS)
    assert sessions is not None and sessions.role_arn == ROLE and sessions._seconds == 900
    assert sessions._cache.maxsize == 3


@pytest.mark.parametrize("seconds", [899, 3601])
def test_session_length_is_bounded_by_role_chaining(seconds):
    with pytest.raises(ValueError):
        TenancySettings(tenant_role_arn=ROLE, tenant_session_seconds=seconds)


# --- the inference service acts for the caller's tenant -----------------------------------------------

@pytest.fixture()
def reads(monkeypatch) -> list[tuple[str, str, str]]:
    """Every artifact read and registry lookup of the in-memory adapters: (acting tenant, what, owner)."""
    from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry

    seen: list[tuple[str, str, str]] = []
    download, get, resolve = MemoryArtifactStore.download, MemoryArtifactStore.get, MemoryRegistry.resolve

    def acting() -> str:
        try:
            return current_tenant()
        except NoTenantContext:
            return "none"

    def rec_download(self, owner, model, version, name, out):
        seen.append((acting(), f"{model}/{name}", owner))
        seen.append((acting(), f"{model}@{version}", owner))
        return download(self, owner, model, version, name, out)

    def rec_get(self, owner, model, version, name):
        seen.append((acting(), f"{model}/{name}", owner))
        return get(self, owner, model, version, name)

    def rec_resolve(self, tenant, model, version=None):
        seen.append((acting(), f"resolve {model}", tenant))
        return resolve(self, tenant, model, version)

    monkeypatch.setattr(MemoryArtifactStore, "download", rec_download)
    monkeypatch.setattr(MemoryArtifactStore, "get", rec_get)
    monkeypatch.setattr(MemoryRegistry, "resolve", rec_resolve)
    return seen


def test_every_registry_and_artifact_read_of_a_request_acts_for_the_requesting_tenant(reads):
    import serving_models as sm

    from tenantml.serving.service import InferenceService
    from tenantml.settings import ServingSettings

    registry, store = sm.populated()
    svc = InferenceService(registry=registry, store=store, settings=ServingSettings(
        artifact_bucket="b", registry_table="t", prediction_cache_size=0))
    svc.infer("acme", "work-item-classifier", None, sm.infer_body("text", "BYTES", [1], ["a bug"]))
    # acme's head and the shared backbone, both fetched with acme's session
    assert ("acme", "work-item-classifier/head.json", "acme") in reads
    assert ("acme", "minilm-embed/model.onnx", "_shared") in reads
    reads.clear()
    svc.infer("globex", "minilm-embed", None, sm.infer_body("text", "BYTES", [1], ["hi"]))
    svc.model_metadata("globex", "project-risk")
    svc.model_ready("globex", "project-risk")
    # the backbone acme loaded is served to globex from the runtime's cache: no second download
    assert not [r for r in reads if r[1] == "minilm-embed/model.onnx"]
    assert reads and {r[0] for r in reads} == {"globex"}
    reads.clear()
    svc = InferenceService(registry=registry, store=store, settings=svc.settings)    # a new environment
    assert svc.preload(["_shared/project-risk", "acme/work-item-classifier"]) == [
        "_shared/project-risk", "acme/work-item-classifier"]
    assert ("_shared", "resolve project-risk", "_shared") in reads
    assert ("_shared", "project-risk/model.onnx", "_shared") in reads
    assert ("acme", "resolve work-item-classifier", "acme") in reads
    assert ("acme", "minilm-embed/model.onnx", "_shared") in reads
    assert "none" not in {r[0] for r in reads}


def test_a_shadow_prediction_on_its_pool_thread_acts_for_the_requests_tenant(reads):
    from test_rollout_serving import MODEL, ROWS, body
    from test_rollout_serving import service as rollout_service

    svc, _, _ = rollout_service(mode="shadow", stages=(100,))
    svc.infer("acme", MODEL, None, body(ROWS[:1]), subject="u1")
    svc.wait_for_shadows(timeout=30)
    assert ("acme", f"{MODEL}@2", "acme") in reads      # the candidate, loaded on the shadow thread
    assert {r[0] for r in reads} == {"acme"}
