"""The tenant boundary holds in IAM even when the code is wrong (tenantml.tenancy).

The policies under test are the synthesized ones: each function's tenant data role as the CDK app writes
it, its CloudFormation references resolved to the moto resources' ARNs. Two ways to evaluate them:

- S3 on moto with IAM enforcement on: moto does not fill in `${aws:PrincipalTag/tenant}`, so the role is
  created in moto with the policy rendered for one tenant (the variable replaced by the tenant id, which is
  what IAM does with the session tag), and the function's own code path (InferenceService ->
  S3ArtifactStore -> ScopedClient -> STS AssumeRole) runs against it.
- DynamoDB (and S3 once more) with tests/infrastructure/iam_eval.py: moto ignores dynamodb:LeadingKeys, so
  every call a scoped client makes is first authorized by the evaluator against the synthesized policy and
  the session tags the AssumeRole call carried; a denied call fails as AWS fails it (AccessDenied).

"The code is wrong" is a test double: a store or resolver pointed at another tenant's key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from iam_eval import Request, Unsupported, allowed, dynamodb_requests
from moto import mock_aws
from moto.core import enable_iam_authentication
from moto_env import AWS, NAMES
from serving_models import classifier_version, populated, register, tabular_version
from tenantml_cdk.application import STATEFUL_STACK, STATELESS_STACK
from test_least_privilege import Kinds, tenant_role

from tenantml import resources
from tenantml.aws import botocore_client
from tenantml.errors import ModelNotFound, ModelUnavailable
from tenantml.local.provision import create_resources
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.registry.memory import MemoryRegistry
from tenantml.registry.s3 import S3ArtifactStore
from tenantml.serving.service import InferenceService
from tenantml.settings import ServingSettings
from tenantml.tenancy import TENANT_TAG, NoTenantContext, ScopedClient, TenantSessions, acting_for

ACCOUNT = resources.LOCAL_ACCOUNT_ID
BUCKET = NAMES.buckets[resources.ARTIFACT_BUCKET.id]
TABLE_ARNS = {NAMES.tables[t.id]: f"arn:aws:dynamodb:{AWS.region}:{ACCOUNT}:table/{NAMES.tables[t.id]}"
              for t in resources.TABLES}
ARNS = {"bucket": f"arn:aws:s3:::{BUCKET}",
        **{f"table:{t.id}": TABLE_ARNS[NAMES.tables[t.id]] for t in resources.TABLES}}
SETTINGS = ServingSettings(artifact_bucket=BUCKET, registry_table=NAMES.tables["registry"],
                           prediction_cache_size=0)


# --- the synthesized policies, made concrete ---------------------------------------------------------

def _concrete(value: Any, kinds: Kinds) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return [_concrete(v, kinds) for v in value]
    if "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        return sep.join(_concrete(p, kinds) for p in parts)
    return ARNS[kinds.of(value)]


def data_role_policy(templates: tuple[dict, dict], function: str) -> list[dict]:
    """The function's tenant data role statements, with the moto resources' ARNs."""
    from infra_helpers import role_statements

    stateless, stateful = templates
    kinds = Kinds(stateless, stateful)
    return [{**s, "Resource": _concrete(s["Resource"], kinds)}
            for s in role_statements(stateless, tenant_role(stateless, function))]


def rendered_for(statements: list[dict], tenant: str) -> dict:
    """What IAM evaluates for a session tagged tenant=<tenant>: the policy variable replaced."""
    text = json.dumps({"Version": "2012-10-17", "Statement": statements})
    return json.loads(text.replace("${aws:PrincipalTag/" + TENANT_TAG + "}", tenant))


@pytest.fixture(scope="module")
def templates(synth) -> tuple[dict, dict]:
    return synth.templates[STATELESS_STACK], synth.templates[STATEFUL_STACK]


@pytest.fixture()
def account(monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        create_resources(AWS, NAMES)
        yield


def _populate() -> tuple[S3ArtifactStore, DynamoRegistry]:
    """Shared encoder and risk model, acme's classifier head, and a globex model and head of the same
    names as acme's, so a misdirected read finds a real object to be refused, not a missing one."""
    store = S3ArtifactStore(BUCKET, AWS)
    registry = DynamoRegistry(NAMES.tables["registry"], AWS)
    populated(store=store, registry=registry)
    register(registry, store, classifier_version("globex", seed=7))
    register(registry, store, tabular_version(owner="globex", name="globex-risk"))
    return store, registry


class Misdirected:
    """An ArtifactStore double with the bug under test: it reads `victim`'s objects instead of the
    requesting owner's."""

    def __init__(self, store: S3ArtifactStore, victim: str) -> None:
        self._store, self._victim = store, victim

    def get(self, owner: str, model: str, version: str, name: str) -> bytes:
        return self._store.get(self._victim if owner != "_shared" else owner, model, version, name)

    def download(self, owner: str, model: str, version: str, name: str, out: Any) -> None:
        self._store.download(self._victim if owner != "_shared" else owner, model, version, name, out)


# --- S3 on moto, IAM enforced, policy rendered per tenant ---------------------------------------------

def _moto_role(statements: list[dict], tenant: str) -> str:
    iam = botocore_client("iam", AWS)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}}]}
    name = f"inference-tenant-data-{tenant}"
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(RoleName=name, PolicyName="tenant-data",
                        PolicyDocument=json.dumps(rendered_for(statements, tenant)))
    return arn


def test_on_moto_a_store_pointed_at_another_tenants_key_is_denied_by_iam(templates, account):
    _populate()
    sessions = TenantSessions(_moto_role(data_role_policy(templates, "inference"), "acme"), AWS)
    sessions.session("acme")                      # AssumeRole before enforcement: moto's STS has no users
    scoped = S3ArtifactStore(BUCKET, AWS, client=ScopedClient(sessions, "s3"))
    registry = MemoryRegistry()                   # the resolver is not under test here: the store is
    for v in (classifier_version("acme"), *_shared_versions()):
        register(registry, _NullStore(), v)
    right = InferenceService(registry=registry, store=scoped, settings=SETTINGS)
    wrong = InferenceService(registry=registry, store=Misdirected(scoped, "globex"), settings=SETTINGS)
    with enable_iam_authentication():
        with pytest.raises(ModelUnavailable) as denied:
            wrong.model_ready("acme", "work-item-classifier")
        assert "AccessDenied" in denied.value.detail and "models/globex/" in denied.value.detail
        # The same code with the right key: acme's head and the shared backbone load with acme's session.
        assert right.model_ready("acme", "work-item-classifier") == {"name": "work-item-classifier",
                                                                     "ready": True}
        assert right.model_ready("acme", "project-risk")["ready"] is True
    assert sessions.assumed == 1


def _shared_versions() -> list:
    from serving_models import embedding_version

    return [embedding_version(), tabular_version()]


class _NullStore:
    """Registration into the in-memory registry only (the objects are already in S3)."""

    def put(self, *args: Any) -> None:
        return None


def test_on_moto_the_rendered_policy_is_what_denies_not_moto_itself(templates, account):
    """Control: the same misdirected read with a session of globex's own rendered role succeeds, so the
    denial above comes from the tenant in the policy, not from moto refusing assumed roles."""
    _populate()
    sessions = TenantSessions(_moto_role(data_role_policy(templates, "inference"), "globex"), AWS)
    sessions.session("globex")
    scoped = S3ArtifactStore(BUCKET, AWS, client=ScopedClient(sessions, "s3"))
    with enable_iam_authentication(), acting_for("globex"):
        assert scoped.get("globex", "work-item-classifier", "1", "head.json")
        with pytest.raises(ModelUnavailable) as denied:
            scoped.get("acme", "work-item-classifier", "1", "head.json")
        assert "AccessDenied" in denied.value.detail


# --- DynamoDB and S3 with the evaluator ---------------------------------------------------------------

class TaggedSts:
    """The STS client, remembering which session tags each issued access key carries (what IAM reads
    as aws:PrincipalTag/*)."""

    def __init__(self) -> None:
        self._sts = botocore_client("sts", AWS)
        self.tags: dict[str, dict[str, str]] = {}

    def assume_role(self, **kwargs: Any) -> dict:
        resp = self._sts.assume_role(**kwargs)
        self.tags[resp["Credentials"]["AccessKeyId"]] = {t["Key"]: t["Value"] for t in kwargs["Tags"]}
        return resp


def _s3_requests(operation: str, params: dict) -> list[Request]:
    bucket = f"arn:aws:s3:::{params['Bucket']}"
    if operation == "ListObjectsV2":
        return [Request("s3:ListBucket", bucket, {"s3:prefix": params.get("Prefix", "")})]
    action = {"GetObject": "s3:GetObject", "HeadObject": "s3:GetObject",
              "PutObject": "s3:PutObject"}[operation]
    return [Request(action, f"{bucket}/{params['Key']}")]


class AccessLog:
    """Every decision the evaluator made: (action, resource, allowed)."""

    def __init__(self) -> None:
        self.decisions: list[tuple[str, str, bool]] = []


def evaluated_sessions(statements: list[dict], log: AccessLog) -> TenantSessions:
    """TenantSessions whose clients ask the evaluator before each call, as IAM would."""
    sts = TaggedSts()

    def make_client(service: str, creds: dict) -> Any:
        client = botocore_client(service, AWS, credentials=creds)
        tags = sts.tags[creds["AccessKeyId"]]

        def authorize(params: dict, model: Any, **_: Any) -> None:
            requests = (dynamodb_requests(model.name, params, TABLE_ARNS) if service == "dynamodb"
                        else _s3_requests(model.name, params))
            for r in requests:
                ok = allowed(statements, r, tags)
                log.decisions.append((r.action, r.resource, ok))
                if not ok:
                    raise ClientError({"Error": {"Code": "AccessDeniedException" if service == "dynamodb"
                                                 else "AccessDenied", "Message": "denied by policy"}},
                                      model.name)

        client.meta.events.register(f"before-parameter-build.{service}", authorize)
        return client

    return TenantSessions("arn:aws:iam::123456789012:role/tenant-data", AWS, sts=sts, make_client=make_client)


def test_a_registry_resolver_pointed_at_another_tenants_partition_is_denied(templates, account,
                                                                             monkeypatch):
    _populate()
    log = AccessLog()
    sessions = evaluated_sessions(data_role_policy(templates, "inference"), log)
    registry = DynamoRegistry(NAMES.tables["registry"], AWS, client=ScopedClient(sessions, "dynamodb"))
    with acting_for("acme"):
        mv = registry.resolve("acme", "work-item-classifier")          # own + shared keys: allowed
        assert mv.owner == "acme"
        assert registry.resolve("acme", "minilm-embed").owner == "_shared"
        assert {s.model for s in registry.list_models("acme")} >= {"work-item-classifier", "minilm-embed"}
        assert all(ok for _a, _r, ok in log.decisions)
        # The bug: every key the resolver builds points at globex's partition.
        monkeypatch.setattr("tenantml.registry.dynamo.tenant_pk", lambda tenant: "T#globex")
        with pytest.raises(ClientError) as denied:
            registry.resolve("acme", "work-item-classifier")
        assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
        with pytest.raises(ClientError):
            registry.list_models("acme")
    assert log.decisions[-1] == ("dynamodb:Query", TABLE_ARNS[NAMES.tables["registry"]], False)


def test_through_the_service_a_misdirected_resolver_answers_503_never_the_other_tenants_model(
        templates, account, monkeypatch):
    _populate()
    sessions = evaluated_sessions(data_role_policy(templates, "inference"), AccessLog())
    client = ScopedClient(sessions, "dynamodb")
    service = InferenceService(registry=DynamoRegistry(NAMES.tables["registry"], AWS, client=client),
                               store=S3ArtifactStore(BUCKET, AWS, client=ScopedClient(sessions, "s3")),
                               settings=SETTINGS.model_copy(update={"registry_cache_ttl_seconds": 0}))
    assert service.model_metadata("acme", "work-item-classifier")["name"] == "work-item-classifier"
    monkeypatch.setattr("tenantml.registry.dynamo.lookup_owners", lambda tenant: ("globex",))
    with pytest.raises(ModelUnavailable) as err:
        service.model_metadata("acme", "globex-risk")
    assert err.value.status == 503 and "AccessDeniedException" in err.value.detail


@pytest.mark.parametrize(("operation", "params", "ok"), [
    ("GetItem", {"Key": {"pk": {"S": "T#acme"}, "sk": {"S": "M#m"}}}, True),
    ("GetItem", {"Key": {"pk": {"S": "T#_shared"}, "sk": {"S": "M#m"}}}, True),
    ("GetItem", {"Key": {"pk": {"S": "T#globex"}, "sk": {"S": "M#m"}}}, False),
    ("GetItem", {"Key": {"pk": {"S": "T#acme#AUDIT"}, "sk": {"S": "x"}}}, False),   # the audit log
    ("Query", {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": "T#globex"}}},
     False),
    ("Query", {"KeyConditionExpression": "#p = :v AND begins_with(sk, :m)", "ExpressionAttributeNames":
               {"#p": "pk"}, "ExpressionAttributeValues": {":v": {"S": "T#acme"}, ":m": {"S": "M#"}}}, True),
    ("PutItem", {"Item": {"pk": {"S": "T#acme"}, "sk": {"S": "M#m"}}}, False),   # inference never writes it
    ("Scan", {}, False),
])
def test_the_inference_data_role_on_the_registry_table(templates, operation, params, ok):
    table = NAMES.tables["registry"]
    (request,) = dynamodb_requests(operation, {"TableName": table, **params}, TABLE_ARNS)
    assert allowed(data_role_policy(templates, "inference"), request, {TENANT_TAG: "acme"}) is ok


@pytest.mark.parametrize(("operation", "pk", "ok"), [
    ("GetItem", "T#acme", True), ("UpdateItem", "T#acme", True), ("GetItem", "T#globex", False),
    ("UpdateItem", "T#globex", False), ("PutItem", "T#acme", False), ("DeleteItem", "T#acme", False),
])
def test_gpu_dispatch_moves_only_its_jobs_tenants_request_items(templates, operation, pk, ok):
    table = NAMES.tables["requests"]
    key = {"pk": {"S": pk}, "sk": {"S": "R#0123"}}
    params = {"TableName": table, **({"Item": key} if operation == "PutItem" else {"Key": key})}
    (request,) = dynamodb_requests(operation, params, TABLE_ARNS)
    assert allowed(data_role_policy(templates, "gpu_dispatch"), request, {TENANT_TAG: "acme"}) is ok


def test_a_batch_get_is_allowed_only_when_every_key_is_the_tenants_or_shared(templates):
    policy = data_role_policy(templates, "inference")
    table = NAMES.tables["registry"]

    def batch(*pks: str) -> Request:
        (r,) = dynamodb_requests("BatchGetItem", {"RequestItems": {table: {"Keys": [
            {"pk": {"S": pk}, "sk": {"S": "M#m"}} for pk in pks]}}}, TABLE_ARNS)
        return r

    assert allowed(policy, batch("T#acme", "T#_shared"), {TENANT_TAG: "acme"})
    assert not allowed(policy, batch("T#acme", "T#globex"), {TENANT_TAG: "acme"})
    assert not allowed(policy, batch("T#acme"), {})               # no session tag: nothing


@pytest.mark.parametrize(("function", "action", "key", "ok"), [
    ("inference", "s3:GetObject", "models/acme/m/1/model.onnx", True),
    ("inference", "s3:GetObject", "models/_shared/m/1/model.onnx", True),
    ("inference", "s3:GetObject", "models/globex/m/1/model.onnx", False),
    ("inference", "s3:GetObject", "models/acme-corp/m/1/model.onnx", False),     # a prefix is not enough
    ("inference", "s3:PutObject", "models/acme/m/1/model.onnx", False),
    ("inference", "s3:PutObject", "feedback/tenant=acme/model=m/x.arrow", True),
    ("inference", "s3:PutObject", "feedback/tenant=globex/model=m/x.arrow", False),
    ("inference", "s3:GetObject", "async/results/tenant=globex/r.json", False),
    ("drift_worker", "s3:GetObject", "capture/tenant=acme/model=m/version=1/x.arrow", True),
    ("drift_worker", "s3:GetObject", "capture/tenant=globex/model=m/version=1/x.arrow", False),
    ("drift_worker", "s3:PutObject", "reports/tenant=globex/model=m/r.json", False),
    ("drift_worker", "s3:GetObject", "models/_shared/m/1/baseline.json", True),
])
def test_object_access_of_the_data_roles(templates, function, action, key, ok):
    request = Request(action, f"{ARNS['bucket']}/{key}")
    assert allowed(data_role_policy(templates, function), request, {TENANT_TAG: "acme"}) is ok


@pytest.mark.parametrize(("prefix", "ok"), [
    ("capture/tenant=acme/model=m/version=1/", True),
    ("capture/tenant=globex/model=m/", False),
    ("capture/", False),
    ("feedback/tenant=acme/model=m/", True),
    ("reports/tenant=globex/", False),
])
def test_the_drift_worker_lists_only_its_tenants_prefixes(templates, prefix, ok):
    request = Request("s3:ListBucket", ARNS["bucket"], {"s3:prefix": prefix})
    assert allowed(data_role_policy(templates, "drift_worker"), request, {TENANT_TAG: "acme"}) is ok


def test_a_drift_job_reads_only_its_tenants_capture_even_when_the_index_is_pointed_elsewhere(
        templates, account):
    """CaptureIndex with the drift worker's scoped client: the job's own tenant lists; another's is
    refused by the (evaluated) policy."""
    from tenantml.monitoring.jobs import CaptureIndex

    s3 = botocore_client("s3", AWS)
    for tenant in ("acme", "globex"):
        s3.put_object(Bucket=BUCKET, Key=f"capture/tenant={tenant}/model=m/version=1/x.arrow", Body=b"x")
    log = AccessLog()
    index = CaptureIndex(ScopedClient(evaluated_sessions(data_role_policy(templates, "drift_worker"), log),
                                      "s3"), BUCKET)
    with acting_for("acme"):
        assert list(index._prefixes("capture/tenant=acme/")) == ["capture/tenant=acme/model=m/"]
        with pytest.raises(ClientError):
            list(index._prefixes("capture/tenant=globex/"))


def test_a_scoped_client_outside_acting_for_fails_closed(account):
    sessions = TenantSessions("arn:aws:iam::123456789012:role/tenant-data", AWS)
    with pytest.raises(NoTenantContext):
        ScopedClient(sessions, "s3").get_object(Bucket=BUCKET, Key="models/acme/m/1/model.onnx")
    assert sessions.assumed == 0


def test_the_evaluator_fails_closed_on_what_it_does_not_implement():
    statement = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
                 "Condition": {"NumericLessThan": {"s3:max-keys": "10"}}}
    with pytest.raises(Unsupported):
        allowed([statement], Request("s3:GetObject", "arn:aws:s3:::b/k"), {})
    deny = {"Effect": "Deny", "Action": "s3:*", "Resource": "*"}
    allow = {"Effect": "Allow", "Action": "S3:GetObject", "Resource": "arn:aws:s3:::b/*"}
    assert allowed([allow], Request("s3:getobject", "arn:aws:s3:::b/k"), {})
    assert not allowed([allow, deny], Request("s3:GetObject", "arn:aws:s3:::b/k"), {})
    assert not allowed([allow], Request("s3:GetObject", "arn:aws:s3:::B/k"), {})     # resources: case
    assert not allowed([], Request("s3:GetObject", "arn:aws:s3:::b/k"), {})          # implicit deny


def test_model_not_found_is_still_the_answer_for_a_missing_model_with_scoped_clients(templates, account):
    _populate()
    sessions = evaluated_sessions(data_role_policy(templates, "inference"), AccessLog())
    registry = DynamoRegistry(NAMES.tables["registry"], AWS, client=ScopedClient(sessions, "dynamodb"))
    with acting_for("acme"), pytest.raises(ModelNotFound):
        registry.resolve("acme", "globex-risk")       # globex's model: the same answer as a missing one
