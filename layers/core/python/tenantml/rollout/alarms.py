"""The candidate's CloudWatch alarms: the fast, absolute guard of a rollout on AWS. The scheduled controller
(`machine.evaluate`, every minute, from the `signals` table) compares candidate with stable; these alarms
fire on their own, within two or three minutes of a bad candidate, and an EventBridge rule on their state
changes invokes the rollback function, which rolls back. Locally nothing evaluates alarms (moto does not),
so only the controller acts there.

Names. Every alarm the rollback function manages is named `tenantml-rollout-<rollout id>-<signal>`
(`ALARM_PREFIX`, the same prefix as the rule's event pattern, `resources.ROLLOUT_ALARMS`); the rollout id
is the opaque UUID of `machine.new_rollout_id` (canonical: 36 lowercase characters), never the tenant, and
it is matched whole, so deleting one rollout's alarms can never reach another's whose id shares a
beginning. The function may manage names under that prefix only (IAM allows no other, and `delete` refuses
any other name before deleting anything).

Metrics. The inference function publishes EMF metrics in namespace `tenantml` with dimensions
{"rollout": <id>, "version": <version>}: `RolloutRequests` (Count), `RolloutErrors` (Count) and
`RolloutLatency` (Milliseconds, one value per request). `AlarmManager.create` puts two metric math alarms
on the candidate, each 2 of 3 datapoints of `period_s` (60 s), missing data not breaching (no traffic,
no verdict), no alarm actions (EventBridge sees every state change without one):

* `<prefix><id>-errors`: `IF(requests >= k, errors / requests, 0)` > max_error_rate x error_rate_ratio
  (0.01 x 2 = 2% with the default guardrails). The controller rolls back above max(max_error_rate,
  error_rate_ratio x stable's rate); an alarm cannot cheaply follow stable's rate, so it uses the ratio
  applied to the floor: it does not fire on noise at the floor, and it catches a candidate that fails
  outright minutes before the stage's `min_requests` are in. Where stable itself errs above the floor
  this is stricter than the controller (a rollback it would not have made); `k` (`min_period_requests`,
  default 1, i.e. `requests > 0`) raises the traffic a period needs before its rate counts.
* `<prefix><id>-latency`: `IF(n >= k AND stable > 0, candidate / stable, 0)` > p95_ratio, where
  `candidate` and `stable` are `RolloutLatency` with stat `p95` under the same rollout and `n` the
  candidate's `SampleCount`. Percentiles are allowed in a metric math alarm: a MetricDataQuery's
  MetricStat.Stat "can include any CloudWatch statistic or extended statistic". When stable has no traffic
  in a period (a 100% stage) the condition is false (metric math treats a missing value as 0 in
  comparisons and arithmetic), the period's value is 0 and does not breach: the controller judges.

Both expressions guard their division with IF (metric math drops a datapoint that divides by zero) and use
no whole-series function (AVG, MAX, SUM(TS), ...), which AWS advises against in alarms; a missing `errors`
value counts as 0. moto stores these alarms but evaluates no metric math, so the expressions' syntax is
checked against the documentation only (using-metric-math.html), not by a test.

Events. `parse_alarm_event` takes what the rule delivers and says whether to act:

* only an EventBridge "CloudWatch Alarm State Change" from `aws.cloudwatch` counts. CloudWatch can also
  invoke a Lambda function directly as an alarm action, with a different payload (`alarmArn`,
  `accountId`, `alarmData`, no `detail-type`); the platform never configures that, so such a payload is a
  no-op ("alarm-action payload, not an EventBridge event"), not a second way to trigger a rollback;
* the alarm must be one of ours (`rollout_id_of` is not None) and in ALARM: OK and INSUFFICIENT_DATA are
  no-ops (a recovered or silent candidate is the controller's to judge, never a reason to roll forward);
* decision: a composite alarm in ALARM whose actions are suppressed (its state carries
  `actionsSuppressedBy` / `actionsSuppressedReason`: a suppressor alarm in ALARM, or its wait or
  extension period) is a no-op. Suppression is the operator saying "not now" (a maintenance window, an
  incident being handled), and a rollback is this alarm's action in all but name. The scheduled controller
  still rolls back a candidate that breaches its guardrails. A WaitPeriod/ExtensionPeriod suppression ends
  by itself and CloudWatch then runs the alarm's actions, but the documentation describes no second
  state-change event for that, so do not count on one: the controller is what acts after it.
  `AlarmManager` itself creates no composite alarms; this covers one an operator builds under the prefix.
  (Only composite alarms have suppressors, but the state's fields are honoured whatever `kind` the
  configuration suggests.)
* `muteDetail` (alarm mute rules, which silence actions during a window) is not read: mutes are set on
  notifications, and a guardrail breach still rolls back.

Sources (event shapes, APIs and permissions):
  https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/cloudwatch-and-eventbridge.html
  https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/alarms-and-actions-Lambda.html
  https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_CompositeAlarm.html
  https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/Create_Composite_Alarm_Suppression.html
  https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_MetricStat.html
  https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/using-metric-math.html
  https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricAlarm.html
  https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_DescribeAlarms.html
  https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/permissions-reference-cw.html
  https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazoncloudwatch.html
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from tenantml import resources
from tenantml.rollout.machine import Guardrails, Rollout

ALARM_PREFIX = resources.ROLLOUT_ALARM_PREFIX          # "tenantml-rollout-"
SIGNALS = ("errors", "latency")
STATE_CHANGE = "CloudWatch Alarm State Change"
SOURCE = "aws.cloudwatch"
NAMESPACE = "tenantml"
REQUESTS_METRIC, ERRORS_METRIC, LATENCY_METRIC = "RolloutRequests", "RolloutErrors", "RolloutLatency"
EVALUATION_PERIODS, DATAPOINTS_TO_ALARM = 3, 2
DELETE_CHUNK = 100                                      # DeleteAlarms takes at most 100 names

State = Literal["ALARM", "OK", "INSUFFICIENT_DATA"]
Kind = Literal["metric", "metric_math", "composite"]
STATES: tuple[State, ...] = ("ALARM", "OK", "INSUFFICIENT_DATA")

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_ROLLOUT_ID = re.compile(_UUID)
_ALARM_NAME = re.compile(re.escape(ALARM_PREFIX) + rf"(?P<id>{_UUID})-(?P<signal>[a-z0-9][a-z0-9_-]*)")


class AlarmScopeError(RuntimeError):
    """A name outside the rollout's prefix reached `delete`: nothing was deleted."""


def _check_id(rollout_id: object) -> str:
    if not isinstance(rollout_id, str) or not _ROLLOUT_ID.fullmatch(rollout_id):
        raise ValueError(f"rollout id must be a canonical UUID (36 lowercase characters), got {rollout_id!r}")
    return rollout_id


def alarm_name(rollout_id: str, signal: str) -> str:
    return f"{ALARM_PREFIX}{_check_id(rollout_id)}-{signal}"


def alarm_names(rollout_id: str) -> list[str]:
    """The names `AlarmManager.create` gives the rollout's alarms, one per signal."""
    return [alarm_name(rollout_id, s) for s in SIGNALS]


def _parts(name: object) -> tuple[str, str] | None:
    if not isinstance(name, str):
        return None
    m = _ALARM_NAME.fullmatch(name)
    return (m["id"], m["signal"]) if m else None


def rollout_id_of(alarm_name: object) -> str | None:
    """The rollout id in a rollout alarm's name (prefix + 36-character UUID + "-" + signal), else None."""
    parts = _parts(alarm_name)
    return parts[0] if parts else None


def _rollout_prefix(rollout_id: str) -> str:
    return f"{ALARM_PREFIX}{_check_id(rollout_id)}-"


# --- events ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlarmSignal:
    """A rollout alarm that went into ALARM: what the rollback function acts on."""

    rollout_id: str
    alarm_name: str
    signal: str                  # the name's last part: "errors", "latency", or an operator's own
    state: State
    previous_state: State | None
    state_time: datetime         # detail.state.timestamp, in UTC
    kind: Kind
    suppressed: bool             # always False in a returned signal: a suppressed alarm is a no-op
    reason: str                  # detail.state.reason, CloudWatch's words

    @property
    def summary(self) -> str:
        return (f"alarm {self.alarm_name} ({self.kind}) went {self.previous_state or '?'} -> {self.state} at "
                f"{self.state_time.isoformat()}: {self.reason}")


def parse_state_time(value: object) -> datetime | None:
    """CloudWatch's timestamps ("2026-11-30T17:04:40.989+0000", or ISO 8601 with Z) in UTC, else None."""
    if not isinstance(value, str) or not value:
        return None
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo is not None else None


def _kind(configuration: object) -> Kind:
    if not isinstance(configuration, dict):
        return "metric"
    if configuration.get("alarmRule") is not None:
        return "composite"
    metrics = configuration.get("metrics")
    if isinstance(metrics, list) and any(isinstance(m, dict) and m.get("expression") for m in metrics):
        return "metric_math"
    return "metric"


def parse_alarm_event(event: object) -> tuple[AlarmSignal | None, str]:
    """(signal, why) for an event the alarm rule delivered; (None, why it is a no-op) unless a rollout alarm
    went into ALARM unsuppressed. Never raises: whatever arrives, the answer is a no-op or a signal."""
    if not isinstance(event, dict):
        return None, f"not an event: expected a JSON object, got {type(event).__name__}"
    if "alarmData" in event and "detail-type" not in event:
        return None, "alarm-action payload, not an EventBridge event"
    source, detail_type = event.get("source"), event.get("detail-type")
    if source != SOURCE:
        return None, f"source {source!r} is not {SOURCE!r}"
    if detail_type != STATE_CHANGE:
        return None, f"detail-type {detail_type!r} is not {STATE_CHANGE!r}"
    detail = event.get("detail")
    if not isinstance(detail, dict):
        return None, "the event has no detail object"
    name = detail.get("alarmName")
    if not isinstance(name, str) or not name:
        return None, "the event names no alarm (detail.alarmName)"
    parts = _parts(name)
    if parts is None:
        return None, (f"alarm {name!r} is not a rollout alarm ({ALARM_PREFIX}<rollout id>-<signal>): "
                      "not ours to act on")
    state = detail.get("state")
    if not isinstance(state, dict):
        return None, f"alarm {name}: the event has no state object"
    value = state.get("value")
    if value not in STATES:
        return None, f"alarm {name}: unknown state {value!r}"
    previous = detail.get("previousState")
    previous_value = previous.get("value") if isinstance(previous, dict) else None
    previous_state = previous_value if previous_value in STATES else None
    if value != "ALARM":
        return None, (f"alarm {name} is {value} (was {previous_state or 'unknown'}): only ALARM rolls back; "
                      "OK and INSUFFICIENT_DATA are no-ops")
    state_time = parse_state_time(state.get("timestamp"))
    if state_time is None:
        return None, f"alarm {name}: state.timestamp {state.get('timestamp')!r} is not a timestamp"
    kind = _kind(detail.get("configuration"))
    by, why = state.get("actionsSuppressedBy"), state.get("actionsSuppressedReason")
    if by or why:                 # only composites are suppressed; the state's word wins over our `kind`
        return None, (f"{kind.replace('_', ' ')} alarm {name} is in ALARM with its actions suppressed "
                      f"({by or '?'}: {why or 'no reason given'}): the operator's 'not now', a no-op")
    reason = state.get("reason")
    signal = AlarmSignal(rollout_id=parts[0], alarm_name=name, signal=parts[1], state="ALARM",
                         previous_state=previous_state, state_time=state_time, kind=kind, suppressed=False,
                         reason=reason if isinstance(reason, str) else "")
    return signal, f"rollout {parts[0]}: {signal.summary}"


# --- managing the alarms -----------------------------------------------------------------------------------


class AlarmManager:
    """Creates and deletes a rollout's alarms through a CloudWatch client (boto3's or botocore's). Both are
    idempotent: PutMetricAlarm overwrites an alarm of the same name (its state is kept), and `delete`
    deletes what DescribeAlarms finds under the rollout's prefix."""

    def __init__(self, cloudwatch_client: Any, *, namespace: str = NAMESPACE, period_s: int = 60,
                 min_period_requests: int = 1) -> None:
        if period_s <= 0 or (period_s not in (10, 20, 30) and period_s % 60):
            raise ValueError(f"period_s must be 10, 20, 30 or a multiple of 60, got {period_s}")
        if min_period_requests < 1:
            raise ValueError("min_period_requests must be at least 1")
        self._cw, self.namespace, self.period_s = cloudwatch_client, namespace, period_s
        self.min_period_requests = min_period_requests

    # -- create --

    def _stat(self, qid: str, metric: str, version: str, rollout_id: str, stat: str) -> dict[str, Any]:
        return {"Id": qid, "ReturnData": False, "MetricStat": {
            "Metric": {"Namespace": self.namespace, "MetricName": metric,
                       "Dimensions": [{"Name": "rollout", "Value": rollout_id},
                                      {"Name": "version", "Value": version}]},
            "Period": self.period_s, "Stat": stat}}

    def _window(self) -> str:
        return f"{DATAPOINTS_TO_ALARM} of {EVALUATION_PERIODS} x {self.period_s} s"

    def error_alarm(self, rollout: Rollout, guardrails: Guardrails) -> dict[str, Any]:
        """PutMetricAlarm arguments of the candidate's error-rate alarm."""
        threshold = guardrails.max_error_rate * guardrails.error_rate_ratio
        k = self.min_period_requests
        return {
            "AlarmName": alarm_name(rollout.id, "errors"),
            "AlarmDescription": (
                f"tenantml rollout {rollout.id}: candidate version {rollout.candidate} error rate > "
                f"{threshold:.2%} (max_error_rate {guardrails.max_error_rate:g} x error_rate_ratio "
                f"{guardrails.error_rate_ratio:g}; {self._window()}, periods with >= {k} requests) -> "
                f"rollback to {rollout.stable}"),
            "Metrics": [
                self._stat("errors", ERRORS_METRIC, rollout.candidate, rollout.id, "Sum"),
                self._stat("requests", REQUESTS_METRIC, rollout.candidate, rollout.id, "Sum"),
                {"Id": "error_rate", "Expression": f"IF(requests >= {k}, errors / requests, 0)",
                 "Label": f"candidate {rollout.candidate} error rate", "ReturnData": True},
            ],
            "Threshold": threshold,
        }

    def latency_alarm(self, rollout: Rollout, guardrails: Guardrails) -> dict[str, Any]:
        """PutMetricAlarm arguments of the candidate's p95 latency alarm (a ratio to stable's p95)."""
        k = self.min_period_requests
        return {
            "AlarmName": alarm_name(rollout.id, "latency"),
            "AlarmDescription": (
                f"tenantml rollout {rollout.id}: candidate version {rollout.candidate} p95 latency > "
                f"{guardrails.p95_ratio:g} x stable version {rollout.stable}'s ({self._window()}, periods "
                f"with >= {k} candidate requests and stable traffic) -> rollback to {rollout.stable}"),
            "Metrics": [
                self._stat("candidate", LATENCY_METRIC, rollout.candidate, rollout.id, "p95"),
                self._stat("stable", LATENCY_METRIC, rollout.stable, rollout.id, "p95"),
                self._stat("n", LATENCY_METRIC, rollout.candidate, rollout.id, "SampleCount"),
                {"Id": "p95_ratio", "Expression": f"IF(n >= {k} AND stable > 0, candidate / stable, 0)",
                 "Label": f"candidate {rollout.candidate} p95 / stable {rollout.stable} p95",
                 "ReturnData": True},
            ],
            "Threshold": guardrails.p95_ratio,
        }

    def create(self, rollout: Rollout, guardrails: Guardrails | None = None, *,
               tags: Mapping[str, str] | None = None) -> list[str]:
        """Put the candidate's two alarms (the rollout's own guardrails unless `guardrails` is given);
        returns their names. Tags apply when an alarm is created (PutMetricAlarm ignores them on update).
        """
        g = guardrails if guardrails is not None else rollout.guardrails
        names = []
        for spec in (self.error_alarm(rollout, g), self.latency_alarm(rollout, g)):
            self._cw.put_metric_alarm(
                **spec, ComparisonOperator="GreaterThanThreshold", EvaluationPeriods=EVALUATION_PERIODS,
                DatapointsToAlarm=DATAPOINTS_TO_ALARM, TreatMissingData="notBreaching", ActionsEnabled=True,
                **({"Tags": [{"Key": k, "Value": v} for k, v in tags.items()]} if tags else {}))
            names.append(spec["AlarmName"])
        return names

    # -- delete --

    def _listed(self, prefix: str) -> Iterator[str]:
        kwargs: dict[str, Any] = {"AlarmNamePrefix": prefix, "AlarmTypes": ["MetricAlarm"], "MaxRecords": 100}
        while True:
            page = self._cw.describe_alarms(**kwargs)
            for alarm in page.get("MetricAlarms", []):
                yield alarm["AlarmName"]
            token = page.get("NextToken")
            if not token:
                return
            kwargs["NextToken"] = token

    def find(self, rollout_id: str) -> list[str]:
        """The metric alarms under the rollout's prefix (all pages); refuses any name outside it."""
        prefix = _rollout_prefix(rollout_id)
        names = sorted(set(self._listed(prefix)))
        outside = [n for n in names if not n.startswith(prefix)]
        if outside:
            raise AlarmScopeError(f"DescribeAlarms under {prefix!r} returned names outside it: {outside}; "
                                  "nothing deleted")
        return names

    def delete(self, rollout_id: str) -> list[str]:
        """Delete every alarm of the rollout (DescribeAlarms under `<prefix><id>-`, then DeleteAlarms in
        chunks of 100); returns the names deleted. Deleting what is already gone is a no-op."""
        deleted: list[str] = []
        for _ in range(3):           # a concurrent delete can make a chunk fail: list again, then retry
            names = self.find(rollout_id)
            if not names:
                break
            try:
                for i in range(0, len(names), DELETE_CHUNK):
                    chunk = names[i:i + DELETE_CHUNK]
                    self._cw.delete_alarms(AlarmNames=chunk)
                    deleted += chunk
            except Exception as exc:
                if _error_code(exc) != "ResourceNotFound":
                    raise
        else:
            names = self.find(rollout_id)
            if names:
                raise RuntimeError(f"rollout {rollout_id}: alarms still present after 3 attempts: {names}")
        return sorted(set(deleted))


def _error_code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    return error.get("Code") if isinstance(error, dict) else None
