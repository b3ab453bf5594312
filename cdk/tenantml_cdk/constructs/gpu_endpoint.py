"""A SageMaker asynchronous inference endpoint on one GPU instance type that scales to zero.

AWS's documented pattern (SageMaker developer guide, "Autoscale an asynchronous endpoint"):

* the variant is registered with Application Auto Scaling with MinCapacity 0 (only asynchronous endpoints
  may scale in to zero instances; the endpoint itself is created with InitialInstanceCount 1 and scales in
  once its backlog stays empty);
* a target tracking policy on the custom metric ApproximateBacklogSizePerInstance (AWS/SageMaker, dimension
  EndpointName, Average) keeps the queue per instance near the target while there are instances;
* at zero instances that metric cannot drive a scale-out, so a step scaling policy (ChangeInCapacity +1 for
  MetricIntervalLowerBound 0) is triggered by a CloudWatch alarm on HasBacklogWithoutCapacity (1 when
  requests are queued and no instance runs, else 0): the first request wakes the endpoint up.

Requests: the caller writes its payload under `input_prefix` of the artifact bucket and calls
InvokeEndpointAsync (`grant_invoke`). SageMaker reads the payload and writes the result under
`output_prefix` (or the error under `failure_prefix`) with the execution role, then publishes to
`success_topic` / `error_topic` (SSE-KMS; a Lambda subscriber needs no key grant).

The container runs with network isolation: model.tar.gz must hold everything it loads (no hub downloads).
Changing `gpu_instance_type` of a deployed endpoint fails while the variant is registered for autoscaling
(SageMaker refuses such an update); deploy once without the GPU context keys, then with the new type.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from tenantml_cdk.config import ECR_IMAGE_URI, S3_MODEL_DATA_URL, AppConfig
from tenantml_cdk.constructs.functions import retention
from tenantml_cdk.nag import acknowledge, export_name

VARIANT = "AllTraffic"
INPUT_PREFIX = "async/input/"
OUTPUT_PREFIX = "async/output/"
FAILURE_PREFIX = "async/failures/"
NAMESPACE = "AWS/SageMaker"
INSTANCE_NAMESPACE = "/aws/sagemaker/Endpoints"   # host metrics (CPU/GPU utilization) and the log group
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
# Application Auto Scaling's service-linked role for SageMaker variants (created on first use if missing).
SCALING_SERVICE_ROLE = ("aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
                        "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint")
# A GPU instance takes minutes to start and load the model: scale out at most every 5 min (no second
# instance while the first is still starting), scale in at most every 10 min.
SCALE_OUT_COOLDOWN = Duration.minutes(5)
SCALE_IN_COOLDOWN = Duration.minutes(10)
# Longer than a cold start from zero (instance + image + model load, several minutes) plus processing.
OLDEST_REQUEST_ALARM_AGE = Duration.minutes(30)


def endpoint_name_for(stage: str) -> str:
    """`tenantml-<stage>-gpu`: an endpoint name allows letters, digits and hyphens, at most 63 characters."""
    return f"tenantml-{re.sub(r'[^A-Za-z0-9-]', '-', stage)[:50]}-gpu"


class GpuNotifications(Construct):
    """The endpoint's success and error topics (SSE-KMS, TLS only), both subscribed by the gpu-results
    queue that gpu_result consumes (a failed recording is retried, then kept in its DLQ). Stateful stack:
    the subscriptions write the queue's policy, which lives with the queue; they cost nothing idle, so
    they exist whether an endpoint is deployed or not."""

    def __init__(self, scope: Construct, construct_id: str, *, results_queue: sqs.IQueue) -> None:
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self, "NotificationKey", enable_key_rotation=True, pending_window=Duration.days(7),
            removal_policy=RemovalPolicy.DESTROY,
            description="tenantml GPU endpoint notification topics (SageMaker publishes with it)")
        self.success_topic = sns.Topic(self, "SuccessTopic", display_name="tenantml GPU inference succeeded",
                                       master_key=self.key, enforce_ssl=True)
        self.error_topic = sns.Topic(self, "ErrorTopic", display_name="tenantml GPU inference failed",
                                     master_key=self.key, enforce_ssl=True)
        for topic in (self.success_topic, self.error_topic):
            topic.add_subscription(subscriptions.SqsSubscription(results_queue))


class GpuEndpoint(Construct):
    """Model, endpoint configuration (asynchronous, one production variant) and endpoint, the execution
    role, the scale-to-zero autoscaling and the endpoint's failure alarms. It publishes on the topics of
    `notifications` (GpuNotifications, in the stateful stack)."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig, bucket: s3.IBucket,
                 notifications: GpuNotifications, alarm_topic: sns.ITopic | None = None,
                 scale_in_cooldown: Duration = SCALE_IN_COOLDOWN,
                 scale_out_cooldown: Duration = SCALE_OUT_COOLDOWN,
                 oldest_request_alarm_age: Duration = OLDEST_REQUEST_ALARM_AGE) -> None:
        super().__init__(scope, construct_id)
        if not config.gpu_enabled:
            raise ValueError("GpuEndpoint needs both gpu_image_uri and gpu_model_data_url")
        image = ECR_IMAGE_URI.match(config.gpu_image_uri or "")
        model_data = S3_MODEL_DATA_URL.match(config.gpu_model_data_url or "")
        assert image and model_data, "validated by AppConfig"
        stack = Stack.of(self)
        name = endpoint_name_for(config.stage)

        self.input_prefix = INPUT_PREFIX
        self.output_prefix = OUTPUT_PREFIX
        self.failure_prefix = FAILURE_PREFIX
        self.output_path = f"s3://{bucket.bucket_name}/{OUTPUT_PREFIX}"
        self.failure_path = f"s3://{bucket.bucket_name}/{FAILURE_PREFIX}"

        self.notification_key = notifications.key
        self.success_topic, self.error_topic = notifications.success_topic, notifications.error_topic

        # SageMaker writes the endpoint's container and data logs here; created first, with the platform's
        # retention (SageMaker would otherwise create it without one).
        log_group_name = f"{INSTANCE_NAMESPACE}/{name}"
        self.log_group = logs.LogGroup(self, "Logs", log_group_name=log_group_name,
                                       retention=retention(config.log_retention_days),
                                       removal_policy=RemovalPolicy.DESTROY)

        # --- execution role ----------------------------------------------------------------------------
        objects = f"{bucket.bucket_arn}/"
        repository = (f"arn:{stack.partition}:ecr:{image['region']}:{image['account']}:"
                      f"repository/{image['repository']}")
        statements = [
            iam.PolicyStatement(sid="ReadModelData", actions=["s3:GetObject"],
                                resources=[f"arn:{stack.partition}:s3:::{model_data['bucket']}/"
                                           f"{model_data['key']}"]),
            iam.PolicyStatement(sid="ReadAsyncInput", actions=["s3:GetObject"],
                                resources=[f"{objects}{INPUT_PREFIX}*"]),
            iam.PolicyStatement(sid="WriteAsyncResults", actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                                resources=[f"{objects}{OUTPUT_PREFIX}*", f"{objects}{FAILURE_PREFIX}*"]),
            iam.PolicyStatement(sid="PublishNotifications", actions=["sns:Publish"],
                                resources=[self.success_topic.topic_arn, self.error_topic.topic_arn]),
            # What SNS asks of a publisher to an SSE-KMS topic (no GenerateDataKey* wildcard needed).
            iam.PolicyStatement(sid="EncryptNotifications", actions=["kms:GenerateDataKey", "kms:Decrypt"],
                                resources=[self.notification_key.key_arn]),
            iam.PolicyStatement(sid="PullImage", resources=[repository], actions=[
                "ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]),
            # GetAuthorizationToken has no resource type: it is only ever granted on "*".
            iam.PolicyStatement(sid="EcrLogin", actions=["ecr:GetAuthorizationToken"], resources=["*"]),
            iam.PolicyStatement(sid="EndpointLogs", resources=[
                self.log_group.log_group_arn,
                stack.format_arn(service="logs", resource="log-group", resource_name=log_group_name,
                                 arn_format=ArnFormat.COLON_RESOURCE_NAME)],
                actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                         "logs:DescribeLogStreams"]),
            # PutMetricData has no resource type either; the namespace condition limits it to SageMaker's.
            iam.PolicyStatement(sid="EndpointMetrics", actions=["cloudwatch:PutMetricData"], resources=["*"],
                                conditions={"StringEquals": {"cloudwatch:namespace": [NAMESPACE,
                                                                                      INSTANCE_NAMESPACE]}}),
        ]
        # Inline, so the permissions exist before the model and endpoint that use them are created.
        self.role = iam.Role(self, "ExecutionRole",
                             assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
                             description="tenantml GPU endpoint: model data, async I/O, notifications",
                             inline_policies={"GpuEndpoint": iam.PolicyDocument(statements=statements)})
        self._acknowledge(bucket)

        # --- model, endpoint configuration, endpoint ---------------------------------------------------
        model = sagemaker.CfnModel(
            self, "Model", execution_role_arn=self.role.role_arn, enable_network_isolation=True,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=config.gpu_image_uri, model_data_url=config.gpu_model_data_url, mode="SingleModel"))
        endpoint_config = sagemaker.CfnEndpointConfig(
            self, "EndpointConfig",
            production_variants=[sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                variant_name=VARIANT, model_name=model.attr_model_name,
                instance_type=config.gpu_instance_type,
                # An endpoint is created with at least one instance; autoscaling then scales it in to 0.
                initial_instance_count=1, initial_variant_weight=1.0)],
            async_inference_config=sagemaker.CfnEndpointConfig.AsyncInferenceConfigProperty(
                output_config=sagemaker.CfnEndpointConfig.AsyncInferenceOutputConfigProperty(
                    s3_output_path=self.output_path, s3_failure_path=self.failure_path,
                    notification_config=sagemaker.CfnEndpointConfig.AsyncInferenceNotificationConfigProperty(
                        success_topic=self.success_topic.topic_arn, error_topic=self.error_topic.topic_arn)),
                client_config=sagemaker.CfnEndpointConfig.AsyncInferenceClientConfigProperty(
                    max_concurrent_invocations_per_instance=config.gpu_max_concurrent_invocations)))
        self.endpoint = sagemaker.CfnEndpoint(self, "Endpoint", endpoint_name=name,
                                              endpoint_config_name=endpoint_config.attr_endpoint_config_name)
        self.endpoint.node.add_dependency(self.log_group)
        self.endpoint_name: str = self.endpoint.attr_endpoint_name
        # Ref is the endpoint's ARN (GetAtt EndpointArn is not available in every region's schema).
        self.endpoint_arn: str = self.endpoint.ref

        # --- autoscaling: 0..max instances ------------------------------------------------------------
        self.scalable_target = appscaling.ScalableTarget(
            self, "ScalableTarget", service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
            resource_id=f"endpoint/{self.endpoint_name}/variant/{VARIANT}",
            scalable_dimension=SCALABLE_DIMENSION, min_capacity=0, max_capacity=config.gpu_max_instances,
            role=iam.Role.from_role_arn(self, "ScalingRole", mutable=False, role_arn=stack.format_arn(
                service="iam", region="", resource="role", resource_name=SCALING_SERVICE_ROLE)))
        self.backlog_policy = self.scalable_target.scale_to_track_metric(
            "BacklogPerInstance", target_value=config.gpu_backlog_per_instance_target,
            custom_metric=self._metric("ApproximateBacklogSizePerInstance", "Average", Duration.minutes(1)),
            scale_in_cooldown=scale_in_cooldown, scale_out_cooldown=scale_out_cooldown)
        self.scale_from_zero = appscaling.StepScalingAction(
            self, "ScaleOutFromZero", scaling_target=self.scalable_target,
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            metric_aggregation_type=appscaling.MetricAggregationType.AVERAGE, cooldown=scale_out_cooldown)
        self.scale_from_zero.add_adjustment(adjustment=1, lower_bound=0)
        self.scale_from_zero_alarm = cw.Alarm(
            self, "HasBacklogWithoutCapacityAlarm",
            metric=self._metric("HasBacklogWithoutCapacity", "Average", Duration.minutes(1)),
            threshold=1, evaluation_periods=1, datapoints_to_alarm=1,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            alarm_description="requests are queued and the GPU endpoint has no instance: scale out by 1")
        self.scale_from_zero_alarm.add_alarm_action(cw_actions.ApplicationScalingAction(self.scale_from_zero))

        # --- alarms (to the platform's alarm topic when given) -----------------------------------------
        self.alarms: dict[str, cw.Alarm] = {
            "invocation_failures": self._alarm(
                "InvocationFailuresAlarm", alarm_topic,
                self._metric("InvocationFailures", "Sum", Duration.minutes(5), variant=True), 1,
                "GPU endpoint: an asynchronous invocation failed (its error is under the failure prefix "
                "and on the error topic)"),
            "oldest_request_age": self._alarm(
                "OldestRequestAgeAlarm", alarm_topic,
                self._metric("ApproximateAgeOfOldestRequest", "Maximum", Duration.minutes(5)),
                oldest_request_alarm_age.to_seconds(),
                f"GPU endpoint: a request has waited >= {oldest_request_alarm_age.to_minutes()} min "
                "(scale-out from zero failing, e.g. no GPU capacity, or a backlog the maximum cannot "
                "drain)"),
        }

    def grant_invoke(self, grantable: iam.IGrantable) -> iam.Grant:
        """sagemaker:InvokeEndpointAsync on this endpoint only. The caller also needs to put its payload
        under `input_prefix` and read results under `output_prefix`/`failure_prefix` (granted apart)."""
        return iam.Grant.add_to_principal(grantee=grantable, actions=["sagemaker:InvokeEndpointAsync"],
                                          resource_arns=[self.endpoint_arn])

    def _metric(self, metric_name: str, statistic: str, period: Duration, *,
                variant: bool = False) -> cw.Metric:
        dimensions = {"EndpointName": self.endpoint_name, **({"VariantName": VARIANT} if variant else {})}
        return cw.Metric(namespace=NAMESPACE, metric_name=metric_name, dimensions_map=dimensions,
                         statistic=statistic, period=period)

    def _alarm(self, cid: str, topic: sns.ITopic | None, metric: cw.Metric, threshold: float,
               description: str) -> cw.Alarm:
        alarm = metric.create_alarm(
            self, cid, threshold=threshold, evaluation_periods=1, datapoints_to_alarm=1,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING, alarm_description=description)
        if topic is not None:
            alarm.add_alarm_action(cw_actions.SnsAction(topic))
            alarm.add_ok_action(cw_actions.SnsAction(topic))
        return alarm

    def _acknowledge(self, bucket: s3.IBucket) -> None:
        stack = Stack.of(self)
        producer = Stack.of(bucket)
        arn = (export_name(producer, bucket.bucket_arn) if producer.node.path != stack.node.path
               else flatten(stack.resolve(bucket.bucket_arn)))
        for prefix, why in ((INPUT_PREFIX, "reads the request payloads callers upload"),
                            (OUTPUT_PREFIX, "writes inference results"),
                            (FAILURE_PREFIX, "writes inference errors")):
            acknowledge(self.role, f"AwsSolutions-IAM5[Resource::{arn}/{prefix}*]",
                        f"The endpoint {why} under {prefix} of the artifact bucket, one object per request "
                        "with a key SageMaker generates at run time, so the prefix needs a trailing "
                        "wildcard.")
        acknowledge(self.role, "AwsSolutions-IAM5[Resource::*]",
                    "Two actions without a resource type: ecr:GetAuthorizationToken (registry login; the "
                    "image pull itself is limited to the one repository) and cloudwatch:PutMetricData, "
                    "limited by the cloudwatch:namespace condition to AWS/SageMaker and "
                    "/aws/sagemaker/Endpoints.")


def flatten(resolved: Any) -> str:
    """A resolved CloudFormation value as cdk-nag prints it (utils/flatten-cfn-reference): Ref as <Id>,
    Fn::GetAtt as <Id.Attr>, an import as its export name, Fn::Join joined."""
    if isinstance(resolved, str):
        return resolved.replace("${", "<").replace("}", ">")
    if "Fn::Join" in resolved:
        delimiter, parts = resolved["Fn::Join"]
        return delimiter.join(flatten(p) for p in parts)
    if "Fn::GetAtt" in resolved:
        resource, attribute = resolved["Fn::GetAtt"]
        return f"<{flatten(resource)}.{flatten(attribute)}>"
    if "Fn::ImportValue" in resolved:
        return flatten(resolved["Fn::ImportValue"])
    if "Ref" in resolved:
        return f"<{flatten(resolved['Ref'])}>"
    return json.dumps(resolved, separators=(",", ":"))
