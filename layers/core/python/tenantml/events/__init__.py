"""The events the platform publishes on its EventBridge bus (source `tenantml`): one pydantic model per
detail-type, the contract consumers parse with (`parse_detail`). Pure: no boto3.

Every detail carries the tenant, the model, the version(s), a human-readable reason, who or what caused
the change (`actor`) and `change_id`, the id of the committed change (the registry's audit record) the
event was published for: delivery is at least once, so consumers deduplicate on `change_id`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SOURCE = "tenantml"


def event_time(ts: datetime) -> str:
    """EventBridge's time format (UTC, whole seconds): envelopes, windows and reports use it."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventDetail(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str = Field(description="owner of the model: a tenant id or _shared")
    model: str
    version: str | None
    reason: str
    actor: str = Field(description="the token subject, or the platform component, that made the change")
    change_id: str = Field(description="id of the committed change (audit record); deduplicate on it")
    at: str = Field(description="when the change was committed, ISO 8601 UTC")


class ModelVersionRegistered(EventDetail):
    """A version was registered (its artifacts verified and stored)."""

    task: str
    backend: str
    aliases: list[str] = Field(default_factory=list, description="aliases pointed at it by the registration")


class AliasChanged(EventDetail):
    """An alias (production, canary, ...) now points at `version`."""

    alias: str
    previous: str | None = Field(description="the version the alias pointed at before, if any")


class DriftDetected(EventDetail):
    """A drift check found the window's data, predictions or accuracy moved away from the baseline.
    `change_id` identifies the check (tenant, model, version, window): a retried check repeats it."""

    kind: Literal["data", "prediction", "accuracy"]
    window_start: str
    window_end: str
    report: str = Field(description="key of the JSON report in the artifact bucket (an .html sits beside it)")
    drifted_features: list[str] = Field(default_factory=list)
    # kind "accuracy": the figure that dropped ("accuracy" of a classifier, "mae" of a regression), its
    # value over the window's labelled predictions and the version's baseline value.
    metric: Literal["accuracy", "mae"] | None = None
    value: float | None = None
    baseline: float | None = None


class RolloutChanged(EventDetail):
    """A rollout moved (the registry's `rollout_<action>` audit record). `version` is the candidate."""

    rollout_id: str = Field(description="opaque id of the rollout (alarm names and metrics carry it)")
    action: Literal["start", "advance", "complete", "rollback", "abort", "promote", "freeze", "resume"]
    mode: Literal["canary", "ab", "shadow"]
    stable: str
    candidate: str
    status: Literal["active", "frozen", "completed", "rolled_back", "aborted"]
    from_weight: int = Field(ge=0, le=100, description="the candidate's share of traffic before, percent")
    to_weight: int = Field(ge=0, le=100, description="and after the change")


class RolloutStarted(RolloutChanged):
    """A rollout of `candidate` against `stable` started (action start)."""


class RolloutAdvanced(RolloutChanged):
    """A canary moved to its next stage (advance), or a frozen rollout resumed (resume, same weight)."""


class RolloutCompleted(RolloutChanged):
    """The candidate serves everyone and `production` points at it (complete, or promote)."""


class RolloutRolledBack(RolloutChanged):
    """Back to the stable version: a guardrail, an alarm or drift on the candidate (rollback), or an
    engineer (abort)."""


class RolloutFrozen(RolloutChanged):
    """The rollout holds its current stage until resumed (freeze)."""


ROLLOUT_EVENTS: dict[str, str] = {
    "start": "RolloutStarted", "advance": "RolloutAdvanced", "resume": "RolloutAdvanced",
    "complete": "RolloutCompleted", "promote": "RolloutCompleted", "rollback": "RolloutRolledBack",
    "abort": "RolloutRolledBack", "freeze": "RolloutFrozen",
}

DETAIL_MODELS: dict[str, type[EventDetail]] = {
    "ModelVersionRegistered": ModelVersionRegistered,
    "AliasChanged": AliasChanged,
    "DriftDetected": DriftDetected,
    "RolloutStarted": RolloutStarted,
    "RolloutAdvanced": RolloutAdvanced,
    "RolloutCompleted": RolloutCompleted,
    "RolloutRolledBack": RolloutRolledBack,
    "RolloutFrozen": RolloutFrozen,
}


def parse_detail(detail_type: str, detail: Any) -> EventDetail:
    """The typed detail of a tenantml event (detail as a dict or a JSON string). KeyError for an unknown
    detail-type, pydantic.ValidationError for a detail that does not match its model."""
    model = DETAIL_MODELS[detail_type]
    if isinstance(detail, str | bytes):
        return model.model_validate_json(detail)
    return model.model_validate(detail)
