"""tenantml.rollout.alarms without AWS: alarm names, the events the alarm rule delivers (events/rollback-
alarm-*.json, shaped after AWS's documented samples) and AlarmManager's calls through a recording client
(pagination, chunks of 100, the prefix guard, retries). tests/integration/test_rollout_alarms_moto.py runs
the same calls against moto."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tenantml import resources
from tenantml.rollout import alarms
from tenantml.rollout.alarms import (
    ALARM_PREFIX,
    AlarmManager,
    AlarmScopeError,
    AlarmSignal,
    alarm_names,
    parse_alarm_event,
    rollout_id_of,
)
from tenantml.rollout.machine import Guardrails, start

ROOT = Path(__file__).resolve().parents[2]
ROOT_EVENTS = "rollback-alarm-{}.json"
RID = "3f2b8c1e-5a6d-4e7f-9a0b-1c2d3e4f5a6b"
OTHER = "3f2b8c1e-5a6d-4e7f-9a0b-1c2d3e4f5a6c"
T0 = datetime(2026, 11, 30, 17, 0, tzinfo=UTC)
FIXTURES = ("metric", "metric-math", "composite", "composite-suppressed", "ok", "insufficient",
            "action-payload")


def fixture(load_event, name: str) -> dict:
    if name == "action-payload":       # not an event any trigger delivers: a test fixture, not a sample
        return json.loads((ROOT / "tests" / "fixtures" / ROOT_EVENTS.format(name)).read_text())
    return load_event(ROOT_EVENTS.format(name))


# --- names ---------------------------------------------------------------------------------------------

def test_the_prefix_is_the_alarm_rules():
    assert ALARM_PREFIX == "tenantml-rollout-" == resources.ROLLOUT_ALARM_PREFIX
    assert resources.ROLLOUT_ALARMS["detail"]["alarmName"] == [{"prefix": ALARM_PREFIX}]


def test_names_round_trip():
    names = alarm_names(RID)
    assert names == [f"tenantml-rollout-{RID}-errors", f"tenantml-rollout-{RID}-latency"]
    assert [rollout_id_of(n) for n in names] == [RID, RID]
    rollout = start(owner="acme", model="risk", stable="1", candidate="2", now=T0, actor="a", reason="r")
    assert all(rollout_id_of(n) == rollout.id for n in alarm_names(rollout.id))


@pytest.mark.parametrize("name", [
    "other-alarm", "", "tenantml-rollout-", f"tenantml-rollout-{RID}", f"tenantml-rollout-{RID}-",
    "tenantml-rollout-r1-errors",                                   # not a UUID
    f"tenantml-rollout-{RID.upper()}-errors",                       # not canonical
    f"tenantml-rollout-{RID[:-1]}-errors",                          # 35 characters
    f"tenantml-rollout-{RID}x-errors", f"xtenantml-rollout-{RID}-errors", f"tenantml-rollout-{RID}-Errors",
    f"tenantml-rollout-{RID}-errors\n",
])
def test_names_outside_the_scheme_have_no_rollout(name):
    assert rollout_id_of(name) is None


@pytest.mark.parametrize("value", [None, 3, ["x"], {"a": 1}])
def test_rollout_id_of_anything_that_is_not_a_string_is_none(value):
    assert rollout_id_of(value) is None


@pytest.mark.parametrize("bad", ["r1", "", RID[:8], RID.upper(), f"{RID}-x", None])
def test_names_refuse_ids_that_could_prefix_another_rollouts(bad):
    with pytest.raises(ValueError, match="canonical UUID"):
        alarm_names(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="canonical UUID"):
        AlarmManager(RecordingClient()).delete(bad)  # type: ignore[arg-type]


# --- events --------------------------------------------------------------------------------------------

def test_every_fixture_is_two_space_json_with_a_trailing_newline():
    for name in FIXTURES:
        folder = ("tests/fixtures" if name == "action-payload" else "events")
        path = ROOT / folder / ROOT_EVENTS.format(name)
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=2) + "\n", path.name
        assert "acme" not in text and "tenant" not in text.replace("tenantml", ""), path.name


def test_a_metric_alarm_into_alarm_is_a_signal(load_event):
    signal, why = parse_alarm_event(fixture(load_event, "metric"))
    assert signal == AlarmSignal(
        rollout_id=RID, alarm_name=f"tenantml-rollout-{RID}-latency", signal="latency", state="ALARM",
        previous_state="OK", state_time=datetime(2026, 11, 30, 17, 4, 40, 989000, tzinfo=UTC), kind="metric",
        suppressed=False, reason=signal.reason if signal else "")
    assert signal.reason.startswith("Threshold Crossed: 2 out of the last 3 datapoints")
    assert RID in why and "OK -> ALARM" in why


def test_a_metric_math_alarm_into_alarm_is_a_signal(load_event):
    signal, _ = parse_alarm_event(fixture(load_event, "metric-math"))
    assert signal is not None
    assert (signal.rollout_id, signal.signal, signal.kind, signal.previous_state) == (
        RID, "errors", "metric_math", "INSUFFICIENT_DATA")
    assert signal.state_time == datetime(2026, 11, 30, 17, 20, 48, 554000, tzinfo=UTC)


def test_a_composite_alarm_into_alarm_is_a_signal(load_event):
    signal, _ = parse_alarm_event(fixture(load_event, "composite"))
    assert signal is not None
    assert (signal.rollout_id, signal.signal, signal.kind, signal.suppressed) == (RID, "guard", "composite",
                                                                                 False)


def test_a_suppressed_composite_alarm_is_a_no_op(load_event):
    signal, why = parse_alarm_event(fixture(load_event, "composite-suppressed"))
    assert signal is None
    assert "suppressed" in why and "WaitPeriod" in why and "no-op" in why


@pytest.mark.parametrize("change", [
    lambda e: e["detail"]["configuration"].pop("alarmRule"),       # no longer recognisable as composite
    lambda e: e["detail"].pop("configuration"),
    lambda e: e["detail"]["state"].pop("actionsSuppressedBy"),      # the reason alone says so
    lambda e: e["detail"]["state"].pop("actionsSuppressedReason"),
])
def test_suppression_is_honoured_whatever_the_configuration_says(load_event, change):
    event = fixture(load_event, "composite-suppressed")
    change(event)
    signal, why = parse_alarm_event(event)
    assert signal is None and "suppressed" in why


@pytest.mark.parametrize(("name", "state"), [("ok", "OK"), ("insufficient", "INSUFFICIENT_DATA")])
def test_ok_and_insufficient_data_are_no_ops(load_event, name, state):
    signal, why = parse_alarm_event(fixture(load_event, name))
    assert signal is None
    assert f"is {state}" in why and "only ALARM rolls back" in why and "no-ops" in why


def test_the_lambda_alarm_action_payload_is_not_an_eventbridge_event(load_event):
    event = fixture(load_event, "action-payload")
    assert event["alarmData"]["state"]["value"] == "ALARM" and rollout_id_of(event["alarmData"]["alarmName"])
    assert parse_alarm_event(event) == (None, "alarm-action payload, not an EventBridge event")


def test_the_event_runtime_fixture_names_no_rollout():
    event = json.loads((ROOT / "tests" / "fixtures" / "alarm-state-change.json").read_text())
    signal, why = parse_alarm_event(event)
    assert signal is None and "not a rollout alarm" in why      # "r1" is not a rollout id


@pytest.mark.parametrize(("change", "expected"), [
    (lambda e: e.update(source="tenantml"), "source 'tenantml' is not 'aws.cloudwatch'"),
    (lambda e: e.update({"detail-type": "CloudWatch Alarm Configuration Change"}),
     "detail-type 'CloudWatch Alarm Configuration Change' is not"),
    (lambda e: e.update({"detail-type": "CloudWatch Alarm Contributor State Change"}), "is not"),
    (lambda e: e["detail"].update(alarmName="other-alarm"), "'other-alarm' is not a rollout alarm"),
    (lambda e: e["detail"]["state"].update(value="BROKEN"), "unknown state 'BROKEN'"),
    (lambda e: e["detail"]["state"].update(timestamp="yesterday"), "is not a timestamp"),
    (lambda e: e["detail"]["state"].update(timestamp="2026-11-30T17:20:48"), "is not a timestamp"),
    (lambda e: e.pop("detail"), "no detail object"),
    (lambda e: e["detail"].pop("state"), "no state object"),
])
def test_each_no_op_says_why(load_event, change, expected):
    event = fixture(load_event, "metric-math")
    change(event)
    signal, why = parse_alarm_event(event)
    assert signal is None and expected in why


def test_a_missing_previous_state_still_rolls_back(load_event):
    event = fixture(load_event, "metric-math")
    del event["detail"]["previousState"]
    signal, _ = parse_alarm_event(event)
    assert signal is not None and signal.previous_state is None


def test_state_times_in_every_documented_form():
    at = datetime(2026, 11, 30, 17, 4, 40, tzinfo=UTC)
    assert alarms.parse_state_time("2026-11-30T17:04:40.989+0000") == at.replace(microsecond=989000)
    assert alarms.parse_state_time("2026-11-30T17:04:40Z") == at
    assert alarms.parse_state_time("2026-11-30T19:04:40.000+0200") == at
    assert alarms.parse_state_time("2026-11-30T17:04:40") is None        # no zone: not CloudWatch's
    assert alarms.parse_state_time(1764522280) is None


CW = {"source": "aws.cloudwatch", "detail-type": "CloudWatch Alarm State Change"}
GARBAGE: list[Any] = [None, 0, 1.5, "", "ALARM", b"{}", [], [{}], {}, {"detail": None},
                      {"source": "aws.cloudwatch"}, {"alarmData": None}, CW, {**CW, "detail": []},
                      {**CW, "detail": {"alarmName": {"x": 1}, "state": "ALARM"}},
                      {**CW, "detail": {"alarmName": f"tenantml-rollout-{RID}-errors", "state": ["ALARM"]}},
                      {**CW, "detail": {"alarmName": f"tenantml-rollout-{RID}-errors",
                                        "state": {"value": "ALARM", "timestamp": ["x"]}}}]
MUTATIONS: list[Any] = ["__delete__", None, 0, -1.0, True, "", "garbage", [], [None], {}, {"value": "ALARM"}]


def _paths(obj: Any, path: tuple = ()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*path, k)
            yield from _paths(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield (*path, i)
            yield from _paths(v, (*path, i))


def _mutated(event: Any, path: tuple, value: Any) -> Any:
    out = copy.deepcopy(event)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if value == "__delete__":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


@pytest.mark.parametrize("event", GARBAGE, ids=repr)
def test_garbage_is_a_no_op_never_an_exception(event):
    signal, why = parse_alarm_event(event)
    assert signal is None and isinstance(why, str) and why


@pytest.mark.parametrize("name", FIXTURES)
def test_no_mutation_of_a_fixture_raises(load_event, name):
    event = fixture(load_event, name)
    count = 0
    for path in _paths(event):
        for value in MUTATIONS:
            signal, why = parse_alarm_event(_mutated(event, path, value))
            assert isinstance(why, str) and why
            if signal is not None:
                assert signal.state == "ALARM" and rollout_id_of(signal.alarm_name) == signal.rollout_id
                assert signal.state_time.tzinfo is not None
            count += 1
    assert count > 100


# --- AlarmManager through a recording client ------------------------------------------------------------

class NotFound(Exception):
    def __init__(self) -> None:
        super().__init__("ResourceNotFound")
        self.response = {"Error": {"Code": "ResourceNotFound", "Message": "gone"}}


class RecordingClient:
    """The CloudWatch calls AlarmManager makes, on a dict of alarms; pages of `page` names."""

    def __init__(self, names: list[str] | None = None, page: int = 100) -> None:
        self.alarms: dict[str, dict] = {n: {"AlarmName": n} for n in names or []}
        self.page, self.calls = page, []
        self.lie: list[str] = []            # names describe_alarms adds whatever the prefix
        self.fail_deletes = 0               # how many delete_alarms calls fail with ResourceNotFound

    def put_metric_alarm(self, **kw):
        self.calls.append(("put_metric_alarm", kw))
        self.alarms[kw["AlarmName"]] = kw

    def describe_alarms(self, **kw):
        self.calls.append(("describe_alarms", kw))
        names = sorted(n for n in self.alarms if n.startswith(kw["AlarmNamePrefix"])) + self.lie
        start_at = int(kw.get("NextToken", 0))
        page = names[start_at:start_at + min(self.page, kw.get("MaxRecords", 100))]
        out: dict[str, Any] = {"MetricAlarms": [{"AlarmName": n} for n in page], "CompositeAlarms": []}
        if start_at + len(page) < len(names):
            out["NextToken"] = str(start_at + len(page))
        return out

    def delete_alarms(self, **kw):
        self.calls.append(("delete_alarms", kw))
        assert len(kw["AlarmNames"]) <= 100
        if self.fail_deletes:
            self.fail_deletes -= 1
            raise NotFound()
        for n in kw["AlarmNames"]:
            self.alarms.pop(n, None)


def rollout():
    return start(owner="acme", model="risk", stable="1", candidate="2", now=T0, actor="alice", reason="try 2",
                 guardrails=Guardrails(max_error_rate=0.01, error_rate_ratio=3, p95_ratio=1.25))


def test_create_puts_the_error_rate_and_latency_alarms_of_the_candidate():
    r, cw = rollout(), RecordingClient()
    names = AlarmManager(cw).create(r, r.guardrails)
    assert names == alarm_names(r.id)
    errors, latency = (kw for _, kw in cw.calls)
    for alarm in (errors, latency):
        assert (alarm["ComparisonOperator"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"],
                alarm["TreatMissingData"]) == ("GreaterThanThreshold", 3, 2, "notBreaching")
        assert "AlarmActions" not in alarm and "Tags" not in alarm
        assert r.id in alarm["AlarmDescription"] and "acme" not in json.dumps(alarm)
        (expression,) = [m for m in alarm["Metrics"] if m["ReturnData"]]
        assert "Expression" in expression and "MetricStat" not in expression
    assert errors["Threshold"] == pytest.approx(0.03)
    stats = {m["Id"]: m["MetricStat"] for m in errors["Metrics"] if "MetricStat" in m}
    assert {k: (s["Metric"]["MetricName"], s["Stat"], s["Period"]) for k, s in stats.items()} == {
        "errors": ("RolloutErrors", "Sum", 60), "requests": ("RolloutRequests", "Sum", 60)}
    assert errors["Metrics"][-1]["Expression"] == "IF(requests >= 1, errors / requests, 0)"
    assert latency["Threshold"] == 1.25
    stats = {m["Id"]: m["MetricStat"] for m in latency["Metrics"] if "MetricStat" in m}

    def dims(version):
        return [{"Name": "rollout", "Value": r.id}, {"Name": "version", "Value": version}]

    assert {k: (s["Metric"]["MetricName"], s["Stat"], s["Metric"]["Dimensions"]) for k, s in stats.items()} \
        == {"candidate": ("RolloutLatency", "p95", dims("2")), "stable": ("RolloutLatency", "p95", dims("1")),
            "n": ("RolloutLatency", "SampleCount", dims("2"))}
    assert latency["Metrics"][-1]["Expression"] == "IF(n >= 1 AND stable > 0, candidate / stable, 0)"
    assert all(s["Metric"]["Namespace"] == "tenantml" for s in stats.values())


def test_create_defaults_to_the_rollouts_guardrails_and_takes_options():
    r, cw = rollout(), RecordingClient()
    AlarmManager(cw, namespace="ns", period_s=120, min_period_requests=5).create(r, tags={"team": "ml"})
    errors, latency = (kw for _, kw in cw.calls)
    assert errors["Threshold"] == pytest.approx(r.guardrails.max_error_rate * r.guardrails.error_rate_ratio)
    assert errors["Tags"] == [{"Key": "team", "Value": "ml"}]
    assert errors["Metrics"][-1]["Expression"] == "IF(requests >= 5, errors / requests, 0)"
    assert latency["Metrics"][-1]["Expression"].startswith("IF(n >= 5 AND")
    assert {m["MetricStat"]["Period"] for m in errors["Metrics"] if "MetricStat" in m} == {120}
    assert {m["MetricStat"]["Metric"]["Namespace"] for m in latency["Metrics"] if "MetricStat" in m} == {"ns"}


@pytest.mark.parametrize("period", [0, -60, 45, 90])
def test_periods_cloudwatch_refuses_are_refused(period):
    with pytest.raises(ValueError, match="period_s"):
        AlarmManager(RecordingClient(), period_s=period)


def test_delete_reads_every_page_and_deletes_in_chunks_of_100():
    mine = [f"{ALARM_PREFIX}{RID}-s{i:03d}" for i in range(250)]
    cw = RecordingClient([*mine, f"{ALARM_PREFIX}{OTHER}-errors", "other-alarm"], page=40)
    deleted = AlarmManager(cw).delete(RID)
    assert deleted == sorted(mine)
    describes = [kw for op, kw in cw.calls if op == "describe_alarms"]
    assert {kw["AlarmNamePrefix"] for kw in describes} == {f"{ALARM_PREFIX}{RID}-"}
    assert all(kw["AlarmTypes"] == ["MetricAlarm"] for kw in describes)
    assert len(describes) == 7 + 1                   # 250 names in pages of 40, then the empty check
    assert [len(kw["AlarmNames"]) for op, kw in cw.calls if op == "delete_alarms"] == [100, 100, 50]
    assert sorted(cw.alarms) == sorted([f"{ALARM_PREFIX}{OTHER}-errors", "other-alarm"])


def test_delete_twice_and_delete_of_nothing_are_no_ops():
    r = rollout()
    cw = RecordingClient()
    manager = AlarmManager(cw)
    assert manager.delete(r.id) == []
    manager.create(r)
    assert manager.delete(r.id) == alarm_names(r.id)
    assert manager.delete(r.id) == []
    assert not [c for c in cw.calls[-1:] if c[0] == "delete_alarms"]


def test_delete_refuses_a_name_outside_the_prefix_before_deleting_anything():
    cw = RecordingClient([f"{ALARM_PREFIX}{RID}-errors"])
    cw.lie = ["other-alarm"]
    with pytest.raises(AlarmScopeError, match="other-alarm"):
        AlarmManager(cw).delete(RID)
    assert not [c for c in cw.calls if c[0] == "delete_alarms"]
    assert f"{ALARM_PREFIX}{RID}-errors" in cw.alarms


def test_delete_lists_again_after_a_concurrent_delete():
    cw = RecordingClient(alarm_names(RID))
    cw.fail_deletes = 1
    assert AlarmManager(cw).delete(RID) == alarm_names(RID)
    assert not cw.alarms


def test_delete_gives_up_after_three_failed_rounds():
    cw = RecordingClient(alarm_names(RID))
    cw.fail_deletes = 3
    with pytest.raises(RuntimeError, match="still present"):
        AlarmManager(cw).delete(RID)


def test_other_errors_propagate():
    cw = RecordingClient(alarm_names(RID))

    def boom(**kw):
        raise PermissionError("AccessDenied")

    cw.delete_alarms = boom  # type: ignore[method-assign]
    with pytest.raises(PermissionError):
        AlarmManager(cw).delete(RID)
