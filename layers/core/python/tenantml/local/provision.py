"""Create the platform's stateful resources with boto3 from the same definitions the CDK app uses
(`tenantml.resources`): tables (with their streams), the bucket, the event bus, every declared queue with
its dead-letter queue and every function's failure queue. Used by local mode (moto server) and the
integration tests (moto in-process). Also each function's environment in those places
(`local_environment`), computed by the one function the CDK app uses (`resources.function_environment`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from tenantml import resources
from tenantml.aws import client
from tenantml.settings import AwsSettings, variable

TENANT_ROLE_VARIABLE = variable("tenant_role_arn")


def table_create_args(table: resources.TableDef, name: str) -> dict[str, Any]:
    keys = [{"AttributeName": table.partition_key.name, "KeyType": "HASH"}]
    attrs = [{"AttributeName": table.partition_key.name, "AttributeType": table.partition_key.type}]
    if table.sort_key:
        keys.append({"AttributeName": table.sort_key.name, "KeyType": "RANGE"})
        attrs.append({"AttributeName": table.sort_key.name, "AttributeType": table.sort_key.type})
    args: dict[str, Any] = {"TableName": name, "KeySchema": keys, "AttributeDefinitions": attrs,
                            "BillingMode": "PAY_PER_REQUEST"}
    if table.stream:
        args["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": table.stream}
    return args


def queue_attributes(queue: resources.QueueDef, consumer_timeout_s: int, dlq_arn: str) -> dict[str, str]:
    """The attributes the CDK app gives the queue: visibility VISIBILITY_FACTOR x the consumer's timeout,
    redrive to its DLQ after max_receive_count receives."""
    return {"VisibilityTimeout": str(resources.VISIBILITY_FACTOR * consumer_timeout_s),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                         "maxReceiveCount": queue.max_receive_count})}


def consumer_timeouts(functions: Sequence[resources.FunctionDef]) -> dict[str, int]:
    return {t.queue: fn.timeout_s for fn in functions for t in fn.triggers_of("sqs")}


def create_queues(aws: AwsSettings, prefix: str, queues: Sequence[resources.QueueDef],
                  functions: Sequence[resources.FunctionDef]) -> dict[str, str]:
    """Create each queue with its DLQ, and each function's failure queue; returns queue id -> URL
    (DLQs under "<id>-dlq")."""
    sqs = client("sqs", aws)
    # the declared consumers' timeouts, so a queue is created alike whichever functions are passed
    timeouts = {**consumer_timeouts(resources.FUNCTIONS), **consumer_timeouts(functions)}
    urls: dict[str, str] = {}
    for queue in (*queues, *resources.failure_queues(functions)):
        dlq_url = sqs.create_queue(QueueName=queue.dlq_local_name(prefix),
                                   Attributes={"MessageRetentionPeriod": str(14 * 86400)})["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url,
                                           AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        urls[f"{queue.id}-dlq"] = dlq_url
        if queue.id.endswith("-failures"):   # a failure queue is itself the end of the line
            urls[queue.id] = dlq_url
            continue
        urls[queue.id] = sqs.create_queue(
            QueueName=queue.local_name(prefix),
            Attributes=queue_attributes(queue, timeouts.get(queue.id, 60), dlq_arn))["QueueUrl"]
    return urls


def create_resources(aws: AwsSettings, names: resources.LocalNames) -> None:
    """Idempotently create every table, bucket, queue and the event bus named in `names`."""
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
    events = client("events", aws)
    if names.event_bus not in {b["Name"] for b in events.list_event_buses().get("EventBuses", [])}:
        events.create_event_bus(Name=names.event_bus)
    create_queues(aws, names.prefix, resources.QUEUES, resources.FUNCTIONS)


def process_env(aws: AwsSettings) -> dict[str, str]:
    """What Lambda gives every function's process (the region), set once for the local process."""
    return {"AWS_REGION": aws.region, "AWS_DEFAULT_REGION": aws.region}


# Local mode runs the monitoring loop faster than a deployment, so a developer sees a drift report minutes
# after sending traffic: capture frames are written after 10 s, and drift checks cover 5-minute windows
# (the drift schedule fires every 5 minutes locally, resources.ScheduleTrigger.local_expression).
# Rollouts: signals written every 2 s and a rollout's change seen within 1 s, so a rollback shows within
# one run of the controller's schedule (every minute, as deployed).
LOCAL_PACE = {"TENANTML_CAPTURE_MAX_SECONDS": "10", "TENANTML_DRIFT_WINDOW_MINUTES": "5",
              "TENANTML_SIGNALS_FLUSH_SECONDS": "2", "TENANTML_ROLLOUT_CACHE_TTL_SECONDS": "1"}


def platform_values(names: resources.LocalNames, aws: AwsSettings,
                    auth: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every TENANTML_* value local mode provides (the CDK app provides the same keys, less the
    resources.LOCAL_ONLY_VARIABLES and plus the AWS_ONLY ones). `auth`: the authorizer's JWKS/issuer/
    audience (the dev keys' auth_env)."""
    values = {**names.platform_values(), "TENANTML_REGION": aws.region, "TENANTML_TRACING": "false",
              "TENANTML_TENANT_CLAIM": "tenant_id", **LOCAL_PACE,
              # the CDK app's default per-tenant limit (tenant_rate_limit), so local mode throttles alike
              "TENANTML_TENANT_RATE_LIMIT": "50", **(auth or {})}
    if aws.endpoint_url:
        values["TENANTML_ENDPOINT_URL"] = aws.endpoint_url
    return values


def local_environment(fn: resources.FunctionDef, names: resources.LocalNames, aws: AwsSettings,
                      auth: Mapping[str, str] | None = None) -> dict[str, str]:
    """Exactly the variables `fn` receives in local mode and in the integration tests. A function that acts
    for tenants gets its tenant data role (tenantml.tenancy): moto's STS answers AssumeRole for it, and
    its policies are proven in tests (tests/integration/test_tenant_boundary.py), as moto does not
    evaluate session tags."""
    values = platform_values(names, aws, auth)
    if TENANT_ROLE_VARIABLE in fn.variables:
        values[TENANT_ROLE_VARIABLE] = names.tenant_role_arn(fn.name)
    return resources.function_environment(fn, values)
