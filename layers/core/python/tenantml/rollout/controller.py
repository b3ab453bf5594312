"""The rollout controller: what the `rollback` function does with each event it receives.

    schedule (every minute)        -> tick: each live rollout is evaluated on its per-version signals
                                      (tenantml.rollout.signals): roll back on a guardrail breach,
                                      advance a canary whose stage has baked, complete after the last
    CloudWatch Alarm State Change  -> an alarm of a rollout's candidate (name prefix tenantml-rollout-)
                                      in ALARM rolls that rollout back
    DriftDetected                  -> drift on a live rollout's candidate rolls it back; drift on any
                                      other version rolls nothing back (the event itself is the alert)
    RolloutStarted / Completed /   -> the candidate's CloudWatch alarms are created / removed
    RolledBack                        (tenantml.rollout.alarms; on AWS only)

Every change is a transition of the state machine applied with a conditional write on the rollout's
revision (tenantml.registry: `apply_rollout`): a duplicate, late or out-of-order trigger, or one that lost
a race with another trigger, finds the rollout moved on and does nothing (logged), so two deliveries never
step back two versions and a rollback never applies to a candidate other than the one its trigger named.
Every outcome is returned (and logged) with its reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from tenantml import SHARED_TENANT
from tenantml.errors import Conflict, ModelNotFound
from tenantml.observability import logger
from tenantml.rollout import machine
from tenantml.rollout.machine import Rollout, Transition

ACTOR = "rollback"
ALARM_MANAGED = ("RolloutStarted", "RolloutCompleted", "RolloutRolledBack")


def _outcome(action: str, reason: str, **keys: Any) -> dict[str, Any]:
    out = {"outcome": action, "reason": reason, **keys}
    logger.info(f"rollout controller: {action}", extra=out)
    return out


class RolloutController:
    """`registry`: a ModelRegistry; `signals`: tenantml.rollout.signals.DynamoSignals (or anything with
    its `read`); `alarms`: tenantml.rollout.alarms.AlarmManager, or None where CloudWatch alarms are not
    managed (the tests, or a deployment that opts out)."""

    def __init__(self, registry: Any, signals: Any, *, alarms: Any | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.registry, self.signals, self.alarms = registry, signals, alarms
        self._clock = clock

    # --- dispatch ----------------------------------------------------------------------------------

    def handle(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One event, whatever its trigger; unknown shapes are logged no-ops, never errors (a retry cannot
        make them known)."""
        if not isinstance(event, Mapping):
            return [_outcome("ignored", "not an event object")]
        kind = event.get("detail-type")
        if event.get("source") == "aws.cloudwatch" or "alarmData" in event:
            return [self.on_alarm(event)]
        if kind == "Scheduled Event":
            return self.tick()
        if event.get("source") == "tenantml" and kind == "DriftDetected":
            return [self.on_drift(event.get("detail") or {})]
        if event.get("source") == "tenantml" and kind in ALARM_MANAGED:
            return [self.on_rollout_changed(str(kind), event.get("detail") or {})]
        return [_outcome("ignored", f"unexpected event (source {str(event.get('source'))[:40]!r}, "
                                    f"detail-type {str(kind)[:60]!r})")]

    def _apply(self, r: Rollout, t: Transition | None, why_not: str, **keys: Any) -> dict[str, Any]:
        where = {"tenant": r.owner, "model": r.model, "rollout_id": r.id, **keys}
        if t is None:
            return _outcome("none", why_not, **where)
        try:
            self.registry.apply_rollout(r.owner, r.model, t)
        except Conflict:
            # Conflict is also the registry's answer when every optimistic attempt lost to contention:
            # then nothing moved, and dropping the transition would lose it (a drift or alarm rollback
            # comes once). Raised, the trigger is retried (Lambda's retries, then the failure queue).
            if self._unchanged(r):
                raise
            return _outcome("none", f"the rollout changed meanwhile (revision {r.revision} is stale); "
                                    f"{t.action} not applied", **where)
        return _outcome(t.action, t.reason, **where, revision=t.after.revision, from_weight=t.from_weight,
                        to_weight=t.to_weight)

    def _unchanged(self, r: Rollout) -> bool:
        """Whether the stored rollout is still at the revision `r` was read at (a read that fails raises:
        the trigger is retried)."""
        try:
            now = self.registry.get_rollout(r.owner, r.model)
        except ModelNotFound:
            return False
        return now is not None and now.id == r.id and now.revision == r.revision

    # --- the schedule --------------------------------------------------------------------------------

    def tick(self) -> list[dict[str, Any]]:
        now = self._clock()
        out = []
        for owner, model in self.registry.live_rollouts():
            try:
                r = self.registry.get_rollout(owner, model)
            except ModelNotFound:
                continue
            if r is None or not r.live:
                continue
            stable = self.signals.read(r, r.stable, r.stage_started_at)
            candidate = self.signals.read(r, r.candidate, r.stage_started_at)
            t = machine.evaluate(r, stable, candidate, now=now, actor=ACTOR)
            out.append(self._apply(r, t, machine.hold_reason(r, candidate, now)))
        return out

    # --- alarms --------------------------------------------------------------------------------------

    def _live_by_id(self, rollout_id: str) -> Rollout | None:
        for owner, model in self.registry.live_rollouts():
            try:
                r = self.registry.get_rollout(owner, model)
            except ModelNotFound:
                continue
            if r is not None and r.id == rollout_id:
                return r
        return None

    def on_alarm(self, event: Mapping[str, Any]) -> dict[str, Any]:
        from tenantml.rollout.alarms import parse_alarm_event  # noqa: PLC0415

        signal, why = parse_alarm_event(dict(event))
        if signal is None:
            return _outcome("none", why)
        r = self._live_by_id(signal.rollout_id)
        if r is None:
            return _outcome("none", f"alarm {signal.alarm_name}: no live rollout {signal.rollout_id} (ended "
                                    "already, or a late or duplicate delivery)")
        if signal.state_time < r.started_at:
            return _outcome("none", f"alarm {signal.alarm_name}: state from {signal.state_time.isoformat()} "
                                    "is older than the rollout", tenant=r.owner, model=r.model)
        t = machine.rollback(r, candidate=r.candidate, now=self._clock(), actor=ACTOR,
                             reason=f"alarm {signal.alarm_name} went to ALARM")
        return self._apply(r, t, "not live", alarm=signal.alarm_name)

    # --- drift ---------------------------------------------------------------------------------------

    def on_drift(self, detail: Mapping[str, Any]) -> dict[str, Any]:
        """DriftDetected names the tenant whose traffic drifted, the model and the version. A rollout of
        that tenant's own model, or of the shared model the tenant calls (when the tenant is in its
        cohort), whose live candidate is that version rolls back."""
        from tenantml.events import DriftDetected, parse_detail  # noqa: PLC0415

        try:
            drift = parse_detail("DriftDetected", detail)
        except ValueError:
            return _outcome("none", "DriftDetected detail of the wrong shape")
        assert isinstance(drift, DriftDetected)
        for owner in (drift.tenant, SHARED_TENANT) if drift.tenant != SHARED_TENANT else (SHARED_TENANT,):
            try:
                r = self.registry.get_rollout(owner, drift.model)
            except ModelNotFound:
                continue
            if r is None or not r.live or r.candidate != drift.version:
                continue
            if owner == SHARED_TENANT and r.cohort is not None and drift.tenant not in r.cohort:
                continue
            why = f"DriftDetected ({drift.kind}) on the candidate: {drift.reason}"[:500]
            t = machine.rollback(r, candidate=drift.version, now=self._clock(), actor=ACTOR, reason=why)
            return self._apply(r, t, "not live", drift=drift.change_id)
        return _outcome("none", f"drift on {drift.model} version {drift.version}, which is no live "
                                "rollout's candidate: nothing to roll back (the event is the alert)",
                        model=drift.model, version=drift.version)

    # --- alarm management ------------------------------------------------------------------------------

    def on_rollout_changed(self, kind: str, detail: Mapping[str, Any]) -> dict[str, Any]:
        rollout_id = str(detail.get("rollout_id") or "")
        if self.alarms is None:
            return _outcome("none", "alarms are not managed here", rollout_id=rollout_id)
        if kind != "RolloutStarted":
            try:
                deleted = self.alarms.delete(rollout_id)
            except ValueError:
                return _outcome("none", f"{kind} without a valid rollout_id", rollout_id=rollout_id[:64])
            return _outcome("alarms_deleted", f"{kind}: the candidate's alarms are removed",
                            rollout_id=rollout_id, alarms=deleted)
        try:
            r = self.registry.get_rollout(str(detail.get("tenant")), str(detail.get("model")))
        except (ModelNotFound, ValueError):
            r = None
        if r is None or r.id != rollout_id or not r.live:
            return _outcome("none", "RolloutStarted for a rollout that is no longer live",
                            rollout_id=rollout_id)
        created = self.alarms.create(r, r.guardrails)
        return _outcome("alarms_created", "RolloutStarted: the candidate's alarms are in place",
                        rollout_id=rollout_id, alarms=created)
