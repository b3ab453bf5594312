"""Fault injection at the AWS boundary, for tests on moto (tests/integration/test_faults.py).

`inject(monkeypatch, *faults)` wraps botocore's `BaseClient._make_api_call`, so every client in the
process (boto3's and botocore's, the function's own and the tenant-scoped ones of tenantml.tenancy, made
before or after the fault was armed) is reached without knowing where it was created. A matching call
fails the way botocore reports the fault to its caller *after its own retries are spent*:

- an error code (throttling, 5xx, ConditionalCheckFailed, TransactionCanceled...): the modelled exception
  class of that client (`client.exceptions.ConditionalCheckFailedException`...) or ClientError, with the
  HTTP status AWS uses for it, built exactly as botocore builds it from a parsed error response;
- `READ_TIMEOUT` / `CONNECT_TIMEOUT`: botocore's ReadTimeoutError / ConnectTimeoutError;
- `PARTIAL`: the call succeeds with entries refused (PutEvents `FailedEntryCount`, SendMessageBatch
  `Failed`, BatchGetItem `UnprocessedKeys`): the failure no exception reports.

`applied=True` lets the call reach moto first and loses only its answer (a read timeout after the write
committed: the ambiguous case). `race` runs just before a ConditionalCheckFailed is raised, to make the
condition false for real (a concurrent writer won), since a conditional write fails only then.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

READ_TIMEOUT, CONNECT_TIMEOUT, PARTIAL = "ReadTimeout", "ConnectTimeout", "PartialFailure"

STATUS = {   # the HTTP status AWS answers each code with
    "ProvisionedThroughputExceededException": 400, "ThrottlingException": 400, "Throttling": 400,
    "RequestLimitExceeded": 400, "TooManyRequestsException": 429, "SlowDown": 503,
    "RequestThrottled": 400, "InternalServerError": 500, "InternalError": 500, "InternalFailure": 500,
    "InternalException": 500, "ServiceUnavailable": 503, "ServiceUnavailableException": 503,
    "ConditionalCheckFailedException": 400, "TransactionCanceledException": 400, "ValidationError": 400,
    "AccessDenied": 403, "AccessDeniedException": 403,
}


@dataclass
class Fault:
    """`service`: botocore's service id, hyphenized (dynamodb, s3, sqs, eventbridge, cloudwatch,
    sagemaker-runtime, sts); `operation`: the API name (PutItem). The matching calls numbered
    skip+1 .. skip+times fail (`times=None`: every one from skip+1 on)."""

    service: str
    operation: str
    error: str
    times: int | None = 1
    skip: int = 0
    when: Callable[[Mapping[str, Any]], bool] | None = None
    applied: bool = False
    race: Callable[[Mapping[str, Any]], None] | None = None   # gets the call's parameters
    reasons: tuple[str, ...] = ()          # TransactionCanceledException: one code per TransactItem
    seen: int = 0                          # matching calls so far
    injected: int = 0                      # of which failed

    @property
    def id(self) -> str:
        return f"{self.service}.{self.operation}-{self.error}"

    def matches(self, service: str, operation: str, params: Mapping[str, Any]) -> bool:
        return service == self.service and operation == self.operation and \
            (self.when is None or bool(self.when(params)))

    def due(self) -> bool:
        """Called once per matching call: whether this one fails."""
        self.seen += 1
        n = self.seen - self.skip
        fail = n >= 1 and (self.times is None or n <= self.times)
        self.injected += fail
        return fail


@dataclass
class Injector:
    faults: list[Fault] = field(default_factory=list)
    calls: Counter = field(default_factory=Counter)     # (service, operation) -> calls made
    armed: bool = True

    def fault(self, service: str, operation: str, params: Mapping[str, Any]) -> Fault | None:
        for f in self.faults:
            if f.matches(service, operation, params) and f.due():
                return f
        return None

    @contextmanager
    def disarmed(self) -> Iterator[None]:
        """Calls made inside pass untouched (the test's own bookkeeping)."""
        self.armed, before = False, self.armed
        try:
            yield
        finally:
            self.armed = before

    def clear(self) -> None:
        """The fault is over: every later call passes."""
        self.faults.clear()


def _raise(client: Any, operation: str, f: Fault) -> None:
    url = getattr(client.meta, "endpoint_url", "https://aws.invalid")
    if f.error == READ_TIMEOUT:
        raise ReadTimeoutError(endpoint_url=url)
    if f.error == CONNECT_TIMEOUT:
        raise ConnectTimeoutError(endpoint_url=url)
    status = STATUS.get(f.error, 400)
    parsed: dict[str, Any] = {
        "Error": {"Code": f.error, "Message": f"injected {f.error}"},
        "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": "fault-injected", "HTTPHeaders": {},
                             "RetryAttempts": 2}}
    if f.reasons:
        parsed["CancellationReasons"] = [{"Code": c, **({"Message": "The conditional request failed"}
                                                        if c == "ConditionalCheckFailed" else {})}
                                         for c in f.reasons]
    raise client.exceptions.from_code(f.error)(parsed, operation)


def _partial(real: Callable[[Mapping[str, Any]], Any], operation: str, params: Mapping[str, Any]) -> Any:
    """The call with entries refused: PutEvents refuses every entry; SendMessageBatch sends the first
    entry for real and refuses the others; BatchGetItem leaves every key unprocessed."""
    if operation == "PutEvents":
        entries = params["Entries"]
        return {"FailedEntryCount": len(entries), "Entries": [
            {"ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded"} for _ in entries]}
    if operation == "SendMessageBatch":
        first, rest = params["Entries"][:1], params["Entries"][1:]
        sent = real({**params, "Entries": first}) if first else {"Successful": []}
        return {"Successful": sent.get("Successful", []), "Failed": [
            {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "injected"}
            for e in rest]}
    if operation == "BatchGetItem":     # throttled keys come back unprocessed, nothing read
        keys = params["RequestItems"]
        return {"Responses": {t: [] for t in keys}, "UnprocessedKeys": keys}
    raise ValueError(f"no partial failure modelled for {operation}")


@contextmanager
def inject(monkeypatch: Any, *faults: Fault) -> Iterator[Injector]:
    """Arm `faults` for the block (and until `injector.clear()`); every botocore client is reached."""
    injector = Injector(list(faults))
    original = BaseClient._make_api_call

    def make_api_call(client: Any, operation_name: str, api_params: Mapping[str, Any]) -> Any:
        service = client.meta.service_model.service_id.hyphenize()
        if not injector.armed:
            return original(client, operation_name, api_params)
        injector.calls[(service, operation_name)] += 1
        f = injector.fault(service, operation_name, api_params)
        if f is None:
            return original(client, operation_name, api_params)
        if f.error == PARTIAL:
            return _partial(lambda p: original(client, operation_name, p), operation_name, api_params)
        if f.applied:
            original(client, operation_name, api_params)
        if f.race is not None:
            with injector.disarmed():
                f.race(api_params)
        _raise(client, operation_name, f)
        raise AssertionError("unreachable")

    monkeypatch.setattr(BaseClient, "_make_api_call", make_api_call)
    try:
        yield injector
    finally:
        monkeypatch.setattr(BaseClient, "_make_api_call", original)
