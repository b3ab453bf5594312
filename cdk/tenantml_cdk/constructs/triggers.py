"""Every non-HTTP trigger of every function, from its declaration (`tenantml.resources.FunctionDef.triggers`),
as local mode runs them (tenantml.local.events):

- SqsTrigger    -> an SQS event source mapping: batch size, batching window, ReportBatchItemFailures;
- ScheduleTrigger -> an EventBridge Scheduler schedule invoking the function with the envelope local mode
                   sends (detail-type "Scheduled Event", `time` the scheduled time, `resources` the
                   schedule ARN, `detail` the string "{}"); failed deliveries go to the failure queue;
- RuleTrigger   -> an EventBridge rule with the declared pattern on the platform or the default bus;
- StreamTrigger -> a DynamoDB stream event source mapping from TRIM_HORIZON with the declared filter,
                   ReportBatchItemFailures, bisect on error, retries until the records expire (nothing
                   is skipped while it could still succeed), then the failure queue.

Asynchronous invocations (rules, schedules) are retried ASYNC_RETRY_ATTEMPTS times by Lambda, then go to
the function's failure queue. Every DLQ and failure queue has a depth alarm on the platform's topic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from tenantml import resources
from tenantml_cdk.constructs.functions import PlatformFunction, function_id
from tenantml_cdk.constructs.storage import pascal
from tenantml_cdk.nag import acknowledge


def schedule_input(account: str, region: str) -> scheduler.ScheduleTargetInput:
    """What a schedule sends: the envelope of tenantml.local.events.schedule_event, with Scheduler's
    context attributes for the scheduled time and the schedule ARN (the idempotency key)."""
    return scheduler.ScheduleTargetInput.from_object({
        "version": "0", "id": scheduler.ContextAttribute.execution_id, "detail-type": "Scheduled Event",
        "source": "aws.scheduler", "account": account, "region": region,
        "time": scheduler.ContextAttribute.scheduled_time,
        "resources": [scheduler.ContextAttribute.schedule_arn], "detail": "{}",
    })


class EventTriggers(Construct):
    @property
    def scheduler_role(self) -> iam.Role:
        """One role for every schedule, made on first use (so a stack without schedules has none)."""
        if self._scheduler_role is None:
            self._scheduler_role = _scheduler_role(self)
        return self._scheduler_role

    def __init__(self, scope: Construct, construct_id: str, *,
                 functions: Mapping[str, PlatformFunction], tables: Mapping[str, dynamodb.ITable],
                 queues: Mapping[str, sqs.IQueue], dead_letter_queues: Mapping[str, sqs.IQueue],
                 event_bus: events.IEventBus, alarm_topic: sns.ITopic | None = None,
                 definitions: Sequence[resources.FunctionDef] = resources.FUNCTIONS) -> None:
        super().__init__(scope, construct_id)
        self.schedules: dict[str, scheduler.Schedule] = {}
        self.rules: dict[str, events.Rule] = {}
        self._scheduler_role: iam.Role | None = None
        for d in definitions:
            fn = functions[d.name]
            target = fn.invoke_target
            failures = dead_letter_queues.get(d.failure_queue or "")
            if failures is not None and any(t.kind in {"rule", "schedule"} for t in d.triggers):
                fn.function.configure_async_invoke(
                    retry_attempts=resources.ASYNC_RETRY_ATTEMPTS, max_event_age=Duration.hours(6),
                    on_failure=destinations.SqsDestination(failures))
            for t in d.triggers:
                key = getattr(t, "id", None) or getattr(t, "queue", None) or t.table
                name = f"{pascal(d.name)}{pascal(key)}"
                if isinstance(t, resources.SqsTrigger):
                    fn.function.add_event_source(sources.SqsEventSource(
                        queues[t.queue], batch_size=t.batch_size, report_batch_item_failures=True,
                        max_batching_window=Duration.seconds(t.batching_window_s)
                        if t.batching_window_s else None))
                elif isinstance(t, resources.ScheduleTrigger):
                    acknowledge(self.scheduler_role, f"AwsSolutions-IAM5[Resource::<{function_id(d)}.Arn>:*]",
                                "grant_invoke covers the scheduled function and its versions/aliases "
                                "(Arn:*), so a schedule can invoke a published version; nothing else.")
                    self.schedules[t.id] = scheduler.Schedule(
                        self, f"{name}Schedule",
                        schedule=scheduler.ScheduleExpression.expression(t.expression),
                        description=t.description or f"tenantml {d.name}: {t.id}",
                        target=scheduler_targets.LambdaInvoke(
                            target, input=schedule_input(Stack.of(self).account, Stack.of(self).region),
                            role=self.scheduler_role, dead_letter_queue=failures,
                            retry_attempts=resources.ASYNC_RETRY_ATTEMPTS, max_event_age=Duration.hours(6)))
                elif isinstance(t, resources.RuleTrigger):
                    bus = event_bus if t.bus == "platform" else events.EventBus.from_event_bus_name(
                        self, f"{name}DefaultBus", "default")
                    rule = events.Rule(self, f"{name}Rule", event_bus=bus,
                                       description=f"tenantml {d.name}: {t.id}",
                                       event_pattern=_pattern(t.pattern))
                    # A rule's own DLQ needs a queue policy naming the rule: with the queue in the stateful
                    # stack that is a reference back into this one (a cycle). What EventBridge delivers is
                    # an async invocation, whose failures go to the same queue by the function's on-failure
                    # destination (above); only an undeliverable event (the function deleted) is not kept.
                    same_stack = failures is not None and Stack.of(failures) is Stack.of(self)
                    rule.add_target(events_targets.LambdaFunction(
                        target, dead_letter_queue=failures if same_stack else None,
                        retry_attempts=resources.ASYNC_RETRY_ATTEMPTS, max_event_age=Duration.hours(6)))
                    self.rules[t.id] = rule
                elif isinstance(t, resources.StreamTrigger):
                    fn.function.add_event_source(sources.DynamoEventSource(
                        tables[t.table], starting_position=lambda_.StartingPosition.TRIM_HORIZON,
                        batch_size=t.batch_size, bisect_batch_on_error=True, report_batch_item_failures=True,
                        retry_attempts=-1, on_failure=sources.SqsDlq(failures) if failures else None,
                        filters=[lambda_.FilterCriteria.filter(dict(t.filter))]))
        for queue_id, dlq in dead_letter_queues.items():
            alarm = cw.Alarm(self, f"{pascal(queue_id)}DepthAlarm",
                             alarm_description=f"tenantml: messages in {queue_id} (failed work to look at)",
                             metric=dlq.metric_approximate_number_of_messages_visible(
                                 statistic="Maximum", period=Duration.minutes(5)),
                             threshold=0, evaluation_periods=1,
                             comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                             treat_missing_data=cw.TreatMissingData.NOT_BREACHING)
            if alarm_topic is not None:
                alarm.add_alarm_action(cw_actions.SnsAction(alarm_topic))


def _scheduler_role(scope: Construct) -> iam.Role:
    role = iam.Role(scope, "SchedulerRole", assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com"),
                    description="tenantml: EventBridge Scheduler invokes the scheduled functions")
    return role


def _pattern(pattern: Mapping[str, object]) -> events.EventPattern:
    """An EventBridge pattern from its JSON form (source, detail-type, detail, resources)."""
    keys = {"source": "source", "detail-type": "detail_type", "detail": "detail", "resources": "resources",
            "account": "account", "region": "region"}
    unknown = set(pattern) - set(keys)
    if unknown:
        raise ValueError(f"unsupported pattern keys {sorted(unknown)}")
    return events.EventPattern(**{keys[k]: v for k, v in pattern.items()})
