"""The rollout state machine (tenantml.rollout.machine): starting, the controller's decisions, the manual
verbs, rollback's idempotence, and sticky routing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tenantml.rollout.machine import (
    ROUTING_BUCKETS,
    Guardrails,
    RolloutError,
    VersionSignals,
    abort,
    evaluate,
    freeze,
    hold_reason,
    promote,
    resume,
    rollback,
    route,
    routing_bucket,
    start,
)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
HEALTHY = VersionSignals(requests=500, errors=2, p95_ms=20.0)


def canary(**kw):
    args = {"owner": "acme", "model": "risk", "stable": "1", "candidate": "2", "now": T0, "actor": "eng",
            "reason": "new model", "bake_seconds": 300, **kw}
    return start(**args)


def after(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# --- start --------------------------------------------------------------------------------------------------


def test_a_canary_starts_at_five_percent_with_stable_as_last_known_good():
    r = canary()
    assert (r.status, r.stages, r.weight, r.revision, r.last_known_good) == ("active", (5, 25, 50, 100), 5,
                                                                              1, "1")
    assert r.id == canary().id and r.id != canary(candidate="3").id          # opaque, deterministic


def test_an_ab_test_has_one_split_and_shadow_routes_nothing():
    assert canary(mode="ab").weight == 50 and canary(mode="ab", stages=(20,)).weight == 20
    assert canary(mode="shadow").weight == 0


@pytest.mark.parametrize(("kw", "message"), [
    ({"stages": (5, 25, 50)}, "a canary's last stage must be 100"),
    ({"stages": (25, 5, 100)}, "stages: stages must be increasing percentages in 1..100"),
    ({"stages": (0, 100)}, "stages: stages must be increasing percentages in 1..100"),
    ({"mode": "ab", "stages": (10, 50)}, "an A/B test has one stage: its split"),
    ({"candidate": "1"}, "the candidate must differ from the stable version"),
])
def test_bad_rollouts_are_refused_with_a_message(kw, message):
    with pytest.raises(RolloutError) as err:
        canary(**kw)
    assert str(err.value) == message


def test_a_second_rollout_waits_for_the_first_to_end():
    r = canary()
    with pytest.raises(RolloutError, match="a rollout of version 2 is in progress"):
        canary(candidate="3", previous=r)
    ended = abort(r, now=after(1), actor="eng").after
    again = canary(candidate="3", previous=ended)
    assert again.revision == ended.revision + 1 and again.status == "active"


# --- the controller -----------------------------------------------------------------------------------------


def test_a_stage_advances_only_after_its_bake_time_and_enough_traffic():
    r = canary()
    assert evaluate(r, HEALTHY, HEALTHY, now=after(4)) is None                          # baking
    assert hold_reason(r, HEALTHY, after(4)) == "baking: 60 s left in stage 5%"
    few = VersionSignals(requests=19)
    assert evaluate(r, HEALTHY, few, now=after(6)) is None                              # too little traffic
    assert hold_reason(r, few, after(6)) == "waiting for traffic: 19 of 20 candidate requests"
    t = evaluate(r, HEALTHY, HEALTHY, now=after(6))
    assert t is not None and t.action == "advance" and (t.from_weight, t.to_weight) == (5, 25)
    assert t.after.revision == 2 and t.after.stage_started_at == after(6)
    assert t.before == r                                           # the write is conditional on it


def test_the_last_stage_completes_and_the_candidate_becomes_last_known_good():
    r = canary(stages=(50, 100))
    r = evaluate(r, HEALTHY, HEALTHY, now=after(6)).after
    t = evaluate(r, HEALTHY, HEALTHY, now=after(12))
    assert t.action == "complete" and t.after.status == "completed" and t.after.last_known_good == "2"
    assert t.to_weight == 100 and t.after.weight == 0
    assert evaluate(t.after, HEALTHY, HEALTHY, now=after(20)) is None


@pytest.mark.parametrize(("stable", "candidate", "needle"), [
    (VersionSignals(requests=500, errors=0), VersionSignals(requests=100, errors=2),
     "candidate error rate 2.0% over 100 requests exceeds 1.0%"),
    (VersionSignals(requests=500, errors=25), VersionSignals(requests=100, errors=11),
     "exceeds 10.0% (max of 1.0% and 2x stable's 5.0%)"),
    (VersionSignals(requests=500, p95_ms=20.0), VersionSignals(requests=100, p95_ms=31.0),
     "candidate p95 latency 31.0 ms exceeds 1.5x stable's 20.0 ms"),
    (VersionSignals(requests=500, labelled=100, accuracy=0.90), VersionSignals(requests=100, labelled=40,
                                                                               accuracy=0.86),
     "candidate accuracy 86.0% is more than 3.0 points below stable's 90.0%"),
])
def test_a_guardrail_breach_rolls_back_at_once(stable, candidate, needle):
    t = evaluate(canary(), stable, candidate, now=after(1))          # even while baking
    assert t is not None and t.action == "rollback" and needle in t.reason
    assert t.after.status == "rolled_back" and t.after.weight == 0 and t.after.last_known_good == "1"


@pytest.mark.parametrize(("stable", "candidate"), [
    (VersionSignals(requests=500, errors=25), VersionSignals(requests=100, errors=10)),      # 10% <= 2 x 5%
    (VersionSignals(requests=500, p95_ms=20.0), VersionSignals(requests=100, p95_ms=30.0)),  # exactly 1.5x
    (VersionSignals(requests=500, labelled=100, accuracy=0.90),
     VersionSignals(requests=100, labelled=29, accuracy=0.50)),                             # too few labels
    (VersionSignals(requests=0), VersionSignals(requests=19, errors=19)),                   # too few requests
])
def test_within_the_guardrails_nothing_rolls_back(stable, candidate):
    assert evaluate(canary(), stable, candidate, now=after(1)) is None


def test_ab_never_advances_by_itself_but_still_rolls_back():
    r = canary(mode="ab")
    assert evaluate(r, HEALTHY, HEALTHY, now=after(600)) is None
    assert hold_reason(r, HEALTHY, after(600)) == "ab: no automatic advance (promote or abort)"
    bad = VersionSignals(requests=100, errors=50)
    assert evaluate(r, HEALTHY, bad, now=after(1)).action == "rollback"


def test_custom_guardrails_apply():
    r = canary(guardrails=Guardrails(min_requests=5, max_error_rate=0.2))
    assert evaluate(r, HEALTHY, VersionSignals(requests=5, errors=1), now=after(1)) is None
    assert evaluate(r, HEALTHY, VersionSignals(requests=5, errors=2), now=after(1)).action == "rollback"


# --- the verbs ----------------------------------------------------------------------------------------------


def test_freeze_holds_and_resume_restarts_the_bake():
    r = freeze(canary(), now=after(1), actor="eng").after
    assert r.status == "frozen" and r.weight == 5
    assert evaluate(r, HEALTHY, HEALTHY, now=after(60)) is None
    with pytest.raises(RolloutError, match="already frozen"):
        freeze(r, now=after(2), actor="eng")
    r = resume(r, now=after(60), actor="eng").after
    assert r.status == "active" and r.stage_started_at == after(60)
    assert evaluate(r, HEALTHY, HEALTHY, now=after(61)) is None


def test_promote_and_abort_end_the_rollout_and_nothing_follows():
    done = promote(canary(), now=after(1), actor="eng").after
    assert (done.status, done.last_known_good) == ("completed", "2")
    gone = abort(canary(), now=after(1), actor="eng").after
    assert (gone.status, gone.last_known_good, gone.weight) == ("aborted", "1", 0)
    for ended in (done, gone):
        for verb in (promote, abort, freeze):
            with pytest.raises(RolloutError, match="cannot"):
                verb(ended, now=after(2), actor="eng")
        with pytest.raises(RolloutError, match="not frozen"):
            resume(ended, now=after(2), actor="eng")


def test_rollback_applies_once_and_only_to_the_named_candidate():
    r = canary()
    assert rollback(r, candidate="3", now=after(1), actor="alarm", reason="alarm on 3") is None
    t = rollback(r, candidate="2", now=after(1), actor="alarm", reason="alarm")
    assert t is not None and t.after.revision == r.revision + 1
    assert rollback(t.after, candidate="2", now=after(2), actor="alarm", reason="again") is None
    completed = promote(r, now=after(1), actor="eng").after
    assert rollback(completed, candidate="2", now=after(2), actor="drift", reason="late") is None


# --- routing ------------------------------------------------------------------------------------------------


def test_routing_is_sticky_and_monotonic_as_the_weight_grows():
    r5 = canary()
    r25 = evaluate(r5, HEALTHY, HEALTHY, now=after(6)).after
    callers = [f"user-{i}" for i in range(20_000)]
    on5 = {c for c in callers if route(r5, "acme", c)[0] == "2"}
    on25 = {c for c in callers if route(r25, "acme", c)[0] == "2"}
    assert on5 < on25                                                # nobody moves back to stable
    assert abs(len(on5) / len(callers) - 0.05) < 0.01 and abs(len(on25) / len(callers) - 0.25) < 0.015
    assert all(route(r25, "acme", c) == route(r25, "acme", c) for c in callers[:100])
    assert 0 <= routing_bucket("risk", "acme", "x") < ROUTING_BUCKETS


def test_the_cohort_shadow_and_ended_rollouts_route_as_documented():
    shared = canary(owner="_shared", cohort=("acme",), stages=(100,))
    assert route(shared, "acme", "u")[0] == "2" and route(shared, "globex", "u") == ("1", None)
    assert route(canary(mode="shadow"), "acme", "u") == ("1", "2")
    assert route(None, "acme", "u") == (None, None)
    assert route(abort(canary(), now=after(1), actor="e").after, "acme", "u") == (None, None)
