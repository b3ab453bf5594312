"""Drift jobs: the scheduler enumerates what to check, the worker checks one target.

    schedule (hourly) -> drift_scheduler -> SQS drift-jobs, one message per (tenant, model, version)
                         with capture frames in the window -> drift_worker -> reports/..., metrics,
                         DriftDetected on the bus

The scheduler lists the capture partitions (`capture/tenant=/model=/version=/date=/hour=`) and sends one
DriftJob per target that has frames in the window; it runs once per scheduled time (the handler is
idempotent on it), so a repeated delivery enqueues nothing twice. The worker resolves the version (a
tenant's own model or the shared one it called), loads the version's baseline.json, streams the window's
frames through a `Window` (memory flat in the window's size), and writes a JSON and a self-contained HTML
report to `reports/tenant=/model=/version=/<window end>.{json,html}` in the artifact bucket. A job is
deterministic in its window: run twice, it writes the same report keys and a DriftDetected event with the
same change_id. A corrupt frame fails the job (retried, then the DLQ); a missing baseline is a report
(verdict `no_baseline`), not a failure, since retrying cannot fix it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tenantml.errors import ModelNotFound, ModelUnavailable
from tenantml.events import DriftDetected, event_time
from tenantml.monitoring.baseline import Baseline
from tenantml.monitoring.capture import PREFIX, SUFFIX, decode_frame, partition_prefix
from tenantml.monitoring.feedback import AccuracyAccumulator, Feedback, FeedbackIndex, accuracy_report
from tenantml.monitoring.objects import list_keys, list_pages, stamped_keys
from tenantml.monitoring.report import render_html, report_json
from tenantml.monitoring.stats import Thresholds
from tenantml.monitoring.window import Window
from tenantml.registry import ModelVersion, Registry

REPORTS = "reports"
FEEDBACK_HORIZON = timedelta(days=7)   # feedback read for a window: what arrived within a week of its start
BASELINE_FILE = "baseline.json"


class DriftJob(BaseModel):
    """One drift check: a (tenant, model, version) and the window [start, end)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str = Field(min_length=1, max_length=64)
    model: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    window_start: datetime
    window_end: datetime

    @property
    def change_id(self) -> str:
        """The same for every run of this check (deduplication key of its data/prediction DriftDetected)."""
        return self.change_id_of("")

    def change_id_of(self, kind: str) -> str:
        """The deduplication key of this check's DriftDetected of `kind` ("" for data/prediction drift)."""
        key = (f"{self.tenant}/{self.model}/{self.version}/"
               f"{self.window_start:%Y%m%dT%H%M}/{self.window_end:%Y%m%dT%H%M}")
        return str(uuid.UUID(hashlib.sha256((key + (f"/{kind}" if kind else "")).encode()).hexdigest()[:32]))


def window_for(scheduled: datetime, minutes: int) -> tuple[datetime, datetime]:
    """The window a run at `scheduled` checks: the last whole `minutes` before it."""
    scheduled = scheduled.astimezone(UTC).replace(second=0, microsecond=0)
    since_midnight = scheduled.hour * 60 + scheduled.minute
    end = scheduled - timedelta(minutes=since_midnight % minutes)
    return end - timedelta(minutes=minutes), end


def report_key(job: DriftJob, extension: str) -> str:
    return (f"{REPORTS}/tenant={job.tenant}/model={job.model}/version={job.version}/"
            f"{job.window_end:%Y-%m-%dT%H-%MZ}.{extension}")


class CaptureIndex:
    """The capture partitions in the artifact bucket (an S3 client: boto3's or botocore's)."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3, self._bucket = s3, bucket

    def _prefixes(self, prefix: str) -> Iterator[str]:
        for page in list_pages(self._s3, self._bucket, prefix, delimiter="/"):
            for p in page.get("CommonPrefixes") or []:
                yield p["Prefix"]

    def targets(self) -> Iterator[tuple[str, str, str]]:
        """Every (tenant, model, version) that ever captured traffic."""
        for t in self._prefixes(f"{PREFIX}/"):
            for m in self._prefixes(t):
                for v in self._prefixes(m):
                    parts = [seg.split("=", 1)[1] for seg in v.rstrip("/").split("/")[1:]]
                    if len(parts) == 3:
                        yield parts[0], parts[1], parts[2]

    def frames(self, tenant: str, model: str, version: str, start: datetime, end: datetime) -> Iterator[str]:
        """Keys of the frames written in [start, end), oldest first."""
        yield from stamped_keys(self._s3, self._bucket, partition_prefix(tenant, model, version), SUFFIX,
                                start, end)

    def read(self, key: str) -> bytes:
        return self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()


def plan_jobs(index: CaptureIndex, scheduled: datetime, window_minutes: int) -> list[DriftJob]:
    """One job per target with at least one frame in the window before `scheduled`."""
    start, end = window_for(scheduled, window_minutes)
    jobs = []
    for tenant, model, version in index.targets():
        if next(index.frames(tenant, model, version, start, end), None) is not None:
            jobs.append(DriftJob(tenant=tenant, model=model, version=version, window_start=start,
                                 window_end=end))
    return jobs


@dataclass(frozen=True)
class DriftOutcome:
    job: DriftJob
    verdict: str
    report_key: str
    event_id: str | None                   # the first DriftDetected put (data/prediction, else accuracy)
    event_ids: tuple[str, ...] = ()
    accuracy_verdict: str | None = None


class DriftWorker:
    """Runs one DriftJob. `bus`: tenantml.events.bus.EventBridgeBus; `metrics`: a Powertools Metrics."""

    def __init__(self, *, index: CaptureIndex, registry: Registry, bus: Any, s3: Any, bucket: str,
                 thresholds: Thresholds, metrics: Any | None = None, feedback: FeedbackIndex | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), signals: Any | None = None,
                 ) -> None:
        """`signals`: tenantml.rollout.signals.DynamoSignals; a live rollout's versions get the window's
        accuracy there, for the rollout controller's accuracy guardrail."""
        self.index, self.registry, self.bus = index, registry, bus
        self._s3, self._bucket = s3, bucket
        self.thresholds = thresholds
        self.metrics = metrics
        self.feedback = feedback
        self._clock = clock
        self.signals = signals

    def _thresholds(self, mv: ModelVersion | None) -> Thresholds:
        """The platform's thresholds with the model's own overrides (manifest `drift_thresholds`)."""
        overrides = mv.manifest.drift_thresholds if mv is not None else {}
        return Thresholds.model_validate({**self.thresholds.model_dump(), **overrides}) if overrides \
            else self.thresholds

    def _feedback(self, job: DriftJob) -> Feedback | None:
        """The model's feedback since the window started (at most FEEDBACK_HORIZON after it)."""
        if self.feedback is None:
            return None
        until = min(self._clock(), job.window_start + FEEDBACK_HORIZON)
        fb = self.feedback.load(job.tenant, job.model, job.window_start, until)
        return fb if fb.items else None

    def _accuracy_trend(self, job: DriftJob, limit: int = 24) -> list[dict[str, Any]]:
        """Accuracy of the version's earlier windows (their reports), oldest first."""
        prefix = f"{REPORTS}/tenant={job.tenant}/model={job.model}/version={job.version}/"
        current = report_key(job, "json")
        keys = sorted(k for k in list_keys(self._s3, self._bucket, prefix)
                      if k.endswith(".json") and k < current)
        trend = []
        for key in keys[-limit:]:
            earlier = json.loads(self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read())
            acc = earlier.get("accuracy") or {}
            if acc.get("value") is not None:
                trend.append({"window_end": earlier["window"]["end"], "value": acc["value"],
                              "matched": acc.get("matched", 0)})
        return trend

    def _baseline(self, mv: ModelVersion) -> Baseline | None:
        from tenantml.manifest import sha256_bytes  # noqa: PLC0415

        entry = mv.manifest.files.get(BASELINE_FILE)
        if entry is None:
            return None
        key = f"models/{mv.owner}/{mv.model}/{mv.version}/{BASELINE_FILE}"
        try:
            data = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        except Exception as exc:  # noqa: BLE001 - a missing object is a missing baseline; others retry
            if (getattr(exc, "response", None) or {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        if sha256_bytes(data) != entry.sha256:
            raise ModelUnavailable(detail=f"{key}: sha256 does not match the manifest")
        return Baseline.model_validate_json(data)

    def run(self, job: DriftJob) -> DriftOutcome:
        """The job, acting for its tenant: with tenant-scoped clients (worker_from_settings with a
        tenant data role) its capture, feedback, baseline, registry and report calls reach that tenant's
        data only."""
        from tenantml.tenancy import acting_for  # noqa: PLC0415

        with acting_for(job.tenant):
            return self._run(job)

    def _run(self, job: DriftJob) -> DriftOutcome:
        try:
            mv = self.registry.resolve(job.tenant, job.model, job.version)
        except ModelNotFound:
            mv = None
        baseline = self._baseline(mv) if mv is not None else None
        thresholds = self._thresholds(mv)
        window = accuracy = None
        if baseline is not None:
            window = Window(baseline, (job.tenant, job.model, job.version))
            feedback = self._feedback(job)
            accuracy = AccuracyAccumulator(feedback) if feedback is not None else None
            keys = self.index.frames(job.tenant, job.model, job.version, job.window_start, job.window_end)
            for key in keys:
                frame = decode_frame(self.index.read(key))
                window.add(frame)
                if accuracy is not None:
                    accuracy.add(frame)
        report = report_json(job, window, thresholds,
                             reason=None if baseline is not None else
                             ("the model version is no longer registered" if mv is None else
                              "the model version has no baseline.json"))
        if accuracy is not None and baseline is not None:
            report["accuracy"] = accuracy_report(accuracy, baseline.performance, thresholds,
                                                 self._accuracy_trend(job), report["window"]["end"])
            report["drift"]["accuracy"] = report["accuracy"]["verdict"] == "drop"
            report["summary"] += f"; {report['accuracy']['reason']}"
            self._rollout_accuracy(job, mv, accuracy)
        key = report_key(job, "json")
        self._put(key, json.dumps(report, indent=1).encode(), "application/json")
        self._put(report_key(job, "html"), render_html(report).encode(), "text/html; charset=utf-8")
        self._record(job, report)
        events = []
        kinds = [k for k in ("data", "prediction") if report["drift"][k]]
        if kinds:
            events.append(self._detected(job, report, kinds[0], job.change_id, report["summary"],
                                         drifted_features=[f["name"] for f in report["features"]
                                                           if f["verdict"] == "drift"]))
        acc = report.get("accuracy")
        if report["drift"].get("accuracy"):
            events.append(self._detected(job, report, "accuracy", job.change_id_of("accuracy"), acc["reason"],
                                         metric=acc["metric"], value=acc["value"], baseline=acc["baseline"]))
        return DriftOutcome(job, report["verdict"], key, events[0] if events else None, tuple(events),
                            acc["verdict"] if acc else None)

    def _detected(self, job: DriftJob, report: dict[str, Any], kind: str, change_id: str, reason: str,
                  **fields: Any) -> str:
        detail = DriftDetected(tenant=job.tenant, model=job.model, version=job.version, actor="drift_worker",
                               change_id=change_id, at=report["generated_for"], kind=kind, reason=reason,
                               window_start=report["window"]["start"], window_end=report["window"]["end"],
                               report=report_key(job, "json"), **fields)
        return self.bus.put("DriftDetected", detail)

    def _rollout_accuracy(self, job: DriftJob, mv: ModelVersion | None, accuracy: AccuracyAccumulator,
                          ) -> None:
        rollout = mv.rollout if mv is not None else None
        if self.signals is None or rollout is None or not rollout.live or accuracy.feedback.kind != "label" \
                or job.version not in (rollout.stable, rollout.candidate) or not accuracy.matched:
            return
        self.signals.put_accuracy(rollout.id, job.version, job.window_end, job.tenant,
                                  labelled=accuracy.matched, correct=accuracy.correct)

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType=content_type)

    def _record(self, job: DriftJob, report: dict[str, Any]) -> None:
        """Metrics per model and version (never the tenant: unbounded, and not a metric's business). One
        EMF document per job (single_metric): a batch holds jobs of different models."""
        if self.metrics is None or report["verdict"] in ("no_baseline",):
            return
        from aws_lambda_powertools.metrics import MetricUnit, single_metric  # noqa: PLC0415

        from tenantml.observability import NAMESPACE  # noqa: PLC0415

        dims = {"model": job.model, "version": job.version}
        figures = [("DriftShare", MetricUnit.Percent, 100 * report["share"]),
                   ("DriftedFeatures", MetricUnit.Count, report["n_drifted"]),
                   ("DriftWindowRows", MetricUnit.Count, report["rows"])]
        acc = report.get("accuracy") or {}
        if acc.get("value") is not None and acc["verdict"] != "insufficient_data":
            figures.append(("Accuracy", MetricUnit.Percent, 100 * acc["value"]) if acc["metric"] == "accuracy"
                           else ("MeanAbsoluteError", MetricUnit.None_, acc["value"]))
        for name, unit, value in figures:
            with single_metric(name=name, unit=unit, value=value, namespace=NAMESPACE,
                               default_dimensions=dims):
                pass


class ScheduledEvent(BaseModel):
    """The fields of the EventBridge Scheduler envelope the scheduler reads (resources.ScheduleTrigger)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    time: datetime
    resources: list[str] = Field(min_length=1)
    detail_type: str = Field(alias="detail-type")


class DriftScheduler:
    """Plans the jobs of one scheduled time and sends them to the drift queue."""

    def __init__(self, *, index: CaptureIndex, sqs: Any, queue_name: str, window_minutes: int) -> None:
        self.index, self._sqs, self.queue_name, self.window_minutes = index, sqs, queue_name, window_minutes
        self._queue_url: str | None = None

    @property
    def queue_url(self) -> str:
        """Resolved on first use (init makes no AWS call)."""
        if self._queue_url is None:
            self._queue_url = self._sqs.get_queue_url(QueueName=self.queue_name)["QueueUrl"]
        return self._queue_url

    def run(self, event: dict[str, Any]) -> dict[str, Any]:
        scheduled = ScheduledEvent.model_validate(event)
        jobs = plan_jobs(self.index, scheduled.time, self.window_minutes)
        for i in range(0, len(jobs), 10):
            chunk = jobs[i:i + 10]
            resp = self._sqs.send_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(n), "MessageBody": job.model_dump_json()} for n, job in enumerate(chunk)])
            if resp.get("Failed"):
                # Raising makes the run retry (the idempotency record is released); the jobs already sent
                # are sent again then, which the worker absorbs: a job is deterministic in its window.
                raise RuntimeError(f"{len(resp['Failed'])} drift jobs were not queued: {resp['Failed'][0]}")
        start, end = window_for(scheduled.time, self.window_minutes)
        return {"scheduled": event_time(scheduled.time), "window": [event_time(start), event_time(end)],
                "jobs": len(jobs)}



def scheduler_from_settings(settings: Any, aws: Any) -> DriftScheduler:
    """settings: DriftSchedulerSettings."""
    from tenantml.aws import client  # noqa: PLC0415

    return DriftScheduler(index=CaptureIndex(client("s3", aws), settings.artifact_bucket),
                          sqs=client("sqs", aws), queue_name=settings.drift_queue_name,
                          window_minutes=settings.drift_window_minutes)


def worker_from_settings(drift: Any, registry: Any, publisher: Any, aws: Any, metrics: Any | None = None,
                         signals_table: str | None = None, tenancy: Any | None = None) -> DriftWorker:
    """drift: DriftSettings; registry: RegistrySettings; publisher: PublisherSettings; signals_table: the
    rollout signals (SignalSettings); tenancy: TenancySettings. With a tenant data role, the job's S3 and
    registry calls run as the job's tenant (tenantml.tenancy); the bus and the signals stay the function's."""
    from tenantml.aws import client  # noqa: PLC0415
    from tenantml.events.bus import EventBridgeBus  # noqa: PLC0415
    from tenantml.registry.dynamo import DynamoRegistry  # noqa: PLC0415
    from tenantml.tenancy import ScopedClient, TenantSessions  # noqa: PLC0415

    sessions = TenantSessions.from_settings(tenancy, aws) if tenancy is not None else None
    s3 = ScopedClient(sessions, "s3") if sessions is not None else client("s3", aws)
    ddb = ScopedClient(sessions, "dynamodb") if sessions is not None else client("dynamodb", aws)
    return DriftWorker(index=CaptureIndex(s3, drift.artifact_bucket),
                       registry=DynamoRegistry(registry.registry_table, aws, client=ddb),
                       bus=EventBridgeBus(publisher.event_bus_name, aws), s3=s3,
                       bucket=drift.artifact_bucket, feedback=FeedbackIndex(s3, drift.artifact_bucket),
                       thresholds=Thresholds(min_samples=drift.drift_min_samples), metrics=metrics,
                       signals=_signals(signals_table, aws))


def _signals(table: str | None, aws: Any) -> Any:
    if not table:
        return None
    from tenantml.aws import client  # noqa: PLC0415
    from tenantml.rollout.signals import DynamoSignals  # noqa: PLC0415

    return DynamoSignals(client("dynamodb", aws), table)


class ReportIndex:
    """The drift reports of one tenant's model, newest first (the admin API and `tenantml drift report`).
    Keys are listed under the tenant's own prefix only: another tenant's reports are never listed."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3, self._bucket = s3, bucket

    def latest(self, tenant: str, model: str, limit: int = 10) -> list[dict[str, Any]]:
        prefix = f"{REPORTS}/tenant={tenant}/model={model}/"
        keys = [k for k in list_keys(self._s3, self._bucket, prefix) if k.endswith(".json")]
        keys.sort(key=lambda k: k.rsplit("/", 1)[-1], reverse=True)    # by window end, then version
        out = []
        for key in keys[:limit]:
            report = json.loads(self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read())
            drifted = [f["name"] for f in report["features"] if f["verdict"] == "drift"]
            out.append({"version": report["version"], "window": report["window"],
                        "verdict": report["verdict"], "summary": report["summary"], "rows": report["rows"],
                        "drifted_features": drifted, "report": key,
                        "accuracy": {k: (report.get("accuracy") or {}).get(k)
                                     for k in ("metric", "value", "baseline", "matched", "verdict")}
                        if report.get("accuracy") else None,
                        "html": key[: -len(".json")] + ".html"})
        return out
