"""Stateful stack: the artifact bucket and the tables, asserted against tenantml.resources (the definitions
local mode also provisions from), so AWS and the laptop cannot drift."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Match
from infra_helpers import by_path, refs, resources_of
from tenantml_cdk.application import STATEFUL_STACK

from tenantml import resources
from tenantml.local.provision import table_create_args


@pytest.fixture(scope="module")
def stateful(synth) -> dict:
    return synth.templates[STATEFUL_STACK]


def _pascal(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("_"))


def test_artifact_bucket_is_encrypted_versioned_private_logged_and_retained(synth, stateful):
    bucket_id, bucket = by_path(stateful, "/Artifacts/Bucket/Resource")
    logs_id, _ = by_path(stateful, "/Artifacts/AccessLogs/Resource")
    props = bucket["Properties"]
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert props["VersioningConfiguration"] == {
        "Status": "Enabled" if resources.ARTIFACT_BUCKET.versioned else "Suspended"}
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True}
    assert refs(props["LoggingConfiguration"]["DestinationBucketName"]) == {logs_id}
    assert bucket["DeletionPolicy"] == "Retain" and bucket["UpdateReplacePolicy"] == "Retain"


def test_async_request_objects_expire_with_their_requests(stateful):
    """Payloads, SageMaker's answers and the tenant copies under async/ live as long as the request can
    be polled (the requests table's TTL: TENANTML_ASYNC_RETENTION_DAYS' default), not forever."""
    from tenantml.settings import AsyncSettings

    _, bucket = by_path(stateful, "/Artifacts/Bucket/Resource")
    rules = {r["Id"]: r for r in bucket["Properties"]["LifecycleConfiguration"]["Rules"]}
    rule = rules["expire-async-requests"]
    assert rule["Prefix"] == "async/" and rule["Status"] == "Enabled"
    assert rule["ExpirationInDays"] == AsyncSettings.model_fields["async_retention_days"].default
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 1


@pytest.mark.parametrize("bucket_path", ["/Artifacts/Bucket/Resource", "/Artifacts/AccessLogs/Resource"])
def test_every_bucket_denies_plain_http(synth, stateful, bucket_path):
    bucket_id, _ = by_path(stateful, bucket_path)
    policies = [p for p in resources_of(stateful, "AWS::S3::BucketPolicy").values()
                if refs(p["Properties"]["Bucket"]) == {bucket_id}]
    assert len(policies) == 1
    synth.template(STATEFUL_STACK).has_resource_properties("AWS::S3::BucketPolicy", {
        "Bucket": {"Ref": bucket_id},
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Effect": "Deny", "Action": "s3:*", "Principal": {"AWS": "*"},
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        })])},
    })


@pytest.mark.parametrize("definition", resources.TABLES, ids=lambda t: t.id)
def test_table_matches_its_definition_and_local_mode(stateful, definition):
    _, table = by_path(stateful, f"/Tables/{_pascal(definition.id)}/Resource")
    props = table["Properties"]
    # The same key schema local mode creates on moto (tenantml.local.provision), from the same def.
    local = table_create_args(definition, definition.local_name("test"))
    assert props["KeySchema"] == local["KeySchema"]
    assert sorted(props["AttributeDefinitions"], key=lambda a: a["AttributeName"]) == sorted(
        local["AttributeDefinitions"], key=lambda a: a["AttributeName"])
    assert props["BillingMode"] == "PAY_PER_REQUEST" == local["BillingMode"]
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is \
        definition.point_in_time_recovery
    if definition.ttl_attribute:
        assert props["TimeToLiveSpecification"] == {"AttributeName": definition.ttl_attribute,
                                                     "Enabled": True}
    else:
        assert "TimeToLiveSpecification" not in props
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert table["DeletionPolicy"] == "Retain"


def test_one_table_per_definition_and_the_event_bus(synth, stateful):
    assert len(resources_of(stateful, "AWS::DynamoDB::Table")) == len(resources.TABLES)
    synth.template(STATEFUL_STACK).has_resource_properties(
        "AWS::Events::EventBus", {"Name": resources.EVENT_BUS_NAME})
