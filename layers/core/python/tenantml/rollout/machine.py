"""The rollout state machine: pure code, no I/O. The registry stores a `Rollout` per (owner, model) and
applies a `Transition` with a conditional write on its revision; everything else (who may call, where
signals come from, what publishes the event) is the adapters' business.

    start -> active --advance--> active (next stage) ... --complete--> completed
               |  ^                                                   (stable := candidate)
          freeze| |resume
               v  |
             frozen
    active|frozen --rollback (guardrail, alarm, drift on the candidate)--> rolled_back
    active|frozen --abort (an engineer)-----------------------------------> aborted
    active|frozen --promote (an engineer: skip to 100)--------------------> completed

Modes. `canary` moves the candidate's weight through `stages` (default 5, 25, 50, 100 percent), a stage
at a time, each after its bake time and only while the guardrails hold. `ab` keeps the split of its one
stage (default 50) until an engineer promotes or aborts; guardrails still roll it back. `shadow` answers
every request with the stable version and runs the candidate on the same input off the response path
(weight 0 for routing; `shadow` says so); it completes only by promotion.

Every transition bumps `revision` by one: the adapter writes the new state only if the stored revision is
still the one the transition was computed from, so two controllers (an alarm and the schedule) can never
both apply a change computed from the same state, and a retried event finds the state already moved and
becomes a no-op. Terminal states (completed, rolled_back, aborted) accept nothing but a new `start`.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Mode = Literal["canary", "ab", "shadow"]
Status = Literal["active", "frozen", "completed", "rolled_back", "aborted"]
Action = Literal["start", "advance", "complete", "rollback", "abort", "promote", "freeze", "resume"]
LIVE: tuple[Status, ...] = ("active", "frozen")
DEFAULT_STAGES = (5, 25, 50, 100)
DEFAULT_AB_SPLIT = 50
ROUTING_BUCKETS = 10_000          # a caller's hash lands in one of these; weight w% = the first 100*w


class RolloutError(ValueError):
    """A request the state machine refuses (the API answers 409 or 400 with this message)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Guardrails(_Model):
    """When a candidate may advance, and when it must roll back (see `evaluate`)."""

    min_requests: int = Field(default=20, ge=1,
                              description="candidate requests in the stage before any verdict")
    max_error_rate: float = Field(default=0.01, ge=0, le=1,
                                  description="error-rate floor: the candidate fails above max(this, ratio x "
                                              "stable's)")
    error_rate_ratio: float = Field(default=2.0, ge=1)
    p95_ratio: float = Field(default=1.5, ge=1,
                             description="candidate p95 latency above this x stable's fails")
    accuracy_margin: float = Field(default=0.03, ge=0, le=1,
                                   description="candidate accuracy this far below stable's fails (needs "
                                               "`min_labelled` labelled predictions on each)")
    min_labelled: int = Field(default=30, ge=1)


class Rollout(_Model):
    """The rollout state of one (owner, model)."""

    id: str = Field(description="opaque id: metric dimensions and alarm names carry it, never the tenant")
    owner: str
    model: str
    stable: str
    candidate: str
    mode: Mode = "canary"
    stages: tuple[int, ...] = DEFAULT_STAGES
    stage: int = Field(default=0, ge=0)
    bake_seconds: int = Field(default=600, ge=0, le=7 * 24 * 3600)
    guardrails: Guardrails = Guardrails()
    cohort: tuple[str, ...] | None = Field(
        default=None, description="tenants that take part (a shared model's canary); others stay on stable")
    last_known_good: str
    status: Status = "active"
    revision: int = Field(default=1, ge=1)
    started_at: datetime
    stage_started_at: datetime
    updated_at: datetime
    actor: str
    reason: str

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(not 0 < w <= 100 for w in v) or any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("stages must be increasing percentages in 1..100")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Rollout:
        if self.stable == self.candidate:
            raise ValueError("the candidate must differ from the stable version")
        if self.stage >= len(self.stages):
            raise ValueError("stage out of range")
        if self.mode == "canary" and self.stages[-1] != 100:
            raise ValueError("a canary's last stage must be 100")
        if self.mode == "ab" and len(self.stages) != 1:
            raise ValueError("an A/B test has one stage: its split")
        return self

    @property
    def live(self) -> bool:
        return self.status in LIVE

    @property
    def weight(self) -> int:
        """The candidate's share of routed traffic, in percent (0 for shadow and ended rollouts)."""
        if not self.live or self.mode == "shadow":
            return 0
        return self.stages[self.stage]



def new_rollout_id(owner: str, model: str, candidate: str, at: datetime) -> str:
    return str(uuid.UUID(hashlib.sha256(f"{owner}/{model}/{candidate}/{at.isoformat()}".encode())
                         .hexdigest()[:32]))


def start(*, owner: str, model: str, stable: str, candidate: str, now: datetime, actor: str, reason: str,
          mode: Mode = "canary", stages: tuple[int, ...] | None = None, bake_seconds: int = 600,
          guardrails: Guardrails | None = None, cohort: tuple[str, ...] | None = None,
          previous: Rollout | None = None) -> Rollout:
    """A new rollout of `candidate` against `stable`. Refused while another one is live."""
    if previous is not None and previous.live:
        raise RolloutError(f"a rollout of version {previous.candidate} is in progress; promote or abort it "
                           "first")
    if stages is None:
        stages = (DEFAULT_AB_SPLIT,) if mode == "ab" else DEFAULT_STAGES
    try:
        return Rollout(id=new_rollout_id(owner, model, candidate, now), owner=owner, model=model,
                       stable=stable, candidate=candidate, mode=mode, stages=tuple(stages),
                       bake_seconds=bake_seconds,
                       guardrails=guardrails or Guardrails(), cohort=cohort, last_known_good=stable,
                       revision=(previous.revision + 1) if previous is not None else 1, started_at=now,
                       stage_started_at=now, updated_at=now, actor=actor, reason=reason)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        raise RolloutError(f"{where}: {message}" if where else message) from None


class Transition(_Model):
    """A change to apply: the state it was computed from (`before.revision` is the write's condition) and
    the state after it."""

    action: Action
    before: Rollout | None
    after: Rollout
    reason: str
    actor: str

    @property
    def from_weight(self) -> int:
        return self.before.weight if self.before is not None else 0

    @property
    def to_weight(self) -> int:
        return self.after.weight if self.after.status != "completed" else 100


def _moved(r: Rollout, action: Action, now: datetime, actor: str, reason: str, **changes: object,
           ) -> Transition:
    after = r.model_copy(update={"revision": r.revision + 1, "updated_at": now, "actor": actor,
                                 "reason": reason, **changes})
    return Transition(action=action, before=r, after=Rollout.model_validate(after.model_dump()),
                      reason=reason, actor=actor)


def _require_live(r: Rollout, action: str) -> None:
    if not r.live:
        raise RolloutError(f"cannot {action}: the rollout of version {r.candidate} is "
                           f"{r.status.replace('_', ' ')}")


def promote(r: Rollout, *, now: datetime, actor: str, reason: str = "promoted") -> Transition:
    _require_live(r, "promote")
    return _moved(r, "promote", now, actor, reason, status="completed", stage=len(r.stages) - 1,
                  last_known_good=r.candidate)


def abort(r: Rollout, *, now: datetime, actor: str, reason: str = "aborted") -> Transition:
    _require_live(r, "abort")
    return _moved(r, "abort", now, actor, reason, status="aborted")


def freeze(r: Rollout, *, now: datetime, actor: str, reason: str = "frozen") -> Transition:
    _require_live(r, "freeze")
    if r.status == "frozen":
        raise RolloutError("the rollout is already frozen")
    return _moved(r, "freeze", now, actor, reason, status="frozen")


def resume(r: Rollout, *, now: datetime, actor: str, reason: str = "resumed") -> Transition:
    if r.status != "frozen":
        raise RolloutError(f"cannot resume: the rollout is {r.status.replace('_', ' ')}, not frozen")
    # The bake time starts again: what was observed while frozen does not count toward advancing.
    return _moved(r, "resume", now, actor, reason, status="active", stage_started_at=now)


def rollback(r: Rollout, *, candidate: str, now: datetime, actor: str, reason: str) -> Transition | None:
    """Back to the stable version, or None (a logged no-op) unless `candidate` is still the rollout's live
    candidate: a late, duplicate or misdirected trigger never rolls back another version or twice."""
    if not r.live or r.candidate != candidate:
        return None
    return _moved(r, "rollback", now, actor, reason, status="rolled_back")


# --- the controller's decision -------------------------------------------------------------------------


class VersionSignals(_Model):
    """What one version did in the current stage (requests, errors, p95 latency, accuracy on feedback)."""

    requests: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    p95_ms: float | None = None
    labelled: int = Field(default=0, ge=0)
    accuracy: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def guardrail_breach(r: Rollout, stable: VersionSignals, candidate: VersionSignals) -> str | None:
    """Why the candidate fails its guardrails, or None. Judged only once the candidate has served
    `min_requests` in the stage: fewer is noise, not evidence (alarms still act on their own)."""
    g = r.guardrails
    if candidate.requests < g.min_requests:
        return None
    limit = max(g.max_error_rate, g.error_rate_ratio * stable.error_rate)
    if candidate.error_rate > limit:
        return (f"candidate error rate {candidate.error_rate:.1%} over {candidate.requests} requests exceeds "
                f"{limit:.1%} (max of {g.max_error_rate:.1%} and {g.error_rate_ratio:g}x stable's "
                f"{stable.error_rate:.1%})")
    if candidate.p95_ms is not None and stable.p95_ms is not None and stable.requests >= g.min_requests \
            and candidate.p95_ms > g.p95_ratio * stable.p95_ms:
        return (f"candidate p95 latency {candidate.p95_ms:.1f} ms exceeds {g.p95_ratio:g}x stable's "
                f"{stable.p95_ms:.1f} ms")
    if candidate.accuracy is not None and stable.accuracy is not None \
            and min(candidate.labelled, stable.labelled) >= g.min_labelled \
            and candidate.accuracy < stable.accuracy - g.accuracy_margin:
        return (f"candidate accuracy {candidate.accuracy:.1%} is more than {g.accuracy_margin * 100:.1f} "
                f"points below stable's {stable.accuracy:.1%}")
    return None


def evaluate(r: Rollout, stable: VersionSignals, candidate: VersionSignals, *, now: datetime,
             actor: str = "rollback") -> Transition | None:
    """The scheduled check: roll back on a guardrail breach; advance (or complete) a canary whose stage
    has baked with enough candidate traffic; otherwise nothing (None: hold)."""
    if r.status != "active":
        return None
    breach = guardrail_breach(r, stable, candidate)
    if breach is not None:
        return rollback(r, candidate=r.candidate, now=now, actor=actor, reason=breach)
    if r.mode != "canary":
        return None
    if now - r.stage_started_at < timedelta(seconds=r.bake_seconds) \
            or candidate.requests < r.guardrails.min_requests:
        return None
    held = (f"stage {r.stages[r.stage]}% held for {r.bake_seconds} s over {candidate.requests} candidate "
            f"requests ({candidate.error_rate:.1%} errors)")
    if r.stage == len(r.stages) - 1:
        return _moved(r, "complete", now, actor, f"{held}; complete", status="completed",
                      last_known_good=r.candidate)
    return _moved(r, "advance", now, actor, f"{held}; advancing to {r.stages[r.stage + 1]}%",
                  stage=r.stage + 1, stage_started_at=now)


def hold_reason(r: Rollout, candidate: VersionSignals, now: datetime) -> str:
    """Why `evaluate` holds, for the status report."""
    if r.status != "active":
        return f"rollout is {r.status.replace('_', ' ')}"
    if r.mode != "canary":
        return f"{r.mode}: no automatic advance (promote or abort)"
    left = r.bake_seconds - (now - r.stage_started_at).total_seconds()
    if left > 0:
        return f"baking: {left:.0f} s left in stage {r.stages[r.stage]}%"
    return f"waiting for traffic: {candidate.requests} of {r.guardrails.min_requests} candidate requests"


# --- routing -----------------------------------------------------------------------------------------


def routing_bucket(model: str, tenant: str, subject: str) -> int:
    """A caller's fixed place in [0, ROUTING_BUCKETS): the same for every request of (model, tenant,
    subject), uniform over callers. The candidate takes the buckets below weight x 100, so a caller on the
    candidate stays there as the weight grows."""
    digest = hashlib.blake2b(f"{model}\x1f{tenant}\x1f{subject}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % ROUTING_BUCKETS


def route(r: Rollout | None, tenant: str, subject: str) -> tuple[str | None, str | None]:
    """(version to answer with, version to shadow) for one request; (None, None) when no rollout applies
    (the caller resolves the model as usual)."""
    if r is None:
        return None, None
    if not r.live:
        return None, None       # ended: a completed rollout moved the `production` alias with it
    if r.cohort is not None and tenant not in r.cohort:
        return r.stable, None
    if r.mode == "shadow":
        return r.stable, r.candidate
    if routing_bucket(r.model, tenant, subject) < r.weight * (ROUTING_BUCKETS // 100):
        return r.candidate, None
    return r.stable, None
