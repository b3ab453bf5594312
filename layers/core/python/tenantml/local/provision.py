"""Create the platform's stateful resources with boto3 from the same definitions the CDK app uses
(`tenantml.resources`). Used by local mode (moto server) and the integration tests (moto in-process)."""

from __future__ import annotations

from typing import Any

from tenantml import resources
from tenantml.aws import client
from tenantml.settings import AwsSettings


def table_create_args(table: resources.TableDef, name: str) -> dict[str, Any]:
    keys = [{"AttributeName": table.partition_key.name, "KeyType": "HASH"}]
    attrs = [{"AttributeName": table.partition_key.name, "AttributeType": table.partition_key.type}]
    if table.sort_key:
        keys.append({"AttributeName": table.sort_key.name, "KeyType": "RANGE"})
        attrs.append({"AttributeName": table.sort_key.name, "AttributeType": table.sort_key.type})
    return {"TableName": name, "KeySchema": keys, "AttributeDefinitions": attrs,
            "BillingMode": "PAY_PER_REQUEST"}


def create_resources(aws: AwsSettings, names: resources.LocalNames) -> None:
    """Idempotently create every table and bucket named in `names`."""
    ddb = client("dynamodb", aws)
    existing = set(ddb.list_tables().get("TableNames", []))
    for table in resources.TABLES:
        name = names.tables[table.id]
        if name not in existing:
            ddb.create_table(**table_create_args(table, name))
            ddb.get_waiter("table_exists").wait(TableName=name)
        if table.ttl_attribute:
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={
                "Enabled": True, "AttributeName": table.ttl_attribute})
    s3 = client("s3", aws)
    have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in resources.BUCKETS:
        name = names.buckets[bucket.id]
        if name not in have:
            if aws.region == "us-east-1":
                s3.create_bucket(Bucket=name)
            else:
                s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": aws.region})
        if bucket.versioned:
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})


def function_env(names: resources.LocalNames, aws: AwsSettings) -> dict[str, str]:
    """Environment for the functions in local mode / tests (the CDK app sets the same keys)."""
    env = {
        "TENANTML_ARTIFACT_BUCKET": names.buckets[resources.ARTIFACT_BUCKET.id],
        "TENANTML_REGISTRY_TABLE": names.tables[resources.REGISTRY_TABLE.id],
        "TENANTML_REGION": aws.region,
        "AWS_REGION": aws.region,
        "AWS_DEFAULT_REGION": aws.region,
    }
    if aws.endpoint_url:
        env["TENANTML_ENDPOINT_URL"] = aws.endpoint_url
    return env
