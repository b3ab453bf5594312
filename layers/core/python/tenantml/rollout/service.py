"""Rollouts as the admin API and the CLI see them: start, status, promote, abort, freeze, resume.

The state machine (tenantml.rollout.machine) decides; the registry stores (`get_rollout`/`apply_rollout`:
one conditional write on the rollout's revision, with its audit record); the signal store (optional:
tenantml.rollout.signals) says what each version did. A transition computed from a state that has moved on
meanwhile is a Conflict (409): the caller reads the status again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from tenantml import SHARED_TENANT
from tenantml.errors import BadRequest, Conflict, ModelNotFound, NotFound
from tenantml.manifest import TENANT_RE, VERSION_RE
from tenantml.rollout import machine
from tenantml.rollout.machine import Guardrails, Mode, Rollout, RolloutError, Transition, VersionSignals

ACTIONS = ("promote", "abort", "freeze", "resume")


class StartRollout(BaseModel):
    """POST /admin/models/{model}/rollout."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidate: str = Field(pattern=VERSION_RE.pattern, description="the version to roll out")
    stable: str | None = Field(default=None, pattern=VERSION_RE.pattern,
                               description="the version it is compared with (default: what production "
                                           "points at)")
    mode: Mode = "canary"
    stages: list[int] | None = Field(default=None, min_length=1, max_length=10,
                                     description="candidate percentages; default 5,25,50,100 (ab: 50)")
    bake_seconds: int = Field(default=600, ge=0, le=7 * 24 * 3600)
    guardrails: Guardrails | None = None
    cohort: list[str] | None = Field(default=None, min_length=1, max_length=100,
                                     description="a shared model's canary for these tenants only")
    reason: str = Field(default="", max_length=500)


class RolloutAction(BaseModel):
    """POST /admin/models/{model}/rollout/{promote|abort|freeze|resume}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str = Field(default="", max_length=500)


class SignalSource(Protocol):
    def observe(self, rollout: Rollout, version: str, since: datetime,
                ) -> tuple[VersionSignals, dict[str, Any]]:
        """(what the controller judges on, what the status shows), from one read."""
        ...


def _refused(exc: RolloutError) -> Conflict:
    return Conflict(str(exc))


class RolloutService:
    def __init__(self, registry: Any, *, signals: SignalSource | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.registry = registry            # a ModelRegistry
        self.signals = signals
        self._clock = clock

    def _production(self, owner: str, model: str) -> str:
        """The version `owner`'s own model answers with today (never a shared model's for a tenant)."""
        mv = self.registry.resolve(owner, model)
        if mv.owner != owner:
            raise ModelNotFound(model)
        return mv.version

    def get(self, owner: str, model: str) -> Rollout:
        r = self.registry.get_rollout(owner, model)          # ModelNotFound: missing and foreign alike
        if r is None:
            raise NotFound(f"model '{model}' has no rollout")
        return r

    def start(self, owner: str, model: str, body: StartRollout, actor: str) -> Rollout:
        if body.cohort is not None:
            if owner != SHARED_TENANT:
                raise BadRequest("a cohort applies to shared models only (your own model serves only you)")
            bad = [t for t in body.cohort if not TENANT_RE.fullmatch(t) or t == SHARED_TENANT]
            if bad:
                raise BadRequest(f"cohort: invalid tenant id '{bad[0][:64]}'")
        previous = self.registry.get_rollout(owner, model)
        stable = body.stable or self._production(owner, model)
        now = self._clock()
        try:
            after = machine.start(owner=owner, model=model, stable=stable, candidate=body.candidate, now=now,
                                  actor=actor, reason=body.reason or f"roll out version {body.candidate}",
                                  mode=body.mode, stages=tuple(body.stages) if body.stages else None,
                                  bake_seconds=body.bake_seconds, guardrails=body.guardrails,
                                  cohort=tuple(body.cohort) if body.cohort else None, previous=previous)
        except RolloutError as exc:
            raise (BadRequest(str(exc)) if "in progress" not in str(exc) else _refused(exc)) from None
        self.registry.get_version(owner, model, stable)       # ModelNotFound for an unknown stable version
        self.registry.apply_rollout(owner, model, Transition(action="start", before=previous, after=after,
                                                             reason=after.reason, actor=actor))
        return after

    def act(self, owner: str, model: str, action: str, actor: str, reason: str = "") -> Transition:
        """promote, abort, freeze or resume, by an engineer."""
        if action not in ACTIONS:
            raise BadRequest(f"unknown rollout action '{action[:32]}' (one of {', '.join(ACTIONS)})")
        r = self.get(owner, model)
        verb = getattr(machine, action)
        try:
            t = verb(r, now=self._clock(), actor=actor, reason=reason or f"{action} by {actor}")
        except RolloutError as exc:
            raise _refused(exc) from None
        self.registry.apply_rollout(owner, model, t)
        return t

    def status(self, owner: str, model: str) -> dict[str, Any]:
        """The rollout and, with a signal store, what each version did in the current stage."""
        from tenantml.rollout.analysis import Arm, compare  # noqa: PLC0415

        r = self.get(owner, model)
        now = self._clock()
        out: dict[str, Any] = {
            "model": model, "rollout_id": r.id, "mode": r.mode, "status": r.status, "stable": r.stable,
            "candidate": r.candidate, "weight": r.weight, "stages": list(r.stages),
            "stage": r.stages[r.stage], "bake_seconds": r.bake_seconds, "revision": r.revision,
            "started_at": r.started_at.isoformat(), "stage_started_at": r.stage_started_at.isoformat(),
            "updated_at": r.updated_at.isoformat(), "last_known_good": r.last_known_good,
            "cohort": list(r.cohort) if r.cohort else None, "reason": r.reason, "actor": r.actor,
            "guardrails": r.guardrails.model_dump(),
        }
        if self.signals is None:
            return out
        s_sig, stable = self.signals.observe(r, r.stable, r.stage_started_at)
        c_sig, candidate = self.signals.observe(r, r.candidate, r.stage_started_at)
        out["signals"] = {"since": r.stage_started_at.isoformat(), "stable": stable, "candidate": candidate}
        out["next"] = machine.guardrail_breach(r, s_sig, c_sig) or machine.hold_reason(r, c_sig, now)
        if s_sig.labelled and c_sig.labelled and s_sig.accuracy is not None and c_sig.accuracy is not None:
            out["accuracy_test"] = compare(
                Arm(successes=round(s_sig.accuracy * s_sig.labelled), trials=s_sig.labelled),
                Arm(successes=round(c_sig.accuracy * c_sig.labelled), trials=c_sig.labelled),
            ).model_dump()
        return out
