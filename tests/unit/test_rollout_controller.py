"""The rollout controller (tenantml.rollout.controller) on the in-memory registry (a serializing fake: its
conditional writes are atomic under a lock, which moto's are not) with signals from a dict: the real
"CloudWatch Alarm State Change" samples in events/ replayed duplicated and reordered roll back exactly
once; drift on the candidate rolls back, drift elsewhere does nothing; a concurrent advance and rollback
leave one consistent state and one audit record per applied change."""

from __future__ import annotations

import copy
import itertools
import random
import threading
from datetime import UTC, datetime, timedelta

import pytest

from tenantml.registry.memory import MemoryRegistry, manifest_for
from tenantml.rollout.controller import RolloutController
from tenantml.rollout.machine import Guardrails, Transition, VersionSignals, start

RID = "3f2b8c1e-5a6d-4e7f-9a0b-1c2d3e4f5a6b"          # the rollout the samples in events/ name
STARTED = datetime(2026, 11, 30, 17, 0, tzinfo=UTC)    # before every sample's state time
ALARMS = ("metric", "metric-math", "composite", "composite-suppressed", "ok", "insufficient")


class Signals:
    def __init__(self) -> None:
        self.by_version: dict[str, VersionSignals] = {}

    def read(self, rollout, version, since):
        return self.by_version.get(version, VersionSignals())


def live_registry(owner: str = "acme", *, rollout_id: str = RID, **kw) -> MemoryRegistry:
    ticks = itertools.count()
    reg = MemoryRegistry(clock=lambda: STARTED + timedelta(milliseconds=next(ticks)))   # audit order
    for _ in range(2):
        reg.register_version(owner, "risk", manifest_for("risk", {"model.onnx": b"x"}), "test",
                             aliases=["production"] if reg.live_rollouts() == [] and _ == 0 else [])
    r = start(owner=owner, model="risk", stable="1", candidate="2", now=STARTED, actor="eng", reason="go",
              bake_seconds=60, guardrails=Guardrails(min_requests=5), **kw)
    r = r.model_copy(update={"id": rollout_id})
    reg.apply_rollout(owner, "risk", Transition(action="start", before=None, after=r, reason="go",
                                                actor="eng"))
    return reg


def controller(reg, signals=None, now=STARTED + timedelta(hours=1)) -> RolloutController:
    return RolloutController(reg, signals or Signals(), clock=lambda: now)


def rollbacks(reg, owner: str = "acme") -> list:
    return [a for a in reg.audit(owner) if a.action == "rollout_rollback"]


# --- alarms -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "rolls_back"), [
    ("metric", True), ("metric-math", True), ("composite", True), ("composite-suppressed", False),
    ("ok", False), ("insufficient", False)])
def test_each_alarm_sample_does_what_its_state_says(load_event, name, rolls_back):
    reg = live_registry()
    (outcome,) = controller(reg).handle(load_event(f"rollback-alarm-{name}"))
    assert (outcome["outcome"] == "rollback") is rolls_back, outcome
    assert len(rollbacks(reg)) == int(rolls_back)
    assert reg.get_rollout("acme", "risk").status == ("rolled_back" if rolls_back else "active")


def test_alarms_replayed_duplicated_and_reordered_roll_back_exactly_once(load_event):
    events = [load_event(f"rollback-alarm-{n}") for n in ALARMS]
    deliveries = [copy.deepcopy(e) for e in events for _ in range(3)]
    for seed in range(5):
        random.Random(seed).shuffle(deliveries)
        reg = live_registry()
        outcomes = [o for e in deliveries for o in controller(reg).handle(e)]
        assert [o["outcome"] for o in outcomes].count("rollback") == 1
        assert len(rollbacks(reg)) == 1 and reg.get_rollout("acme", "risk").revision == 2
        assert reg.resolve("acme", "risk").version == "1"


def test_an_alarm_older_than_the_rollout_or_of_another_rollout_is_a_no_op(load_event):
    late = live_registry()
    late.apply_rollout("acme", "risk", Transition(
        action="abort", before=late.get_rollout("acme", "risk"),
        after=late.get_rollout("acme", "risk").model_copy(update={"status": "aborted", "revision": 2}),
        reason="x", actor="eng"))
    assert controller(late).handle(load_event("rollback-alarm-metric"))[0]["reason"].startswith(
        "alarm tenantml-rollout-")
    reg = live_registry()
    restarted = reg.get_rollout("acme", "risk").model_copy(
        update={"started_at": STARTED + timedelta(hours=2), "revision": 2})
    reg.apply_rollout("acme", "risk", Transition(action="resume", before=reg.get_rollout("acme", "risk"),
                                                 after=restarted, reason="x", actor="eng"))
    (out,) = controller(reg).handle(load_event("rollback-alarm-metric"))
    assert out["outcome"] == "none" and "older than the rollout" in out["reason"]
    other = live_registry(rollout_id="3f2b8c1e-5a6d-4e7f-9a0b-000000000000")
    (out,) = controller(other).handle(load_event("rollback-alarm-metric"))
    assert out["outcome"] == "none" and "no live rollout" in out["reason"]


def test_the_alarm_action_payload_and_garbage_are_logged_no_ops():
    import json
    from pathlib import Path

    payload = json.loads((Path(__file__).resolve().parents[1] / "fixtures" /
                          "rollback-alarm-action-payload.json").read_text())
    reg = live_registry()
    for event in (payload, {}, {"source": "aws.cloudwatch"}, [], {"detail-type": "Something"}):
        (out,) = controller(reg).handle(event)
        assert out["outcome"] in ("none", "ignored")
    assert rollbacks(reg) == []


# --- drift --------------------------------------------------------------------------------------------------


def drift(tenant: str, version: str, kind: str = "data") -> dict:
    return {"source": "tenantml", "detail-type": "DriftDetected", "detail": {
        "tenant": tenant, "model": "risk", "version": version, "reason": "3 of 8 features drifted",
        "actor": "drift_worker", "change_id": "c1", "at": "2026-11-30T18:00:00Z", "kind": kind,
        "window_start": "2026-11-30T17:00:00Z", "window_end": "2026-11-30T18:00:00Z", "report": "r.json"}}


def test_drift_on_the_candidate_rolls_back_and_drift_on_stable_does_not():
    reg = live_registry()
    (out,) = controller(reg).handle(drift("acme", "1"))
    assert out["outcome"] == "none" and "the event is the alert" in out["reason"]
    (out,) = controller(reg).handle(drift("acme", "2", kind="accuracy"))
    assert out["outcome"] == "rollback" and "DriftDetected (accuracy)" in out["reason"]
    assert controller(reg).handle(drift("acme", "2"))[0]["outcome"] == "none"       # a duplicate


def test_drift_in_another_tenants_traffic_touches_only_what_that_tenant_calls():
    reg = live_registry()                               # acme's own model
    assert controller(reg).handle(drift("globex", "2"))[0]["outcome"] == "none"
    shared = live_registry("_shared", cohort=("acme",))
    assert controller(shared).handle(drift("globex", "2"))[0]["outcome"] == "none"   # not in the cohort
    assert controller(shared).handle(drift("acme", "2"))[0]["outcome"] == "rollback"


# --- the schedule and the race ------------------------------------------------------------------------------


def test_the_schedule_advances_a_healthy_candidate():
    reg = live_registry()
    signals = Signals()
    signals.by_version = {"1": VersionSignals(requests=100, errors=0, p95_ms=10),
                          "2": VersionSignals(requests=30, errors=0, p95_ms=11)}
    (out,) = controller(reg, signals).handle({"detail-type": "Scheduled Event", "source": "aws.scheduler"})
    assert (out["outcome"], out["to_weight"]) == ("advance", 25)


def test_advance_and_rollback_racing_leave_one_consistent_state():
    """Many controllers run the schedule (an advance) and an alarm (a rollback) at once on one rollout.
    Whatever the interleaving: the rollout ends rolled back (an alarm is never lost behind an advance: the
    alarm's retry recomputes from the new state), every revision has exactly one audit record, and no
    version is stepped back twice."""
    for trial in range(10):
        reg, results = _race()
        final = reg.get_rollout("acme", "risk")
        changes = [a for a in reg.audit("acme") if a.action.startswith("rollout_")]
        assert final.status == "rolled_back", (trial, [r["outcome"] for r in results])
        assert [a.details["revision"] for a in changes] == list(range(1, final.revision + 1))
        assert sum(1 for a in changes if a.action == "rollout_rollback") == 1
        assert [r["outcome"] for r in results].count("rollback") == 1
        assert all(a.details["stable"] == "1" for a in changes)


def _race() -> tuple[MemoryRegistry, list]:
    """Three schedule ticks and three drift deliveries (each retried when it loses a race) at once."""
    reg = live_registry()
    signals = Signals()
    signals.by_version = {"1": VersionSignals(requests=100), "2": VersionSignals(requests=30)}
    barrier = threading.Barrier(6)
    results: list = []

    def run(kind: str) -> None:
        barrier.wait()
        c = controller(reg, signals)
        if kind == "tick":
            results.extend(c.tick())
            return
        for _ in range(3):                          # Lambda's retries of an event whose change lost a race
            out = c.on_drift(drift("acme", "2")["detail"])
            results.append(out)
            if out["outcome"] == "rollback" or "the event is the alert" in out["reason"]:
                return
    threads = [threading.Thread(target=run, args=(k,)) for k in ("tick", "drift") * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return reg, results


def test_every_interleaving_of_two_transitions_from_one_state_applies_exactly_one():
    """Deterministically: both orders of an advance and a rollback computed from the same revision."""
    from tenantml.errors import Conflict
    from tenantml.rollout import machine

    for first, second in itertools.permutations(("advance", "rollback")):
        reg = live_registry()
        r = reg.get_rollout("acme", "risk")
        now = STARTED + timedelta(hours=1)
        made = {"advance": machine.evaluate(r, VersionSignals(requests=100), VersionSignals(requests=30),
                                            now=now),
                "rollback": machine.rollback(r, candidate="2", now=now, actor="alarm", reason="alarm")}
        reg.apply_rollout("acme", "risk", made[first])
        with pytest.raises(Conflict):
            reg.apply_rollout("acme", "risk", made[second])
        assert reg.get_rollout("acme", "risk").revision == 2
        assert [a.action for a in reg.audit("acme")][-1] == f"rollout_{first}"
