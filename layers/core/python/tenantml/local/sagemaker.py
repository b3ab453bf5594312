"""A local stand-in for a SageMaker asynchronous inference endpoint, so gpu_dispatch's own code path
(boto3's `sagemaker-runtime` client, `InvokeEndpointAsync`) runs end to end without AWS.

moto answers InvokeEndpointAsync with a canned output location and never runs a model; this stand-in is
what SageMaker does instead:

    POST /endpoints/<name>/async-invocations   (the runtime API's REST shape: X-Amzn-SageMaker-* headers)
        -> 202 {"InferenceId"}, X-Amzn-SageMaker-OutputLocation / -FailureLocation; the request is queued
    a worker per concurrent invocation slot (MaxConcurrentInvocationsPerInstance)
        -> reads the input from S3 (moto), POSTs it to the container's /invocations (gpu_endpoint, run
           as a process on CPU), writes the answer or the failure to S3 and publishes SageMaker's success
           or error notification on the SNS topics (moto), which feed the gpu-results queue

Scale to zero, as deployed: the endpoint starts with no instance. A request queued while there is none is
the HasBacklogWithoutCapacity case: with `autoscale` on, the stand-in starts the container (the step
scaling policy's scale-out), and stops it again after `idle_s` without work (scale-in to 0). Requests
wait in the queue meanwhile, exactly as SageMaker's internal queue holds them; nothing fails. The e2e
tests turn autoscale off and set the capacity by hand (`set_capacity`).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tenantml.aws import client
from tenantml.gpu import requests as rq
from tenantml.settings import AwsSettings, environment

log = logging.getLogger("tenantml-local.sagemaker")
_PATH_PREFIX, _PATH_SUFFIX = "/endpoints/", "/async-invocations"
H = "X-Amzn-SageMaker-"


@dataclass(frozen=True)
class _Job:
    inference_id: str
    input_location: str
    custom_attributes: str
    output_key: str
    failure_key: str
    received: str


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ContainerProcess:
    """The gpu_endpoint container as a local process on CPU (`python -m gpu_endpoint.server`)."""

    def __init__(self, model_dir: Path, *, root: Path, port: int | None = None,
                 start_timeout_s: float = 120.0, on_line: Callable[[str], None] | None = None,
                 env: dict[str, str] | None = None) -> None:
        """`on_line`: each line the container logs (SageMaker sends them to the endpoint's CloudWatch log
        group; local mode ships them to the emulator's)."""
        self.model_dir, self.root = model_dir, root
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self._on_line, self._env = on_line, env or {}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        env = environment({**self._env, "PYTHONPATH": os.pathsep.join([str(self.root), *sys.path])})
        self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "gpu_endpoint.server", "--model-dir", str(self.model_dir),
             "--port", str(self.port)], cwd=self.root, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if self._on_line else subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if self._on_line is not None:
            threading.Thread(target=self._forward, args=(self._proc,), name="gpu-container-log",
                             daemon=True).start()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the GPU container exited with {self._proc.returncode} while starting")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the GPU container did not answer /ping within {self.start_timeout_s:.0f} s")

    def _forward(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None and self._on_line is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line:
                try:
                    self._on_line(line)
                except Exception:  # noqa: BLE001 - logging never stops the container
                    log.debug("container log line dropped", exc_info=True)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def invoke(self, body: bytes, custom_attributes: str, timeout_s: float) -> tuple[int, bytes]:
        req = urllib.request.Request(f"{self.url}/invocations", data=body, method="POST",  # noqa: S310
                                     headers={"Content-Type": "application/json",
                                              f"{H}Custom-Attributes": custom_attributes})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 - loopback
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


class LocalAsyncEndpoint:
    """The stand-in (see the module docstring). `start()` serves the runtime API on `url`."""

    def __init__(self, aws: AwsSettings, *, endpoint_name: str, bucket: str, success_topic: str,
                 error_topic: str, container: ContainerProcess | Any, max_concurrency: int = 32,
                 autoscale: bool = True, idle_s: float = 300.0, invocation_timeout_s: float = 60.0,
                 port: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.aws, self.endpoint_name, self.bucket = aws, endpoint_name, bucket
        self.success_topic, self.error_topic = success_topic, error_topic
        self.container, self.max_concurrency = container, max_concurrency
        self.autoscale, self.idle_s, self.invocation_timeout_s = autoscale, idle_s, invocation_timeout_s
        self._clock = clock
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._capacity = threading.Event()      # set: an instance is up
        self._scale = threading.Lock()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._last_work = clock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self.invocations = 0                    # requests accepted (the e2e tests read these)
        self.completed = 0

    # --- the runtime API --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def capacity(self) -> int:
        return 1 if self._capacity.is_set() else 0

    @property
    def backlog(self) -> int:
        return self._jobs.qsize()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:   # the access log stays quiet
                return

            def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None,
                        error: str | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if error:
                    self.send_header("x-amzn-ErrorType", error)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                if not (path.startswith(_PATH_PREFIX) and path.endswith(_PATH_SUFFIX)):
                    self._answer(404, {"message": "unknown operation"}, error="UnknownOperationException")
                    return
                name = path[len(_PATH_PREFIX):-len(_PATH_SUFFIX)]
                status, body, headers, error = endpoint.accept(name, self.headers)
                self._answer(status, body, headers, error)

        return Handler

    def accept(self, name: str, headers: Any) -> tuple[int, dict[str, Any], dict[str, str], str | None]:
        if name != self.endpoint_name:
            return 400, {"message": f"Endpoint {name} of account 000000000000 not found."}, {}, \
                "ValidationError"
        location = headers.get(f"{H}InputLocation")
        if not location:
            return 400, {"message": "InputLocation is required"}, {}, "ValidationError"
        inference_id = headers.get(f"{H}Inference-Id") or str(uuid.uuid4())
        token = uuid.uuid4().hex
        job = _Job(inference_id, location, headers.get(f"{H}Custom-Attributes") or "",
                   f"{rq.ASYNC_PREFIX}/output/{token}.out", f"{rq.ASYNC_PREFIX}/failures/{token}-error.out",
                   datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        self._jobs.put(job)
        self.invocations += 1
        return 202, {"InferenceId": inference_id}, {
            f"{H}OutputLocation": rq.s3_uri(self.bucket, job.output_key),
            f"{H}FailureLocation": rq.s3_uri(self.bucket, job.failure_key)}, None

    # --- capacity ----------------------------------------------------------------------------------

    def set_capacity(self, instances: int) -> None:
        """0: stop the container (requests wait); 1: start it (blocks until it answers /ping)."""
        with self._scale:
            if instances > 0 and not self._capacity.is_set():
                self.container.start()
                self._last_work = self._clock()
                self._capacity.set()
                log.info("GPU endpoint %s: 1 instance (container at %s)", self.endpoint_name,
                         getattr(self.container, "url", "?"))
            elif instances <= 0 and self._capacity.is_set():
                self._capacity.clear()
                self.container.stop()
                log.info("GPU endpoint %s: scaled in to 0 instances", self.endpoint_name)

    def _autoscaler(self) -> None:
        while not self._stop.wait(0.2):
            if not self.autoscale:
                continue
            try:
                if not self._capacity.is_set() and self.backlog > 0:     # HasBacklogWithoutCapacity
                    self.set_capacity(1)
                elif self._capacity.is_set() and self.backlog == 0 and self._busy == 0 \
                        and self._clock() - self._last_work > self.idle_s:
                    self.set_capacity(0)
            except Exception:  # noqa: BLE001 - a failed scale-out is retried on the next tick
                log.exception("GPU endpoint %s: scaling failed", self.endpoint_name)

    # --- the instance's work -----------------------------------------------------------------------

    def _worker(self) -> None:
        s3, sns = client("s3", self.aws), client("sns", self.aws)
        while not self._stop.is_set():
            if not self._capacity.wait(0.2):
                continue
            try:
                job = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            if job is None:
                return
            with self._busy_lock:
                self._busy += 1
            try:
                self._run(job, s3, sns)
            except Exception:  # noqa: BLE001 - SageMaker retries internally; here: put it back once up
                log.exception("GPU endpoint %s: invocation %s failed", self.endpoint_name, job.inference_id)
                time.sleep(0.5)
                self._jobs.put(job)
            finally:
                with self._busy_lock:
                    self._busy -= 1
                self._last_work = self._clock()

    def _run(self, job: _Job, s3: Any, sns: Any) -> None:
        bucket, key = rq.split_s3_uri(job.input_location)
        base = {"awsRegion": self.aws.region, "receivedTime": job.received, "inferenceId": job.inference_id,
                "eventVersion": "1.0", "eventSource": "aws:sagemaker", "eventName": "InferenceResult",
                "requestParameters": {"contentType": "application/json", "endpointName": self.endpoint_name,
                                      "inputLocation": job.input_location}}
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            status, answer = 400, json.dumps({"error": "input not found"}).encode()
        else:
            status, answer = self.container.invoke(body, job.custom_attributes, self.invocation_timeout_s)
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if status == 200:
            s3.put_object(Bucket=self.bucket, Key=job.output_key, Body=answer, ContentType="application/json")
            note = {**base, "eventTime": now, "invocationStatus": "Completed",
                    "responseParameters": {"contentType": "application/json",
                                           "outputLocation": rq.s3_uri(self.bucket, job.output_key)}}
            topic = self.success_topic
        else:
            s3.put_object(Bucket=self.bucket, Key=job.failure_key, Body=answer,
                          ContentType="application/json")
            kind = "client" if 400 <= status < 500 else "server"
            note = {**base, "eventTime": now, "invocationStatus": "Failed",
                    "failureReason": f"ClientError: Received {kind} error ({status}) from model. See the "
                                     "SageMaker Endpoint logs in your account for more information.",
                    "responseParameters": {"contentType": "application/json",
                                           "failureLocation": rq.s3_uri(self.bucket, job.failure_key)}}
            topic = self.error_topic
        sns.publish(TopicArn=topic, Message=json.dumps(note))
        self.completed += 1

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> LocalAsyncEndpoint:
        self._threads = [threading.Thread(target=self._server.serve_forever, name="sagemaker-api",
                                          daemon=True),
                         threading.Thread(target=self._autoscaler, name="sagemaker-autoscale", daemon=True),
                         *(threading.Thread(target=self._worker, name=f"sagemaker-worker-{i}", daemon=True)
                           for i in range(self.max_concurrency))]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for _ in range(self.max_concurrency):
            self._jobs.put(None)
        for t in self._threads:
            t.join(5)
        self._capacity.clear()
        self.container.stop()


def provision_topics(aws: AwsSettings, prefix: str, results_queue_url: str) -> tuple[str, str]:
    """The endpoint's success and error topics (as the CDK construct creates them), both subscribed by
    the gpu-results queue; returns their ARNs."""
    sns, sqs = client("sns", aws), client("sqs", aws)
    queue_arn = sqs.get_queue_attributes(QueueUrl=results_queue_url,
                                         AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    arns = []
    for kind in ("success", "error"):
        arn = sns.create_topic(Name=f"{prefix}-gpu-{kind}")["TopicArn"]
        sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn)
        arns.append(arn)
    return arns[0], arns[1]
