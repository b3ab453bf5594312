"""The scale-to-zero SageMaker asynchronous inference endpoint (constructs/gpu_endpoint.py).

The session synth (conftest.py) has no GPU context and must hold no endpoint. This module synthesizes the
real app once more (build_app, as `cdk synth -c gpu_image_uri=... -c gpu_model_data_url=...` runs it) with
cdk-nag on and non-default GPU values, sharing the runtime-layer bundle cache, and asserts the endpoint,
its autoscaling (AWS's documented pattern: MinCapacity 0, target tracking on
ApproximateBacklogSizePerInstance, a step policy on a HasBacklogWithoutCapacity alarm), its execution role,
nag and cfn-lint."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from aws_cdk.assertions import Template
from cfnlint.api import ManualArgs, lint_file
from infra_helpers import CLI_CONTEXT, as_list, bundle_cache, cdk_json_context, refs, resources_of
from pytest_socket import disable_socket, enable_socket
from tenantml_cdk.application import STATEFUL_STACK, STATELESS_STACK, build_app
from tenantml_cdk.config import load_config
from tenantml_cdk.constructs.gpu_endpoint import (
    FAILURE_PREFIX,
    INPUT_PREFIX,
    OUTPUT_PREFIX,
    GpuEndpoint,
    GpuNotifications,
    endpoint_name_for,
)
from tenantml_cdk.nag import MIN_REASON_CHARS
from test_nag_and_lint import CFN_LINT_IGNORED, LINT_REGIONS, _acknowledgments, _failed

IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/tenantml/mpnet-gpu:2024.1"
MODEL_BUCKET = "tenantml-models-example"
MODEL_KEY = "models/_shared/mpnet/1/model.tar.gz"
GPU_CONTEXT = {"gpu_image_uri": IMAGE, "gpu_model_data_url": f"s3://{MODEL_BUCKET}/{MODEL_KEY}",
               # Not the defaults, so each assertion shows the value comes from context.
               "gpu_max_instances": "3", "gpu_max_concurrent_invocations": "8",
               "gpu_backlog_per_instance_target": "2.5"}
CONTEXT = {**cdk_json_context(), **CLI_CONTEXT, **GPU_CONTEXT}
SAGEMAKER = "AWS/SageMaker"


@dataclass(frozen=True)
class GpuSynth:
    config: object
    outdir: Path
    template: dict       # the stateless stack
    stateful: dict       # the stateful stack (the notification topics and their subscriptions)
    endpoint: str        # logical ids
    endpoint_config: str
    role: str


@pytest.fixture(scope="module")
def gpu(tmp_path_factory: pytest.TempPathFactory) -> GpuSynth:
    outdir = tmp_path_factory.mktemp("cdk.out-gpu")
    started = time.perf_counter()
    built = build_app(context=CONTEXT, outdir=str(outdir), nag=True, bundle_cache=bundle_cache())
    disable_socket(allow_unix_socket=True)   # hermetic, as the session synth: no Docker, no AWS
    try:
        built.app.synth()
    finally:
        enable_socket()
    print(f"\n[infrastructure] synthesized with GPU context in {time.perf_counter() - started:.1f} s")
    assert built.stateless.gpu is not None
    template = json.loads((outdir / f"{STATELESS_STACK}.template.json").read_text())
    (endpoint,) = resources_of(template, "AWS::SageMaker::Endpoint")
    (endpoint_config,) = resources_of(template, "AWS::SageMaker::EndpointConfig")
    (model,) = resources_of(template, "AWS::SageMaker::Model").values()
    (role,) = refs(model["Properties"]["ExecutionRoleArn"])
    stateful = json.loads((outdir / f"{STATEFUL_STACK}.template.json").read_text())
    return GpuSynth(config=built.config, outdir=outdir, template=template, stateful=stateful,
                    endpoint=endpoint, endpoint_config=endpoint_config, role=role)


def _props(gpu: GpuSynth, logical_id: str) -> dict:
    return gpu.template["Resources"][logical_id]["Properties"]


def _is_endpoint_name(gpu: GpuSynth, value: object) -> bool:
    return value == {"Fn::GetAtt": [gpu.endpoint, "EndpointName"]}


def _dimensions(props: dict) -> dict:
    return {d["Name"]: d["Value"] for d in props["Dimensions"]}


# --- off by default --------------------------------------------------------------------------------


def test_without_gpu_context_nothing_billable_is_created(synth):
    assert not synth.config.gpu_enabled and synth.built.stateless.gpu is None
    for template in synth.templates.values():
        kinds = {r["Type"] for r in template["Resources"].values()}
        assert not {k for k in kinds if k.startswith("AWS::SageMaker::")}, kinds
        assert "AWS::ApplicationAutoScaling::ScalableTarget" not in kinds
    assert "GpuEndpointName" not in synth.templates[STATELESS_STACK].get("Outputs", {})


# --- model, endpoint configuration, endpoint -----------------------------------------------------------


def test_model_runs_the_given_image_and_model_data_isolated(gpu):
    (model,) = resources_of(gpu.template, "AWS::SageMaker::Model").values()
    props = model["Properties"]
    assert props["PrimaryContainer"] == {"Image": IMAGE, "ModelDataUrl": f"s3://{MODEL_BUCKET}/{MODEL_KEY}",
                                         "Mode": "SingleModel"}
    assert props["EnableNetworkIsolation"] is True


def test_one_gpu_variant_that_starts_with_one_instance(gpu):
    (variant,) = _props(gpu, gpu.endpoint_config)["ProductionVariants"]
    assert variant["VariantName"] == "AllTraffic"
    assert variant["InstanceType"] == gpu.config.gpu_instance_type == "ml.g5.xlarge"
    # Creating an endpoint needs >= 1 instance; autoscaling (MinCapacity 0) scales it in to zero.
    assert variant["InitialInstanceCount"] == 1
    (model,) = resources_of(gpu.template, "AWS::SageMaker::Model")
    assert refs(variant["ModelName"]) == {model}


def test_async_inference_config_writes_to_the_bucket_and_notifies_two_encrypted_topics(gpu):
    config = _props(gpu, gpu.endpoint_config)["AsyncInferenceConfig"]
    assert config["ClientConfig"] == {"MaxConcurrentInvocationsPerInstance": 8}
    output = config["OutputConfig"]
    for key, prefix in (("S3OutputPath", OUTPUT_PREFIX), ("S3FailurePath", FAILURE_PREFIX)):
        parts = output[key]["Fn::Join"][1]
        assert parts[0] == "s3://" and parts[-1] == f"/{prefix}", output[key]
        (imported,) = [p for p in parts if isinstance(p, dict)]
        assert "Fn::ImportValue" in imported      # the stateful stack's artifact bucket name
    topics = output["NotificationConfig"]
    # the topics live in the stateful stack (imported here), each subscribed by the gpu-results queue
    success, error = (topics["SuccessTopic"], topics["ErrorTopic"])
    assert "Fn::ImportValue" in success and "Fn::ImportValue" in error and success != error
    stateful_topics = resources_of(gpu.stateful, "AWS::SNS::Topic")
    notification_topics = {t for t, r in stateful_topics.items()
                           if "GPU inference" in r["Properties"].get("DisplayName", "")}
    assert len(notification_topics) == 2
    queues = resources_of(gpu.stateful, "AWS::SQS::Queue")
    (results_queue,) = [q for q in queues if q.startswith("QueuesGpuResults") and "Dlq" not in q]
    subscriptions = resources_of(gpu.stateful, "AWS::SNS::Subscription").values()
    subscribed = {next(iter(refs(s["Properties"]["TopicArn"]))) for s in subscriptions
                  if s["Properties"]["Protocol"] == "sqs"
                  and refs(s["Properties"]["Endpoint"]) == {results_queue}}
    assert subscribed == notification_topics
    for topic in notification_topics:
        assert refs(stateful_topics[topic]["Properties"]["KmsMasterKeyId"]), "SSE with a KMS key"


def test_endpoint_name_is_exported(gpu):
    props = _props(gpu, gpu.endpoint)
    assert props["EndpointName"] == endpoint_name_for(gpu.config.stage) == "tenantml-v1-gpu"
    assert refs(props["EndpointConfigName"]) == {gpu.endpoint_config}
    assert _is_endpoint_name(gpu, gpu.template["Outputs"]["GpuEndpointName"]["Value"])


def test_endpoint_names_are_valid_for_any_stage():
    for stage in ("v1", "prod_eu", "x" * 64):
        name = endpoint_name_for(stage)
        assert len(name) <= 63 and all(c.isalnum() or c == "-" for c in name), name


# --- autoscaling ----------------------------------------------------------------------------------


def _scalable_target(gpu: GpuSynth) -> tuple[str, dict]:
    ((target_id, target),) = resources_of(gpu.template, "AWS::ApplicationAutoScaling::ScalableTarget").items()
    return target_id, target["Properties"]


def _policies(gpu: GpuSynth, policy_type: str) -> dict[str, dict]:
    return {k: v["Properties"] for k, v in resources_of(gpu.template,
                                                        "AWS::ApplicationAutoScaling::ScalingPolicy").items()
            if v["Properties"]["PolicyType"] == policy_type}


def test_the_variant_scales_between_zero_and_the_configured_maximum(gpu):
    _, target = _scalable_target(gpu)
    assert target["MinCapacity"] == 0
    assert target["MaxCapacity"] == gpu.config.gpu_max_instances == 3
    assert target["ServiceNamespace"] == "sagemaker"
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    prefix, endpoint_name, suffix = target["ResourceId"]["Fn::Join"][1]
    assert (prefix, suffix) == ("endpoint/", "/variant/AllTraffic")
    assert _is_endpoint_name(gpu, endpoint_name)   # also: registered only once the endpoint exists
    role = "".join(p if isinstance(p, str) else "" for p in target["RoleARN"]["Fn::Join"][1])
    assert role.endswith(":role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
                         "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint")
    assert not resources_of(gpu.template, "AWS::IAM::Role").keys() & refs(target["RoleARN"])


def test_target_tracking_keeps_the_backlog_per_instance_near_the_target(gpu):
    target_id, _ = _scalable_target(gpu)
    ((_, policy),) = _policies(gpu, "TargetTrackingScaling").items()
    assert refs(policy["ScalingTargetId"]) == {target_id}
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == gpu.config.gpu_backlog_per_instance_target == 2.5
    metric = config["CustomizedMetricSpecification"]
    assert (metric["MetricName"], metric["Namespace"], metric["Statistic"]) == \
        ("ApproximateBacklogSizePerInstance", SAGEMAKER, "Average")
    (dimension,) = metric["Dimensions"]
    assert dimension["Name"] == "EndpointName" and _is_endpoint_name(gpu, dimension["Value"])
    assert config["ScaleInCooldown"] > 0 and config["ScaleOutCooldown"] > 0
    assert "DisableScaleIn" not in config or config["DisableScaleIn"] is False   # it must reach zero


def test_the_first_request_scales_out_from_zero(gpu):
    target_id, _ = _scalable_target(gpu)
    ((step_id, step),) = _policies(gpu, "StepScaling").items()
    assert refs(step["ScalingTargetId"]) == {target_id}
    config = step["StepScalingPolicyConfiguration"]
    assert config["AdjustmentType"] == "ChangeInCapacity"
    assert config["StepAdjustments"] == [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]

    alarms = [a["Properties"] for a in resources_of(gpu.template, "AWS::CloudWatch::Alarm").values()
              if a["Properties"].get("MetricName") == "HasBacklogWithoutCapacity"]
    (alarm,) = alarms
    assert alarm["Namespace"] == SAGEMAKER and alarm["Statistic"] == "Average"
    assert _is_endpoint_name(gpu, _dimensions(alarm)["EndpointName"])
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold" and alarm["Threshold"] == 1
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"], alarm["Period"]) == (1, 1, 60)
    assert alarm["TreatMissingData"] == "notBreaching"
    assert [refs(a) for a in alarm["AlarmActions"]] == [{step_id}]


# --- execution role ---------------------------------------------------------------------------------


def _role_statements(gpu: GpuSynth) -> list[dict]:
    role = _props(gpu, gpu.role)
    assert [s["Principal"] for s in role["AssumeRolePolicyDocument"]["Statement"]] == \
        [{"Service": "sagemaker.amazonaws.com"}]
    attached = [p for p in resources_of(gpu.template, "AWS::IAM::Policy").values()
                if gpu.role in refs(p["Properties"].get("Roles", []))]
    assert not attached and "ManagedPolicyArns" not in role, "inline only: permissions precede the model"
    return [s for p in role["Policies"] for s in as_list(p["PolicyDocument"]["Statement"])]


def _text(value: object) -> str:
    """A resource as text: literal parts kept, intrinsics as <...>."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        return "".join(_text(p) for p in value["Fn::Join"][1])
    if isinstance(value, dict) and "Ref" in value and value["Ref"].startswith("AWS::"):
        return f"<{value['Ref']}>"
    return "<ref>"


def test_execution_role_has_exactly_the_actions_sagemaker_needs(gpu):
    statements = _role_statements(gpu)
    assert all(s["Effect"] == "Allow" for s in statements)
    granted = {a for s in statements for a in as_list(s["Action"])}
    assert granted == {
        "s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload",
        "sns:Publish", "kms:GenerateDataKey", "kms:Decrypt",
        "ecr:GetAuthorizationToken", "ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer",
        "ecr:BatchGetImage",
        "logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams",
        "cloudwatch:PutMetricData",
    }
    assert not [a for a in granted if "*" in a], "no wildcard in any action"


def test_bucket_access_is_the_model_object_and_the_async_prefixes(gpu):
    by_action: dict[str, set[str]] = {}
    for s in _role_statements(gpu):
        for action in as_list(s["Action"]):
            if action.startswith("s3:"):
                by_action.setdefault(action, set()).update(_text(r) for r in as_list(s["Resource"]))
    model_object = f"arn:<AWS::Partition>:s3:::{MODEL_BUCKET}/{MODEL_KEY}"
    assert by_action == {
        "s3:GetObject": {model_object, f"<ref>/{INPUT_PREFIX}*"},
        "s3:PutObject": {f"<ref>/{OUTPUT_PREFIX}*", f"<ref>/{FAILURE_PREFIX}*"},
        "s3:AbortMultipartUpload": {f"<ref>/{OUTPUT_PREFIX}*", f"<ref>/{FAILURE_PREFIX}*"},
    }
    for s in _role_statements(gpu):       # the prefixes are on the artifact bucket (cross-stack import)
        for r in as_list(s["Resource"]):
            if _text(r).startswith("<ref>/async/"):
                assert "Fn::ImportValue" in json.dumps(r)


def test_resource_star_is_only_ecr_login_and_namespaced_metrics(gpu):
    stars = [s for s in _role_statements(gpu) if "*" in as_list(s["Resource"])]
    assert {a for s in stars for a in as_list(s["Action"])} == \
        {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}
    (metrics,) = [s for s in stars if s["Action"] == "cloudwatch:PutMetricData"]
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": [SAGEMAKER,
                                                                              "/aws/sagemaker/Endpoints"]}}


def test_image_pull_topics_key_and_logs_are_scoped(gpu):
    statements = {s["Sid"]: s for s in _role_statements(gpu)}
    assert _text(statements["PullImage"]["Resource"]) == \
        "arn:<AWS::Partition>:ecr:eu-west-1:123456789012:repository/tenantml/mpnet-gpu"
    # the topics and their key live in the stateful stack: the role names exactly those two and that key
    topics = {t: r["Properties"] for t, r in resources_of(gpu.stateful, "AWS::SNS::Topic").items()
              if t.startswith("GpuNotifications")}
    published = as_list(statements["PublishNotifications"]["Resource"])
    assert len(topics) == 2 and len(published) == 2
    assert all("Fn::ImportValue" in r for r in published)
    (key_import,) = as_list(statements["EncryptNotifications"]["Resource"])
    assert "Fn::ImportValue" in key_import
    (key,) = {next(iter(refs(t["KmsMasterKeyId"]))) for t in topics.values()}
    assert gpu.stateful["Resources"][key]["Properties"]["EnableKeyRotation"] is True
    (log_group,) = refs(statements["EndpointLogs"]["Resource"])
    assert _props(gpu, log_group)["LogGroupName"] == "/aws/sagemaker/Endpoints/tenantml-v1-gpu"
    assert _props(gpu, log_group)["RetentionInDays"] == gpu.config.log_retention_days
    assert log_group in gpu.template["Resources"][gpu.endpoint].get("DependsOn", [])


# --- alarms ---------------------------------------------------------------------------------------------


def test_failed_and_stuck_invocations_alarm_on_the_platform_alarm_topic(gpu):
    alarms = {a["Properties"]["MetricName"]: a["Properties"]
              for a in resources_of(gpu.template, "AWS::CloudWatch::Alarm").values()
              if a["Properties"].get("Namespace") == SAGEMAKER}
    failures = alarms["InvocationFailures"]
    assert failures["Statistic"] == "Sum" and failures["Threshold"] == 1
    dims = _dimensions(failures)
    assert _is_endpoint_name(gpu, dims["EndpointName"]) and dims["VariantName"] == "AllTraffic"
    assert "ApproximateAgeOfOldestRequest" in alarms
    (alarm_topic,) = [t for t in resources_of(gpu.template, "AWS::SNS::Topic")
                      if _props(gpu, t).get("DisplayName") == "tenantml alarms"]
    for name in ("InvocationFailures", "ApproximateAgeOfOldestRequest"):
        assert alarms[name]["TreatMissingData"] == "notBreaching"
        assert [refs(a) for a in alarms[name]["AlarmActions"]] == [{alarm_topic}], name


# --- invoke grant ---------------------------------------------------------------------------------------


def test_grant_invoke_is_invoke_endpoint_async_on_this_endpoint_only(tmp_path):
    app = cdk.App()
    data = cdk.Stack(app, "Data")
    stack = cdk.Stack(app, "Gpu")
    config = load_config({"jwks_url": "https://idp.example.org/jwks.json", "issuer": "i", "audience": "a",
                          **GPU_CONTEXT})
    queue = sqs.Queue(data, "Results")
    notifications = GpuNotifications(data, "Notifications", results_queue=queue)
    endpoint = GpuEndpoint(stack, "Gpu", config=config, bucket=s3.Bucket(data, "Artifacts"),
                           notifications=notifications)
    caller = iam.Role(stack, "Caller", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    endpoint.grant_invoke(caller)
    template = Template.from_stack(stack).to_json()
    (policy,) = [p["Properties"] for p in resources_of(template, "AWS::IAM::Policy").values()
                 if refs(p["Properties"]["Roles"]) == {stack.get_logical_id(caller.node.default_child)}]
    (statement,) = as_list(policy["PolicyDocument"]["Statement"])
    (endpoint_id,) = resources_of(template, "AWS::SageMaker::Endpoint")
    assert statement["Action"] == "sagemaker:InvokeEndpointAsync"
    assert statement["Resource"] == {"Ref": endpoint_id}      # Ref of AWS::SageMaker::Endpoint: its ARN
    matches = lint_file(_write(tmp_path, template),
                        ManualArgs(ignore_checks=list(CFN_LINT_IGNORED), regions=LINT_REGIONS))
    assert not matches, "\n".join(str(m) for m in matches)


def _write(tmp_path: Path, template: dict) -> Path:
    path = tmp_path / "grant.template.json"
    path.write_text(json.dumps(template))
    return path


# --- cdk-nag and cfn-lint on the GPU synth -----------------------------------------------------------


def test_no_unacknowledged_nag_findings_with_the_endpoint(gpu):
    report = json.loads((gpu.outdir / "validation-report.json").read_text())
    assert not _failed(report), "\n".join(_failed(report))
    acknowledged = _acknowledgments(gpu.outdir, STATELESS_STACK)
    gpu_rules = {rule for path, rules in acknowledged.items() if "/Gpu/" in path for rule in rules}
    assert gpu_rules, "the role's IAM5 findings are acknowledged"
    for path, rules in acknowledged.items():
        for rule, reason in rules.items():
            assert len(reason.strip()) >= MIN_REASON_CHARS, (path, rule)


@pytest.mark.parametrize("stack", [STATEFUL_STACK, STATELESS_STACK])
def test_cfn_lint_passes_with_the_endpoint(gpu, stack):
    matches = lint_file(gpu.outdir / f"{stack}.template.json",
                        ManualArgs(ignore_checks=list(CFN_LINT_IGNORED), regions=LINT_REGIONS))
    assert not matches, "\n".join(str(m) for m in matches)
