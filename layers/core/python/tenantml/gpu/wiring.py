"""The async path's pieces built from settings (the functions' init), AWS clients created lazily so
that the inference function pays nothing for them until its first GPU request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tenantml import resources
from tenantml.aws import client
from tenantml.gpu import requests as rq
from tenantml.gpu.submit import AsyncSubmitter, powertools_idempotency
from tenantml.registry import ModelVersion
from tenantml.serving import oip
from tenantml.settings import AsyncSettings, AwsSettings
from tenantml.tenancy import ScopedClient, TenantSessions

if TYPE_CHECKING:
    from tenantml.gpu.dispatch import Dispatcher
    from tenantml.gpu.results import ResultRecorder


def _client(service: str, aws: AwsSettings, sessions: TenantSessions | None) -> Any:
    """The function's own client, or one that calls as the tenant acted for (tenantml.tenancy)."""
    return ScopedClient(sessions, service) if sessions is not None else client(service, aws)


def _store(settings: AsyncSettings, aws: AwsSettings, sessions: TenantSessions | None = None,
           ) -> rq.RequestStore:
    return rq.RequestStore(_client("dynamodb", aws, sessions), settings.requests_table,
                           retention_s=settings.async_retention_days * 86400)


def _objects(bucket: str, aws: AwsSettings, sessions: TenantSessions | None = None,
             ) -> tuple[Callable[[str], bytes], Callable[[str, bytes], None]]:
    s3 = _client("s3", aws, sessions)

    def get(key: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def put(key: str, data: bytes) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/json")

    return get, put


def _queue_sender(queue_name: str, aws: AwsSettings) -> Callable[[str, int], None]:
    sqs = client("sqs", aws)
    url: list[str] = []

    def send(body: str, delay_s: int = 0) -> None:
        if not url:
            url.append(sqs.get_queue_url(QueueName=queue_name)["QueueUrl"])
        sqs.send_message(QueueUrl=url[0], MessageBody=body, DelaySeconds=delay_s)

    return send


def submitter(settings: AsyncSettings, *, bucket: str, idempotency_table: str | None,
              aws: AwsSettings, sessions: TenantSessions | None = None) -> AsyncSubmitter:
    """The inference function's GPU backend. With `sessions`, the request item, the payload and the answer
    are read and written as the requesting tenant; the idempotency records and the queue stay the
    function's own."""
    get, put = _objects(bucket, aws, sessions)
    send = _queue_sender(settings.gpu_queue_name, aws)
    idempotency = powertools_idempotency(idempotency_table, client("dynamodb", aws)) \
        if idempotency_table else None
    return AsyncSubmitter(store=_store(settings, aws, sessions), put_object=put, get_object=get,
                          enqueue=lambda body: send(body, 0), idempotency=idempotency)


class LazySubmitter:
    """The inference service's GPU backend, built on its first use (most environments never need it)."""

    def __init__(self, build: Callable[[], AsyncSubmitter]) -> None:
        self._build, self._it, self._lock = build, None, threading.Lock()
        self._context: Any = None

    def register_lambda_context(self, context: Any) -> None:
        self._context = context

    def _get(self) -> AsyncSubmitter:
        with self._lock:
            if self._it is None:
                self._it = self._build()
            self._it.register_lambda_context(self._context)
            return self._it

    def submit(self, tenant: str, mv: ModelVersion, request: oip.InferRequest,
               tensors: Mapping[str, oip.Tensor], **kwargs: Any,
               ) -> tuple[int, dict[str, Any], dict[str, str]]:
        return self._get().submit(tenant, mv, request, tensors, **kwargs)

    def status(self, tenant: str, request_id: str) -> tuple[int, str, dict[str, str]]:
        return self._get().status(tenant, request_id)


def sagemaker_runtime(settings: AsyncSettings, aws: AwsSettings) -> Any:
    """The SageMaker runtime client; locally, pointed at the stand-in (tenantml.local.sagemaker)."""
    if settings.sagemaker_runtime_url:
        aws = aws.model_copy(update={"endpoint_url": settings.sagemaker_runtime_url})
    return client("sagemaker-runtime", aws)


def dispatcher(settings: AsyncSettings, *, bucket: str, aws: AwsSettings,
               sessions: TenantSessions | None = None) -> Dispatcher:
    """gpu_dispatch's. With `sessions`, request items are read and moved as the job's tenant; the
    endpoint call and the re-queue stay the function's own."""
    from tenantml.gpu.dispatch import Dispatcher  # noqa: PLC0415 - gpu_dispatch's only

    queue = next(q for q in resources.QUEUES if q.setting == "gpu_queue_name")
    return Dispatcher(store=_store(settings, aws, sessions), runtime=sagemaker_runtime(settings, aws),
                      requeue=_queue_sender(settings.gpu_queue_name, aws), bucket=bucket,
                      endpoint_name=settings.gpu_endpoint_name,
                      request_timeout_s=settings.gpu_request_timeout_seconds,
                      max_receive_count=queue.max_receive_count)


def recorder(settings: AsyncSettings, *, bucket: str, aws: AwsSettings,
             on_completed: Callable[[rq.AsyncRequest, float | None], None] | None = None) -> ResultRecorder:
    from tenantml.gpu.results import ResultRecorder  # noqa: PLC0415 - gpu_result's only

    get, put = _objects(bucket, aws)
    return ResultRecorder(store=_store(settings, aws), bucket=bucket, get_object=get, put_object=put,
                          on_completed=on_completed)
