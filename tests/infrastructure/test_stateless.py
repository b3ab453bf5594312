"""Stateless stack: functions from the factory, least-privilege grants, the REST API built from
tenantml.resources.ROUTES, the stage, gateway responses, and the serving dashboard/alarms."""

from __future__ import annotations

import json
import re

import pytest
from infra_helpers import (
    actions,
    as_list,
    by_path,
    function_role,
    methods_by_route,
    refs,
    resources_of,
    role_statements,
)
from tenantml_cdk.application import STATELESS_STACK
from tenantml_cdk.constructs.api import access_log_format
from tenantml_cdk.constructs.functions import function_id

from tenantml import observability, resources

WRITE_ACTION = re.compile(
    r"^(dynamodb:(Put|Update|Delete|BatchWrite)|s3:(Put|Delete|Abort|Restore|Replicate))", re.IGNORECASE)
SERVICE_WILDCARD = re.compile(r"^[a-z0-9-]+:\*$")


@pytest.fixture(scope="module")
def stateless(synth) -> dict:
    return synth.templates[STATELESS_STACK]


def _id(name: str) -> str:
    return function_id(next(d for d in resources.FUNCTIONS if d.name == name))


def _fn(template: dict, name: str) -> dict:
    return template["Resources"][_id(name)]


# --- functions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("definition", resources.FUNCTIONS, ids=lambda d: d.name)
def test_function_from_the_factory(synth, stateless, definition):
    fn = stateless["Resources"][function_id(definition)]   # readable, stable id (sam local invoke)
    assert fn["Type"] == "AWS::Lambda::Function"
    props = fn["Properties"]
    assert props["Runtime"] == "python3.12"
    assert props["Handler"] == "handler.handler"
    assert props["Architectures"] == [synth.config.architecture]
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert props["MemorySize"] == synth.config.sizing(definition.name).memory_mb
    assert props["Timeout"] == synth.config.sizing(definition.name).timeout_seconds
    core, _ = by_path(stateless, "/Layers/CoreLayer/Resource")
    runtime, _ = by_path(stateless, "/Layers/RuntimeLayer/Resource")
    assert refs(props["Layers"]) == {core, runtime}
    assert fn["Metadata"]["aws:asset:path"], "SAM needs the code asset path"
    # Logs go to the function's own log group, which has a retention period.
    (log_group,) = refs(props["LoggingConfig"]["LogGroup"])
    assert stateless["Resources"][log_group]["Properties"]["RetentionInDays"] == \
        synth.config.log_retention_days


@pytest.mark.parametrize("definition", resources.FUNCTIONS, ids=lambda d: d.name)
def test_function_environment_is_exactly_what_its_settings_read(synth, stateless, definition):
    env = dict(stateless["Resources"][function_id(definition)]["Properties"]["Environment"]["Variables"])
    assert env.pop("POWERTOOLS_SERVICE_NAME") == observability.SERVICE
    assert env.pop("POWERTOOLS_METRICS_NAMESPACE") == observability.NAMESPACE
    declared = definition.variables
    assert set(env) <= set(declared)
    assert {k for k, required in declared.items() if required} <= set(env)
    if "TENANTML_TRACING" in declared:
        assert env["TENANTML_TRACING"] == ("true" if synth.config.sdk_tracing else "false")


@pytest.mark.parametrize("definition", resources.FUNCTIONS, ids=lambda d: d.name)
def test_the_template_and_local_mode_give_each_function_the_same_variables(stateless, definition, tmp_path):
    """One environment contract: what the deployed function gets equals what local mode (and the
    integration tests) give it, but for the declared deployment differences."""
    from tenantml.auth.devkeys import ensure_dev_keys
    from tenantml.local import platform
    from tenantml.settings import AwsSettings

    deployed = set(stateless["Resources"][function_id(definition)]["Properties"]["Environment"]["Variables"])
    aws = AwsSettings(region="us-east-1", endpoint_url="http://127.0.0.1:5005")
    local = set(platform.function_environment(resources.LocalNames.make(), aws,
                                              ensure_dev_keys(tmp_path / "keys"))[definition.name])
    assert deployed - resources.AWS_ONLY_VARIABLES == local - resources.LOCAL_ONLY_VARIABLES


def test_authorizer_settings_come_from_context(synth, stateless):
    env = _fn(stateless, "authorizer")["Properties"]["Environment"]["Variables"]
    cfg = synth.config
    assert env == {**env, "TENANTML_JWKS_URL": cfg.jwks_url, "TENANTML_ISSUER": cfg.issuer,
                   "TENANTML_AUDIENCE": cfg.audience, "TENANTML_TENANT_CLAIM": cfg.tenant_claim}


def test_snapstart_is_off_by_default(stateless):
    assert "SnapStart" not in _fn(stateless, "inference")["Properties"]
    assert not resources_of(stateless, "AWS::Lambda::Alias")


# --- least privilege -------------------------------------------------------------------------------


def _statements(stateless: dict, name: str) -> list[dict]:
    return role_statements(stateless, function_role(stateless, _id(name)))


def test_no_statement_grants_a_service_wide_or_global_action(stateless):
    for role in resources_of(stateless, "AWS::IAM::Role"):
        for statement in role_statements(stateless, role):
            for action in as_list(statement["Action"]):
                assert action != "*" and not SERVICE_WILDCARD.match(action), (role, action)


def test_resource_star_is_only_ever_xray_and_stream_listing(stateless):
    """X-Ray's two actions support no resource-level permissions; nor does dynamodb:ListStreams, which a
    stream event source mapping's role needs (and only such a function holds it)."""
    for d in resources.FUNCTIONS:
        allowed = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
        if d.triggers_of("stream"):
            allowed.add("dynamodb:ListStreams")
        for statement in _statements(stateless, d.name):
            if "*" in as_list(statement["Resource"]):
                assert set(as_list(statement["Action"])) <= allowed, statement


def test_authorizer_has_no_data_access(stateless):
    granted = actions(_statements(stateless, "authorizer"))
    assert granted == {"logs:CreateLogStream", "logs:PutLogEvents", "xray:PutTraceSegments",
                       "xray:PutTelemetryRecords"}


def _writes(stateless: dict, name: str) -> list[dict]:
    return [s for s in _statements(stateless, name)
            if any(WRITE_ACTION.match(a) for a in as_list(s["Action"]))]


def _on_tables(statement: dict, *tables: str) -> bool:
    return all(any(f"Tables{t}" in json.dumps(r) for t in tables) for r in as_list(statement["Resource"]))


def test_inference_reaches_registry_artifacts_feedback_and_requests_only_as_a_tenant(stateless):
    """Its own role names neither the registry table, the models, feedback nor the requests table: those
    are its tenant data role's (test_least_privilege), assumed per tenant. It writes capture frames,
    signal counters and Idempotency-Key records, and sends dispatch jobs."""
    own = json.dumps(_statements(stateless, "inference"))
    for name in ("TablesRegistry", "TablesRequests", "/models/", "/feedback/", "/async/"):
        assert name not in own, name
    writes = _writes(stateless, "inference")
    put_actions = {"s3:PutObject", "s3:PutObjectLegalHold", "s3:PutObjectRetention", "s3:PutObjectTagging",
                   "s3:PutObjectVersionTagging", "s3:Abort*"}
    s3_writes = [s for s in writes if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    assert {a for s in s3_writes for a in as_list(s["Action"])} <= put_actions
    for statement in s3_writes:
        for resource in as_list(statement["Resource"]):
            assert resource["Fn::Join"][1][-1] == "/capture/*", resource
    assert [s for s in writes if _is_signal_counter(s)]         # and adds to the rollout signal counters
    dynamo_writes = [s for s in writes if any(a.startswith("dynamodb:") for a in as_list(s["Action"]))]
    for statement in dynamo_writes:
        assert _is_signal_counter(statement) or _on_tables(statement, "Idempotency"), statement


def _is_signal_counter(statement: dict) -> bool:
    """UpdateItem alone, on the signals table (tenantml.rollout.signals: ADD to counters) and the
    throttle table (tenantml.serving.throttle: ADD leased tokens) only; CDK merges the two statements."""
    return as_list(statement["Action"]) == ["dynamodb:UpdateItem"] \
        and _on_tables(statement, "Signals", "Throttle")


def _is_signal_write(statement: dict) -> bool:
    """Counters (UpdateItem ADD, inference) or a window's accuracy (PutItem, drift_worker), on the signals
    table only (tenantml.rollout.signals)."""
    return set(as_list(statement["Action"])) <= {"dynamodb:UpdateItem", "dynamodb:PutItem"} and all(
        "TablesSignals" in json.dumps(r) for r in as_list(statement["Resource"]))


def test_only_the_registry_and_rollback_functions_write_the_registry(stateless):
    granted = actions(_statements(stateless, "registry"))
    # Transactions of Puts and ConditionChecks (and the Delete of an ending rollout's marker); no Update.
    assert {"dynamodb:PutItem", "dynamodb:ConditionCheckItem", "dynamodb:DeleteItem",
            "s3:PutObject"} <= granted
    assert not granted & {"dynamodb:UpdateItem", "dynamodb:BatchWriteItem", "dynamodb:Scan"}
    for name in ("inference", "drift_worker"):
        dynamo_writes = [s for s in _writes(stateless, name)
                         if any(a.startswith("dynamodb:") for a in as_list(s["Action"]))]
        assert dynamo_writes and all(_is_signal_write(s) or _is_signal_counter(s)
                                     or _on_tables(s, "Requests", "Idempotency") for s in dynamo_writes), name
    for name in ("authorizer", "publisher", "drift_scheduler", "gpu_dispatch", "gpu_result"):
        assert not [s for s in _writes(stateless, name) if "TablesRegistry" in json.dumps(s["Resource"])]
    assert not _writes(stateless, "authorizer")


# Which prefixes of the artifact bucket each function may read or write objects under.
OBJECT_PREFIXES = {
    # capture and ground truth for drift checks; async (GPU) payloads in, answers out
    # (the tenant-partitioned prefixes are reached through the tenant data roles: test_least_privilege)
    "inference": {"/capture/*"},
    "gpu_result": {"/async/output/*", "/async/failures/*", "/async/results/*"},   # SageMaker's -> tenant's
    "registry": {"/models/*", "/reports/*"},       # reports: GET /admin/models/{model}/drift
}


@pytest.mark.parametrize("name", sorted(OBJECT_PREFIXES))
def test_object_access_is_scoped_to_its_prefixes(stateless, name):
    object_statements = [s for s in _statements(stateless, name)
                         if any(a.startswith(("s3:GetObject", "s3:PutObject")) for a in as_list(s["Action"]))]
    assert object_statements
    seen = set()
    for statement in object_statements:
        for resource in as_list(statement["Resource"]):
            if isinstance(resource, dict) and "Fn::Join" in resource:
                seen.add(resource["Fn::Join"][1][-1])
    assert seen == OBJECT_PREFIXES[name]


def test_the_drift_scheduler_only_lists_capture_keys(stateless):
    """It plans jobs from the capture partitions' names: ListBucket under capture/, no object reads."""
    s3 = [s for s in _statements(stateless, "drift_scheduler") if "s3:" in json.dumps(s["Action"])]
    (listing,) = s3
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["capture/*"]}}


def test_no_role_lists_the_bucket_unconditioned_but_the_registry(stateless):
    """Listing is scoped by s3:prefix; the registry's exception: S3 answers NoSuchKey (not AccessDenied) for
    a missing artifact only to a caller with ListBucket on the bucket, which it checks without a prefix."""
    for d in resources.FUNCTIONS:
        for statement in _statements(stateless, d.name):
            if "s3:ListBucket" in as_list(statement["Action"]) and "Condition" not in statement:
                assert d.name == "registry", statement


# --- REST API ----------------------------------------------------------------------------------------


def test_authorizer_reads_the_authorization_header_and_caches_deliberately(synth):
    synth.template(STATELESS_STACK).has_resource_properties("AWS::ApiGateway::Authorizer", {
        "Type": "REQUEST",
        "IdentitySource": "method.request.header.Authorization",
        "AuthorizerResultTtlInSeconds": synth.config.authorizer_cache_ttl_seconds,
    })
    (authorizer,) = resources_of(synth.templates[STATELESS_STACK], "AWS::ApiGateway::Authorizer").values()
    assert _id("authorizer") in refs(authorizer["Properties"]["AuthorizerUri"])


def test_every_route_exists_with_the_right_authorization_and_function(stateless):
    methods = methods_by_route(stateless)
    assert set(methods) == {(r.method, r.path) for r in resources.ROUTES}, "API and ROUTES differ"
    (authorizer_id,) = resources_of(stateless, "AWS::ApiGateway::Authorizer")
    for route in resources.ROUTES:
        props = methods[(route.method, route.path)]
        if route.auth:
            assert props["AuthorizationType"] == "CUSTOM"
            assert refs(props["AuthorizerId"]) == {authorizer_id}
        else:
            assert props["AuthorizationType"] == "NONE" and "AuthorizerId" not in props
        assert props["Integration"]["Type"] == "AWS_PROXY"
        assert _id(route.function) in refs(props["Integration"]["Uri"]), route


def test_bodies_pass_intact_to_the_functions_and_responses_are_compressed(stateless):
    """Binary tensor data and compressed bodies must reach the function untouched (no JSON-schema body
    model: it would refuse them); path parameters are still validated at the gateway."""
    (api,) = resources_of(stateless, "AWS::ApiGateway::RestApi").values()
    assert api["Properties"]["BinaryMediaTypes"] == ["*/*"]
    assert api["Properties"]["MinimumCompressionSize"] == 1024
    (validator,) = resources_of(stateless, "AWS::ApiGateway::RequestValidator").values()
    assert validator["Properties"]["ValidateRequestBody"] is False
    assert validator["Properties"]["ValidateRequestParameters"] is True
    for props in methods_by_route(stateless).values():
        assert "RequestModels" not in props


def test_stage_is_throttled_traced_and_access_logged(synth, stateless):
    (stage,) = resources_of(stateless, "AWS::ApiGateway::Stage").values()
    props = stage["Properties"]
    cfg = synth.config
    assert props["StageName"] == cfg.stage
    assert props["TracingEnabled"] is True
    settings = {(s["HttpMethod"], s["ResourcePath"]): s for s in props["MethodSettings"]}["*", "/*"]
    assert settings["ThrottlingRateLimit"] == cfg.throttling_rate_limit
    assert settings["ThrottlingBurstLimit"] == cfg.throttling_burst_limit
    assert settings["MetricsEnabled"] is True and settings["DataTraceEnabled"] is False
    (log_group,) = refs(props["AccessLogSetting"]["DestinationArn"])
    assert stateless["Resources"][log_group]["Type"] == "AWS::Logs::LogGroup"
    fields = json.loads(props["AccessLogSetting"]["Format"])
    for key in ("requestId", "ip", "caller", "user", "requestTime", "httpMethod", "resourcePath", "status",
                "protocol", "responseLength", "authorizerError", "tenant"):
        assert key in fields, key
    assert fields["user"] == "$context.authorizer.principalId"


def test_gateway_errors_have_the_api_error_shape(stateless):
    responses = {r["Properties"]["ResponseType"]: r["Properties"]
                 for r in resources_of(stateless, "AWS::ApiGateway::GatewayResponse").values()}
    assert {"DEFAULT_4XX", "DEFAULT_5XX", "UNAUTHORIZED"} <= set(responses)
    unknown_route = responses.pop("MISSING_AUTHENTICATION_TOKEN")
    assert unknown_route["StatusCode"] == "404"
    assert json.loads(unknown_route["ResponseTemplates"]["application/json"]) == {"error": "route not found"}
    for props in responses.values():
        template = props["ResponseTemplates"]["application/json"]
        # API Gateway substitutes messageString as a quoted JSON string.
        rendered = template.replace("$context.error.messageString", json.dumps('He said "no"'))
        assert json.loads(rendered) == {"error": 'He said "no"'}


# --- dashboard and alarms ------------------------------------------------------------------------------


def test_dashboard_and_alarms_exist_and_notify_an_encrypted_topic(synth, stateless):
    (topic_id, topic), = resources_of(stateless, "AWS::SNS::Topic").items()
    assert refs(topic["Properties"]["KmsMasterKeyId"])
    assert resources_of(stateless, "AWS::CloudWatch::Dashboard")
    alarms = resources_of(stateless, "AWS::CloudWatch::Alarm")
    assert len(alarms) >= 6
    for alarm in alarms.values():
        assert refs(alarm["Properties"]["AlarmActions"]) == {topic_id}


def _alarm_text(stateless: dict) -> list[str]:
    return [json.dumps(a["Properties"]) for a in resources_of(stateless, "AWS::CloudWatch::Alarm").values()]


@pytest.mark.parametrize(("signal", "needles"), [
    ("API 5XX rate", ["5XXError", "Count", "100 * errors / requests"]),
    ("API p99 latency", ['"Latency"', '"p99"']),
    ("inference p95 duration", ['"Duration"', '"p95"', "InferenceFunction"]),
    ("authorizer denies", ["AuthorizerDenied"]),
    ("throttles", ['"Throttles"', "ApiThrottled"]),
    ("model-load failures", ["SELECT SUM(ModelLoadFailure) FROM tenantml"]),
    ("capture failures", ["SELECT SUM(CaptureFailures) FROM tenantml"]),
    ("drift job errors", ['"Errors"', "DriftSchedulerFunction", "DriftWorkerFunction"]),
])
def test_serving_signal_has_an_alarm(stateless, signal, needles):
    assert any(all(n in text for n in needles) for text in _alarm_text(stateless)), signal


def test_metric_filters_read_fields_the_access_log_writes(stateless):
    fields = json.loads(access_log_format().to_string())
    filters = resources_of(stateless, "AWS::Logs::MetricFilter").values()
    assert filters
    for f in filters:
        props = f["Properties"]
        used = set(re.findall(r"\$\.(\w+)", props["FilterPattern"]))
        used |= {d["Value"][2:] for t in props["MetricTransformations"] for d in t.get("Dimensions", [])}
        assert used and used <= set(fields), used - set(fields)


@pytest.mark.parametrize("name", ["registry", "rollback"])
def test_the_audit_log_is_append_only_for_every_registry_writer(stateless, name):
    denies = [s for s in _statements(stateless, name) if s["Effect"] == "Deny"]
    (deny,) = denies
    assert set(as_list(deny["Action"])) == {"dynamodb:UpdateItem", "dynamodb:DeleteItem",
                                            "dynamodb:BatchWriteItem"}
    assert deny["Condition"] == {"ForAnyValue:StringLike": {"dynamodb:LeadingKeys": ["T#*#AUDIT"]}}
    assert "TablesRegistry" in json.dumps(deny["Resource"])


def test_gpu_dispatch_reads_and_moves_request_items_and_requeues_only(stateless):
    """Request items are moved as the job's tenant (its tenant data role: test_least_privilege); its own
    role re-queues, assumes that role, and holds nothing on the requests table or in S3."""
    statements = _statements(stateless, "gpu_dispatch")
    granted = actions(statements)
    assert not any(a.startswith("s3:") for a in granted)       # SageMaker reads the payload, not dispatch
    assert not [s for s in statements if _on_tables(s, "Requests")]
    assert {"sts:AssumeRole", "sts:TagSession"} <= granted
    assert "sqs:SendMessage" in granted                          # re-queue a deferred job
    assert "sagemaker:InvokeEndpointAsync" not in granted        # no endpoint in this synth (no GPU context)
