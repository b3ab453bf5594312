"""Serving-path observability: a CloudWatch dashboard and alarms, alarm notifications on an encrypted SNS
topic.

Signals and where each comes from:

* API 5XX rate          metric math `100 * 5XXError / Count` on the stage (AWS/ApiGateway)
* latency p95/p99       API `Latency` (whole request, authorizer included) and the inference `Duration`
* authorizer denies     a metric filter on the API access log: `authorizeStatus` 401 or 403, i.e. every
                        request the JWT authorizer refused (or that came without a token), whatever the
                        authorizer logs
* throttles             Lambda `Throttles` of every function + API responses with status 429 (stage
                        throttling or the function's own 429), the latter from the access log
* model-load failures   the inference function's EMF metric `ModelLoadFailure` (namespace tenantml,
                        dimensions model/version and Powertools' service). The alarm runs a CloudWatch
                        Metrics Insights query, `SELECT SUM(ModelLoadFailure) FROM tenantml`, which sums
                        the metric over every dimension combination and returns one time series: valid
                        in an AWS::CloudWatch::Alarm (Metrics[].Expression + Period), needs no list of
                        models and stays correct as models are added. (SEARCH() is not allowed in alarms.)
* capture failures      the inference function's EMF metric `CaptureFailures` (a capture frame that could
                        not be written: its rows are dropped, the predictions were not affected), summed
                        the same way
* drift job errors      Lambda `Errors` of drift_scheduler and drift_worker (a job that failed is retried
                        and then reaches its DLQ, whose depth has its own alarm in triggers.py; this one
                        fires on the first failure)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from tenantml import observability
from tenantml_cdk.constructs.functions import PlatformFunction

PERIOD = Duration.minutes(5)
MODEL_LOAD_FAILURE = "ModelLoadFailure"
CAPTURE_FAILURES = "CaptureFailures"
DRIFT_FUNCTIONS = ("drift_scheduler", "drift_worker")
AUTHORIZER_DENIED = "AuthorizerDenied"
API_THROTTLED = "ApiThrottled"


@dataclass(frozen=True)
class AlarmThresholds:
    """Defaults for a small production API; each alarm's description states its threshold."""

    api_5xx_rate_percent: float = 1.0
    api_p99_latency_ms: float = 3000.0         # includes authorizer and cold starts
    inference_p95_duration_ms: float = 1000.0
    authorizer_denies: float = 100.0           # per 5 minutes: IdP misconfiguration or token stuffing
    throttles: float = 10.0                    # per 5 minutes, Lambda + API 429
    model_load_failures: float = 1.0           # any: a model that cannot load is a broken rollout
    capture_failures: float = 1.0              # any frame lost in 2 of 3 x 5 min: drift checks go blind
    drift_job_errors: float = 1.0              # any failed drift run (it retries, then its DLQ alarms)


class ServingMonitoring(Construct):
    def alert_on(self, bus: events.IEventBus, detail_types: list[str]) -> events.Rule:
        """Platform events that are alerts in themselves (DriftDetected on a version no rollout is
        rolling out: nothing rolls back, someone should look) go to the alarm topic."""
        return events.Rule(self, "PlatformAlerts", event_bus=bus,
                           description="tenantml events that need a person: to the alarm topic",
                           event_pattern=events.EventPattern(source=["tenantml"], detail_type=detail_types),
                           targets=[targets.SnsTopic(self.topic)])

    def __init__(self, scope: Construct, construct_id: str, *, stage: apigw.Stage | apigwv2.HttpStage,
                 access_logs: logs.ILogGroup, functions: Mapping[str, PlatformFunction],
                 denied_pattern: logs.IFilterPattern,
                 serving_function: str = "inference", alarm_email: str | None = None,
                 thresholds: AlarmThresholds = AlarmThresholds(), dashboard_name: str | None = None) -> None:
        super().__init__(scope, construct_id)
        namespace = observability.NAMESPACE
        stage_name = stage.stage_name

        # --- notification topic (SSE-KMS with a key CloudWatch may use) ------------------------
        key = kms.Key(self, "AlarmTopicKey", enable_key_rotation=True, pending_window=Duration.days(7),
                      removal_policy=RemovalPolicy.DESTROY,
                      description="tenantml alarm topic encryption (CloudWatch alarms publish with it)")
        # Who publishes to the topic: CloudWatch alarms, and EventBridge rules (alerting platform events).
        for sid, service in (("AllowCloudWatchAlarmsToPublish", "cloudwatch.amazonaws.com"),
                             ("AllowEventBridgeToPublish", "events.amazonaws.com")):
            key.add_to_resource_policy(iam.PolicyStatement(
                sid=sid, principals=[iam.ServicePrincipal(service)],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],  # in a key policy "*" is this key
                conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}},
            ))
        self.topic = sns.Topic(self, "AlarmTopic", display_name="tenantml alarms", master_key=key,
                               enforce_ssl=True)
        if alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))

        # --- metrics ----------------------------------------------------------------------------
        requests = stage.metric_count(statistic="Sum", period=PERIOD)
        errors_5xx = stage.metric_server_error(statistic="Sum", period=PERIOD)
        errors_4xx = stage.metric_client_error(statistic="Sum", period=PERIOD)
        api_5xx_rate = cw.MathExpression(
            expression="IF(requests > 0, 100 * errors / requests, 0)",
            using_metrics={"errors": errors_5xx, "requests": requests},
            label="API 5XX rate (%)", period=PERIOD)
        api_latency = {p: stage.metric_latency(statistic=p, period=PERIOD, label=f"API latency {p}")
                       for p in ("p95", "p99")}
        serving = functions[serving_function].function
        serving_duration = {p: serving.metric_duration(statistic=p, period=PERIOD,
                                                       label=f"{serving_function} duration {p}")
                            for p in ("p95", "p99")}

        logs.MetricFilter(
            self, "AuthorizerDeniesFilter", log_group=access_logs,
            metric_namespace=namespace, metric_name=AUTHORIZER_DENIED, metric_value="1",
            dimensions={"stage": "$.stage"}, filter_pattern=denied_pattern)
        logs.MetricFilter(
            self, "ApiThrottledFilter", log_group=access_logs,
            metric_namespace=namespace, metric_name=API_THROTTLED, metric_value="1",
            dimensions={"stage": "$.stage"},
            filter_pattern=logs.FilterPattern.string_value("$.status", "=", "429"))
        denies = cw.Metric(namespace=namespace, metric_name=AUTHORIZER_DENIED,
                           dimensions_map={"stage": stage_name}, statistic="Sum", period=PERIOD,
                           label="authorizer denies (401/403)")
        api_429 = cw.Metric(namespace=namespace, metric_name=API_THROTTLED,
                            dimensions_map={"stage": stage_name}, statistic="Sum", period=PERIOD,
                            label="API 429")
        throttle_metrics = {f"t{i}": f.function.metric_throttles(statistic="Sum", period=PERIOD)
                            for i, f in enumerate(functions.values())}
        throttles = cw.MathExpression(
            expression=" + ".join(f"FILL({k}, 0)" for k in [*throttle_metrics, "api429"]),
            using_metrics={**throttle_metrics, "api429": api_429},
            label="throttles (Lambda + API 429)", period=PERIOD)
        # A CloudWatch Metrics Insights query built from constants (metric name, namespace), not SQL.
        insights = f"SELECT SUM({MODEL_LOAD_FAILURE}) FROM {namespace}"  # noqa: S608
        model_load_failures = cw.MathExpression(
            expression=insights, label="model-load failures (all models)", period=PERIOD)
        capture_failures = cw.MathExpression(
            expression=f"SELECT SUM({CAPTURE_FAILURES}) FROM {namespace}",  # noqa: S608 - constants
            label="capture failures (all models)", period=PERIOD)
        drift_errors = {f"e{i}": functions[name].function.metric_errors(statistic="Sum", period=PERIOD)
                        for i, name in enumerate(DRIFT_FUNCTIONS) if name in functions}
        drift_job_errors = cw.MathExpression(
            expression=" + ".join(f"FILL({k}, 0)" for k in drift_errors), using_metrics=drift_errors,
            label="drift job errors (scheduler + worker)", period=PERIOD)
        model_load_by_model = cw.MathExpression(
            expression=f"{insights} GROUP BY model, version", label="model-load failures", period=PERIOD)

        # --- alarms -------------------------------------------------------------------------------
        def alarm(cid: str, metric: cw.IMetric, threshold: float, description: str, *,
                  evaluation_periods: int = 3, datapoints: int = 2) -> cw.Alarm:
            a = metric.create_alarm(
                self, cid, threshold=threshold, evaluation_periods=evaluation_periods,
                datapoints_to_alarm=datapoints, alarm_description=description,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING)
            a.add_alarm_action(cw_actions.SnsAction(self.topic))
            a.add_ok_action(cw_actions.SnsAction(self.topic))
            return a

        t = thresholds
        self.alarms: dict[str, cw.Alarm] = {
            "api_5xx_rate": alarm("Api5xxRateAlarm", api_5xx_rate, t.api_5xx_rate_percent,
                                  f"API 5XX rate >= {t.api_5xx_rate_percent}% (2 of 3 x 5 min)"),
            "api_p99_latency": alarm("ApiLatencyP99Alarm", api_latency["p99"], t.api_p99_latency_ms,
                                     f"API p99 latency >= {t.api_p99_latency_ms:.0f} ms (2 of 3 x 5 min)"),
            "serving_p95_duration": alarm(
                "InferenceDurationP95Alarm", serving_duration["p95"], t.inference_p95_duration_ms,
                f"{serving_function} p95 duration >= {t.inference_p95_duration_ms:.0f} ms (2 of 3 x 5 min)"),
            "authorizer_denies": alarm("AuthorizerDeniesAlarm", denies, t.authorizer_denies,
                                       f">= {t.authorizer_denies:.0f} authorizer denies per 5 min "
                                       "(IdP misconfiguration, expired client credentials or token "
                                       "stuffing)", evaluation_periods=1, datapoints=1),
            "throttles": alarm("ThrottlesAlarm", throttles, t.throttles,
                               f">= {t.throttles:.0f} throttled requests per 5 min (Lambda Throttles + "
                               "API 429)", evaluation_periods=1, datapoints=1),
            "model_load_failures": alarm("ModelLoadFailuresAlarm", model_load_failures,
                                         t.model_load_failures,
                                         "a model failed to load (integrity or artifact error); "
                                         "Metrics Insights sum over every model/version",
                                         evaluation_periods=1, datapoints=1),
            "capture_failures": alarm("CaptureFailuresAlarm", capture_failures, t.capture_failures,
                                      "capture frames could not be written (their rows are dropped; "
                                      "predictions are not affected) in 2 of 3 x 5 min"),
            "drift_job_errors": alarm("DriftJobErrorsAlarm", drift_job_errors, t.drift_job_errors,
                                      "a drift_scheduler or drift_worker run failed (retried, then its DLQ)",
                                      evaluation_periods=1, datapoints=1),
        }

        # --- dashboard ----------------------------------------------------------------------------
        fn_metrics = list(functions.values())
        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=dashboard_name,
                                      default_interval=Duration.hours(3))
        self.dashboard.add_widgets(
            cw.AlarmStatusWidget(title="Serving alarms", alarms=list(self.alarms.values()), width=24),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="API requests and errors", left=[requests, errors_4xx, errors_5xx],
                           width=8),
            cw.GraphWidget(title="API 5XX rate (%)", left=[api_5xx_rate], width=8,
                           left_annotations=[cw.HorizontalAnnotation(value=t.api_5xx_rate_percent)]),
            cw.GraphWidget(title="API latency (ms)", left=list(api_latency.values()), width=8),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title=f"{serving_function} duration (ms)", left=list(serving_duration.values()),
                           width=8),
            cw.GraphWidget(title="Authorizer denies", left=[denies], width=8),
            cw.GraphWidget(title="Throttles", left=[throttles], width=8),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Model-load failures by model/version", left=[model_load_by_model],
                           width=8),
            cw.GraphWidget(title="Lambda errors", width=8,
                           left=[f.function.metric_errors(statistic="Sum", period=PERIOD,
                                                          label=f.definition.name) for f in fn_metrics]),
            cw.GraphWidget(title="Lambda concurrency", width=8,
                           left=[f.function.metric("ConcurrentExecutions", statistic="Maximum",
                                                   period=PERIOD, label=f.definition.name)
                                 for f in fn_metrics]),
        )
