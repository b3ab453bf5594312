"""The local event runtime: what Lambda's event source mappings, EventBridge and EventBridge Scheduler do
for the functions on AWS, done here against the AWS emulator, from the same declarations
(`tenantml.resources`: QUEUES, FunctionDef.triggers).

moto stores queues, rules, schedules and streams but delivers almost nothing to functions by itself, so:

- SQS triggers: the queue is polled with the declared batch size; the function gets a real-shaped SQS
  event; with ReportBatchItemFailures only the failed messages go back to the queue, the others are
  deleted; a handler that raises (or answers malformed batchItemFailures) fails the whole batch. A
  message received maxReceiveCount times moves to its DLQ (moto implements SQS redrive, as SQS does).
  Local difference: a failed message is made visible again at once (ChangeMessageVisibility 0) instead
  of after the visibility timeout, so retries take milliseconds, not minutes.
- Rules: each rule is created in moto on its bus with the declared pattern and, as target, a local
  delivery queue (moto matches patterns and delivers rules to SQS targets; a Lambda target would make
  put_events fail). The runtime takes each delivered event, in EventBridge's envelope, and invokes the
  function asynchronously: ASYNC_RETRY_ATTEMPTS retries, then an on-failure record (Lambda's
  destination format) in the function's failure queue.
- Schedules: created in moto's scheduler (so they can be listed) and fired by the runtime at their rate
  (the first one period after start) or on demand (`fire`, `tenantml events fire`), with the envelope the
  CDK app tells Scheduler to send (resources.ScheduleTrigger).
- Streams: the table's DynamoDB stream is read from the oldest record, filtered with the declared
  pattern, and handed to the function in batches; a failed record (batch item failure or an error) is
  retried, with the records after it, until it succeeds, as Lambda does with an unbounded retry count.

`poll()` runs one pass over every source (tests drive it deterministically with `run_until_idle`);
`start()` runs passes in a background thread, which `tenantml local` does.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tenantml import resources
from tenantml.aws import client
from tenantml.events import event_time
from tenantml.local.context import ACCOUNT_ID, FunctionError, FunctionTimeout, LocalFunction
from tenantml.local.provision import create_queues
from tenantml.settings import AwsSettings

log = logging.getLogger("tenantml-local.events")

RULE_QUEUE_SUFFIX = "rule"
SCHEDULER_ROLE = f"arn:aws:iam::{ACCOUNT_ID}:role/tenantml-local-scheduler"



def schedule_arn(region: str, name: str) -> str:
    return f"arn:aws:scheduler:{region}:{ACCOUNT_ID}:schedule/default/{name}"


def schedule_event(region: str, schedule_name: str, scheduled: datetime) -> dict[str, Any]:
    """The event a schedule delivers (the input template of tenantml_cdk.constructs.triggers)."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
            "source": "aws.scheduler", "account": ACCOUNT_ID, "time": event_time(scheduled), "region": region,
            "resources": [schedule_arn(region, schedule_name)], "detail": "{}"}


def sqs_record(message: Mapping[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """An SQS message as Lambda's event source mapping hands it over."""
    attributes = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        attributes[name] = {"stringValue": value.get("StringValue"),
                            "binaryValue": base64.b64encode(value["BinaryValue"]).decode()
                            if value.get("BinaryValue") is not None else None,
                            "stringListValues": [], "binaryListValues": [], "dataType": value.get("DataType")}
    return {"messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"], "attributes": dict(message.get("Attributes") or {}),
            "messageAttributes": attributes, "md5OfBody": message.get("MD5OfBody", ""),
            "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": region}


def stream_record(record: Mapping[str, Any], stream_arn: str) -> dict[str, Any]:
    """A DynamoDB stream record (boto3's get_records) as Lambda hands it over."""
    ddb = dict(record["dynamodb"])
    created = ddb.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        ddb["ApproximateCreationDateTime"] = created.timestamp()
    return {"eventID": record["eventID"], "eventName": record["eventName"],
            "eventVersion": record.get("eventVersion", "1.1"), "eventSource": "aws:dynamodb",
            "awsRegion": record.get("awsRegion"), "dynamodb": ddb, "eventSourceARN": stream_arn}


def failed_items(result: Any, identifiers: Sequence[str]) -> set[str] | None:
    """The identifiers a ReportBatchItemFailures response names as failed; None when the response is
    malformed (Lambda then treats the whole batch as failed)."""
    if result is None or (isinstance(result, dict) and not result.get("batchItemFailures")):
        return set()
    if not isinstance(result, dict) or not isinstance(result["batchItemFailures"], list):
        return None
    failed = set()
    for item in result["batchItemFailures"]:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(ident, str) or ident not in identifiers:
            return None
        failed.add(ident)
    return failed


@dataclass
class Delivery:
    """One invocation the runtime made (kept for the log, `tenantml local` and tests)."""

    source: str
    function: str
    records: int
    failed: int
    error: str | None = None


def _call(fn: LocalFunction, event: Any) -> tuple[Any, str | None]:
    try:
        return fn.invoke(event), None
    except FunctionTimeout:
        return None, "Task timed out"
    except FunctionError as err:
        return None, err.error_type


class SqsSource:
    def __init__(self, runtime: EventRuntime, fn: LocalFunction, trigger: resources.SqsTrigger) -> None:
        self.runtime, self.fn, self.trigger = runtime, fn, trigger
        self.url = runtime.queue_urls[trigger.queue]
        self.arn = runtime.queue_arn(self.url)
        self.name = f"sqs:{trigger.queue}"

    def poll(self) -> int:
        sqs = self.runtime.sqs
        messages: list[dict[str, Any]] = []
        while len(messages) < self.trigger.batch_size:
            got = sqs.receive_message(QueueUrl=self.url, WaitTimeSeconds=0, AttributeNames=["All"],
                                      MessageAttributeNames=["All"],
                                      MaxNumberOfMessages=min(10, self.trigger.batch_size - len(messages)),
                                      ).get("Messages", [])
            messages += got
            if not got:
                break
        if not messages:
            return 0
        region = self.runtime.aws.region
        result, error = _call(self.fn, {"Records": [sqs_record(m, self.arn, region) for m in messages]})
        ids = [m["MessageId"] for m in messages]
        failed = set(ids) if error else failed_items(result, ids)
        if failed is None:
            failed, error = set(ids), "malformed batchItemFailures"
        done = [m for m in messages if m["MessageId"] not in failed]
        for i in range(0, len(done), 10):
            sqs.delete_message_batch(QueueUrl=self.url, Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(done[i:i + 10])])
        for m in messages:
            if m["MessageId"] in failed:   # locally visible again at once (AWS: after the visibility timeout)
                sqs.change_message_visibility(QueueUrl=self.url, ReceiptHandle=m["ReceiptHandle"],
                                              VisibilityTimeout=0)
        self.runtime.record(Delivery(self.name, self.fn.name, len(messages), len(failed), error))
        return len(messages)


class AsyncInvoker:
    """Lambda's asynchronous invocation: the first try plus ASYNC_RETRY_ATTEMPTS retries, then an
    on-failure record in the function's failure queue."""

    def __init__(self, runtime: EventRuntime, fn: LocalFunction, failure_queue_url: str | None) -> None:
        self.runtime, self.fn, self.failure_queue_url = runtime, fn, failure_queue_url

    def invoke(self, source: str, event: dict[str, Any], attempt: int) -> bool:
        """One attempt (1-based); True when it succeeded or was given up (recorded), False to retry."""
        _, error = _call(self.fn, event)
        self.runtime.record(Delivery(source, self.fn.name, 1, int(error is not None), error))
        if error is None:
            return True
        if attempt <= resources.ASYNC_RETRY_ATTEMPTS:
            return False
        log.warning("%s: %s failed %d times (%s); sent to its failure queue", source, self.fn.name, attempt,
                    error)
        if self.failure_queue_url:
            self.runtime.sqs.send_message(QueueUrl=self.failure_queue_url, MessageBody=json.dumps({
                "version": "1.0", "timestamp": event_time(datetime.now(UTC)),
                "requestContext": {"requestId": str(uuid.uuid4()),
                                   "functionArn": self.runtime.function_arn(self.fn.name),
                                   "condition": "RetriesExhausted", "approximateInvokeCount": attempt},
                "requestPayload": event,
                "responseContext": {"statusCode": 200, "executedVersion": "$LATEST",
                                    "functionError": "Unhandled"},
                "responsePayload": {"errorType": error}}))
        return True


class RuleSource:
    def __init__(self, runtime: EventRuntime, fn: LocalFunction, rule: resources.RuleTrigger,
                 invoker: AsyncInvoker) -> None:
        self.runtime, self.fn, self.rule, self.invoker = runtime, fn, rule, invoker
        self.name = f"rule:{rule.id}"
        self.bus = runtime.names.event_bus if rule.bus == "platform" else "default"
        sqs = runtime.sqs
        self.url = sqs.create_queue(
            QueueName=f"{runtime.names.prefix}-{RULE_QUEUE_SUFFIX}-{fn.name}-{rule.id}")["QueueUrl"]
        rule_name = f"{runtime.names.prefix}-{fn.name}-{rule.id}"
        runtime.events.put_rule(Name=rule_name, EventBusName=self.bus, EventPattern=rule.pattern_json(),
                                State="ENABLED", Description=f"local delivery to {fn.name}")
        runtime.events.put_targets(Rule=rule_name, EventBusName=self.bus,
                                   Targets=[{"Id": "local-delivery", "Arn": runtime.queue_arn(self.url)}])

    def poll(self) -> int:
        messages = self.runtime.sqs.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=0, AttributeNames=["All"],
        ).get("Messages", [])
        for m in messages:
            event = json.loads(m["Body"])
            event.setdefault("account", ACCOUNT_ID)   # moto's SQS delivery leaves it out
            attempt = int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            if self.invoker.invoke(self.name, event, attempt):
                self.runtime.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=m["ReceiptHandle"])
            else:
                self.runtime.sqs.change_message_visibility(
                    QueueUrl=self.url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
        return len(messages)


@dataclass
class ScheduleSource:
    runtime: EventRuntime
    fn: LocalFunction
    schedule: resources.ScheduleTrigger
    invoker: AsyncInvoker
    next_due: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        self.name = f"schedule:{self.schedule.id}"
        self.next_due = self.runtime.clock() + self.schedule.local_period_s
        self.schedule_name = f"{self.runtime.names.prefix}-{self.schedule.id}"
        try:
            self.runtime.scheduler.create_schedule(
                Name=self.schedule_name, ScheduleExpression=self.schedule.expression,
                FlexibleTimeWindow={"Mode": "OFF"},
                Target={"Arn": self.runtime.function_arn(self.fn.name), "RoleArn": SCHEDULER_ROLE})
        except Exception as exc:  # noqa: BLE001 - already there (a restarted runtime on the same moto)
            if "ConflictException" not in type(exc).__name__ and "Conflict" not in str(exc):
                raise

    def fire(self, scheduled: datetime) -> None:
        event = schedule_event(self.runtime.aws.region, self.schedule_name, scheduled)
        attempt = 1
        while not self.invoker.invoke(self.name, event, attempt):
            attempt += 1

    def poll(self) -> int:
        now = self.runtime.clock()
        if now < self.next_due:
            return 0
        scheduled = datetime.fromtimestamp(self.next_due, UTC).replace(microsecond=0)
        self.next_due += self.schedule.local_period_s
        self.fire(scheduled)
        return 1


@dataclass
class StreamSource:
    runtime: EventRuntime
    fn: LocalFunction
    trigger: resources.StreamTrigger
    retry_backoff_s: float = 1.0
    pending: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    not_before: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        from moto.events.models import EventPattern  # noqa: PLC0415 - local mode only

        self.name = f"stream:{self.trigger.table}"
        self.pattern = EventPattern.load(json.dumps(self.trigger.filter))
        table = self.runtime.names.tables[self.trigger.table]
        self.arn = self.runtime.ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
        shards = self.runtime.streams.describe_stream(StreamArn=self.arn)["StreamDescription"]["Shards"]
        self.iterators = [self.runtime.streams.get_shard_iterator(
            StreamArn=self.arn, ShardId=s["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            for s in shards]

    def _fetch(self) -> None:
        for i, iterator in enumerate(self.iterators):
            if iterator is None:
                continue
            resp = self.runtime.streams.get_records(ShardIterator=iterator, Limit=1000)
            self.iterators[i] = resp.get("NextShardIterator")
            for raw in resp.get("Records", []):
                record = stream_record(raw, self.arn)
                if self.pattern.matches_event(record):   # Lambda drops records the filter does not match
                    self.pending.append(record)

    def poll(self) -> int:
        if not self.pending:
            self._fetch()
        if not self.pending or time.monotonic() < self.not_before:
            return 0
        batch = self.pending[:self.trigger.batch_size]
        result, error = _call(self.fn, {"Records": batch})
        seqs = [r["dynamodb"]["SequenceNumber"] for r in batch]
        failed = set(seqs) if error else failed_items(result, seqs)
        if failed is None:
            failed, error = set(seqs), "malformed batchItemFailures"
        self.runtime.record(Delivery(self.name, self.fn.name, len(batch), len(failed), error))
        if not failed:
            del self.pending[:len(batch)]
            self.attempts = 0
            return len(batch)
        # Checkpoint before the first failed record; it and everything after it come again.
        first = min(seqs.index(s) for s in failed)
        del self.pending[:first]
        self.attempts += 1
        self.not_before = time.monotonic() + min(30.0, self.retry_backoff_s * 2 ** (self.attempts - 1))
        log.warning("%s: %s failed (%s); retrying from sequence %s (attempt %d)", self.name, self.fn.name,
                    error or "batch item failure", seqs[first], self.attempts)
        return len(batch)


def describe(definitions: Sequence[resources.FunctionDef] = resources.FUNCTIONS,
             queues: Sequence[resources.QueueDef] = resources.QUEUES) -> list[str]:
    """One line per declared trigger (startup output and `tenantml events list`)."""
    lines = []
    for d in definitions:
        for t in d.triggers:
            if isinstance(t, resources.SqsTrigger):
                q = next(q for q in queues if q.id == t.queue)
                lines.append(f"queue    {t.queue} -> {d.name} (batch {t.batch_size}, DLQ after "
                             f"{q.max_receive_count} receives)")
            elif isinstance(t, resources.RuleTrigger):
                lines.append(f"rule     {t.id} on the {t.bus} bus {t.pattern_json()} -> {d.name}")
            elif isinstance(t, resources.ScheduleTrigger):
                local = f" (locally {t.local_expression})" if t.local_expression else ""
                lines.append(f"schedule {t.id} {t.expression}{local} -> {d.name}")
            elif isinstance(t, resources.StreamTrigger):
                lines.append(f"stream   {t.table} table, filter {json.dumps(t.filter)} -> {d.name}")
    return lines


class EventRuntime:
    def __init__(self, functions: Mapping[str, LocalFunction], aws: AwsSettings, names: resources.LocalNames,
                 *, definitions: Sequence[resources.FunctionDef] = resources.FUNCTIONS,
                 queues: Sequence[resources.QueueDef] = resources.QUEUES,
                 clock: Callable[[], float] = time.time, stream_retry_backoff_s: float = 1.0,
                 keep_deliveries: int = 1000) -> None:
        self.functions, self.aws, self.names = functions, aws, names
        self.definitions, self.queues = tuple(definitions), tuple(queues)
        self.clock = clock
        self.stream_retry_backoff_s = stream_retry_backoff_s
        self.deliveries: list[Delivery] = []
        self._keep = keep_deliveries
        self.sqs, self.events = client("sqs", aws), client("events", aws)
        self.scheduler, self.ddb = client("scheduler", aws), client("dynamodb", aws)
        self.streams = client("dynamodbstreams", aws)
        self.queue_urls: dict[str, str] = {}
        self.sources: list[Any] = []
        self.schedules: dict[str, ScheduleSource] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- setup ---------------------------------------------------------------------------------------

    def function_arn(self, name: str) -> str:
        return f"arn:aws:lambda:{self.aws.region}:{ACCOUNT_ID}:function:{self.names.prefix}-{name}"

    def queue_arn(self, url: str) -> str:
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
        return str(attrs["QueueArn"])

    def provision(self) -> EventRuntime:
        """Create the declared queues (with DLQs and failure queues), the rules with their delivery queues
        and the schedules, and the sources that poll them."""
        self.queue_urls = create_queues(self.aws, self.names.prefix, self.queues, self.definitions)
        for d in self.definitions:
            fn = self.functions[d.name]
            invoker = AsyncInvoker(self, fn, self.queue_urls.get(d.failure_queue or ""))
            for t in d.triggers:
                if isinstance(t, resources.SqsTrigger):
                    self.sources.append(SqsSource(self, fn, t))
                elif isinstance(t, resources.RuleTrigger):
                    self.sources.append(RuleSource(self, fn, t, invoker))
                elif isinstance(t, resources.ScheduleTrigger):
                    source = ScheduleSource(self, fn, t, invoker)
                    self.schedules[t.id] = source
                    self.sources.append(source)
                elif isinstance(t, resources.StreamTrigger):
                    self.sources.append(StreamSource(self, fn, t,
                                                     retry_backoff_s=self.stream_retry_backoff_s))
        return self

    def describe(self) -> list[str]:
        """One line per trigger (what `tenantml local` prints at startup)."""
        return describe(self.definitions, self.queues)

    # --- delivery ------------------------------------------------------------------------------------

    def record(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        del self.deliveries[:-self._keep]
        level = logging.WARNING if delivery.error or delivery.failed else logging.INFO
        log.log(level, "%s -> %s: %d record(s), %d failed%s", delivery.source, delivery.function,
                delivery.records, delivery.failed, f" ({delivery.error})" if delivery.error else "")

    def poll(self) -> int:
        """One pass over every source; the number of records delivered."""
        with self._lock:
            total = 0
            for source in self.sources:
                try:
                    total += source.poll()
                except Exception:  # noqa: BLE001 - one broken source must not stop the others
                    log.exception("%s: polling failed", source.name)
            return total

    def run_until_idle(self, timeout_s: float = 30.0) -> int:
        """Poll until a pass delivers nothing and no stream record waits for a retry (tests)."""
        deadline, total = time.monotonic() + timeout_s, 0
        while time.monotonic() < deadline:
            delivered = self.poll()
            total += delivered
            waiting = any(isinstance(s, StreamSource) and s.pending for s in self.sources)
            if not delivered and not waiting:
                return total
            if not delivered:
                time.sleep(0.05)
        raise TimeoutError(f"event runtime not idle after {timeout_s} s")

    def fire(self, schedule_id: str, scheduled: datetime | None = None) -> None:
        """Fire a schedule now, for `scheduled` (default: this minute)."""
        source = self.schedules.get(schedule_id)
        if source is None:
            raise KeyError(f"no schedule {schedule_id!r}; declared: {', '.join(self.schedules) or 'none'}")
        with self._lock:
            source.fire(scheduled or datetime.now(UTC).replace(second=0, microsecond=0))

    def start(self, interval_s: float = 0.2) -> EventRuntime:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, args=(interval_s,), name="event-runtime",
                                            daemon=True)
            self._thread.start()
        return self

    def _loop(self, interval_s: float) -> None:
        while not self._stop.is_set():
            if not self.poll():
                self._stop.wait(interval_s)

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(10)


# --- `tenantml events` ----------------------------------------------------------------------------------

def list_command(args: Any) -> int:
    """Print the declared triggers and the events the platform publishes (no AWS needed)."""
    print("triggers (tenantml.resources; run by `tenantml local`, deployed by the CDK app):")
    for line in describe():
        print(f"  {line}")
    print(f"events (source {resources.EVENT_SOURCE}, on the platform bus):")
    for e in resources.EVENTS:
        fields = ", ".join(e.detail.model_fields)
        print(f"  {e.detail_type:24} by {e.publisher}: {e.purpose}; detail: {fields}")
    return 0


def fire_command(args: Any) -> int:
    """Fire a declared schedule once against the running local platform: its function runs here, with
    that platform's environment and the envelope EventBridge Scheduler sends (like `tenantml invoke`)."""
    from tenantml.local import state as platform_state  # noqa: PLC0415
    from tenantml.local.context import handler_path  # noqa: PLC0415
    from tenantml.settings import EnvPatch  # noqa: PLC0415

    targets = {t.id: d for d in resources.FUNCTIONS for t in d.triggers_of("schedule")}
    if args.schedule not in targets:
        print(f"tenantml events fire: no schedule {args.schedule!r}; declared: "
              f"{', '.join(targets) or 'none'}", file=sys.stderr)
        return 2
    try:
        scheduled = datetime.fromisoformat(args.time.replace("Z", "+00:00")) if args.time \
            else datetime.now(UTC).replace(second=0, microsecond=0)
    except ValueError:
        print(f"tenantml events fire: --time must be ISO 8601, got {args.time!r}", file=sys.stderr)
        return 2
    state = platform_state.running_state()
    d = targets[args.schedule]
    if state is None:
        print(f"tenantml events fire: no local platform is running; {platform_state.START_HINT}",
              file=sys.stderr)
        return 1
    env = platform_state.function_environment(state, d.name)
    prefix = resources.LOCAL_PREFIX
    event = schedule_event(env.get("AWS_REGION", "us-east-1"), f"{prefix}-{args.schedule}", scheduled)
    fn = LocalFunction(d, handler_path(d.name))
    with EnvPatch(env):
        result, error = _call(fn, event)
    if error:
        print(f"tenantml events fire: {d.name} failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"schedule": args.schedule, "function": d.name, "time": event["time"],
                      "result": result}, indent=2))
    return 0
