"""The platform's SQS queues, from `tenantml.resources`: every queue a function consumes (QUEUES), with
its dead-letter queue and redrive after `max_receive_count` receives, and every function's failure queue
(where its failed asynchronous work lands: rule and schedule invocations after Lambda's retries, stream
batches whose records expired). Visibility timeout: VISIBILITY_FACTOR x the consumer's configured timeout.
All encrypted (SQS-managed SSE), TLS only, messages kept 14 days in DLQs. Stateful: they hold work."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from tenantml import resources
from tenantml_cdk.config import AppConfig
from tenantml_cdk.constructs.storage import pascal
from tenantml_cdk.nag import acknowledge

RETENTION = Duration.days(14)


class PlatformQueues(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig,
                 functions: Sequence[resources.FunctionDef] = resources.FUNCTIONS,
                 queues: Sequence[resources.QueueDef] = resources.QUEUES) -> None:
        super().__init__(scope, construct_id)
        consumers = {t.queue: fn.name for fn in functions for t in fn.triggers_of("sqs")}
        self.queues: dict[str, sqs.IQueue] = {}
        self.dead_letter_queues: dict[str, sqs.IQueue] = {}
        for queue in queues:
            dlq = self._queue(f"{pascal(queue.id)}Dlq", f"{queue.purpose}: messages that failed "
                              f"{queue.max_receive_count} times", retention_period=RETENTION)
            consumer = consumers.get(queue.id)
            timeout = config.sizing(consumer).timeout_seconds if consumer else 60
            self.queues[queue.id] = self._queue(
                pascal(queue.id), queue.purpose,
                visibility_timeout=Duration.seconds(resources.VISIBILITY_FACTOR * timeout),
                dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=queue.max_receive_count, queue=dlq))
            self.dead_letter_queues[queue.id] = dlq
        for queue in resources.failure_queues(functions):
            self.dead_letter_queues[queue.id] = self._queue(pascal(queue.id), queue.purpose,
                                                            retention_period=RETENTION)

    def _queue(self, construct_id: str, purpose: str, **kwargs) -> sqs.Queue:
        queue = sqs.Queue(self, construct_id, encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
                          removal_policy=RemovalPolicy.RETAIN, **kwargs)
        queue.node.add_metadata("purpose", purpose)
        if "dead_letter_queue" not in kwargs:
            acknowledge(queue, "AwsSolutions-SQS3",
                        "A dead-letter or failure queue: the end of the line, watched by a depth alarm.")
        return queue
