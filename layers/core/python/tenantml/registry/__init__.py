"""The model registry: models, versions and aliases in DynamoDB; artifacts in S3.

`Registry` and `ArtifactStore` are the small protocols the serving path depends on; `DynamoRegistry`
and `S3ArtifactStore` are the AWS adapters; tests may use in-memory fakes.

`ModelRegistry` and `VerifiedArtifactStore` extend them with the write side used by registration
(`tenantml.registry.service`). The pure rules below (version selection, registration and alias plans,
the audit page token) are shared by every implementation, so the in-memory fakes
(`tenantml.registry.memory`) cannot drift from the DynamoDB adapter.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, BinaryIO, Protocol

from tenantml import SHARED_TENANT
from tenantml.errors import BadRequest
from tenantml.manifest import NAME_RE, TENANT_RE, VERSION_RE, Manifest


@dataclass(frozen=True)
class ModelVersion:
    """A registered version, as the serving path sees it. `owner` is the tenant that owns the artifacts
    (the caller's own tenant or `_shared`); it is never shown to another tenant."""

    owner: str
    model: str
    version: str
    manifest: Manifest
    status: str = "active"
    # The model's rollout (tenantml.rollout.machine.Rollout) as stored on its model item, or None: the
    # serving path routes with it without another registry read.
    rollout: Any = None


@dataclass(frozen=True)
class ModelSummary:
    owner: str
    model: str
    versions: tuple[str, ...]
    aliases: dict[str, str]
    task: str
    backend: str


class Registry(Protocol):
    def resolve(self, tenant: str, model: str, version: str | None = None) -> ModelVersion:
        """The tenant's own model first, then the `_shared` one. `version` None -> alias `production`,
        else the latest version. Raises ModelNotFound (identical for missing and foreign models)."""
        ...

    def list_models(self, tenant: str) -> list[ModelSummary]:
        """Models the tenant may call: its own and shared ones (its own shadow a shared one of the same
        name)."""
        ...


class ArtifactStore(Protocol):
    def get(self, owner: str, model: str, version: str, name: str) -> bytes:
        """Raw bytes of one artifact file. Raises ModelUnavailable if missing (never leaks the S3 key)."""
        ...

    def download(self, owner: str, model: str, version: str, name: str, out: BinaryIO) -> None:
        """Stream one artifact file into `out` in chunks (large files: model.onnx), so the whole file never
        sits in Python memory. Raises ModelUnavailable if missing or if the transfer fails part-way; what
        was written by then is the caller's to discard. The caller verifies the sha256 of what it got."""
        ...

    def put(self, owner: str, model: str, version: str, name: str, data: bytes) -> None: ...


# --- write side -------------------------------------------------------------------------------------

PRODUCTION_ALIAS = "production"
# Aliases start with a letter, so an all-digit auto-assigned version can never be mistaken for one.
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
ACTION_REGISTER = "register_version"
ACTION_SET_ALIAS = "set_alias"
ACTION_ROLLOUT = "rollout"        # audit actions "rollout_<action>" (start, advance, rollback, ...)
ACTION_REFUSED = "refused"        # audit actions "refused_<route>": an admin attempt answered 403 or 409


@dataclass(frozen=True)
class VersionRecord:
    """One version, as the admin API lists it (no manifest body)."""

    owner: str
    model: str
    version: str
    status: str
    registered_at: str
    registered_by: str
    task: str
    backend: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class AliasChange:
    owner: str
    model: str
    alias: str
    version: str
    previous: str | None


@dataclass(frozen=True)
class AuditRecord:
    tenant: str
    timestamp: str          # ISO 8601, UTC, microseconds
    id: str                 # uuid4
    action: str
    actor: str              # the caller's `sub` (or "cli:<user>")
    model: str
    version: str | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditPage:
    records: tuple[AuditRecord, ...]
    next_token: str | None   # opaque; pass back to get the next (older) page


@dataclass(frozen=True)
class ArtifactDigest:
    sha256: str
    size: int


class ModelRegistry(Registry, Protocol):
    """The registry with its write side (DynamoRegistry, MemoryRegistry)."""

    def get_version(self, owner: str, model: str, version: str) -> ModelVersion:
        """Exactly this owner's version (no shared fallback, no alias). Raises ModelNotFound."""
        ...

    def next_version(self, owner: str, model: str) -> str:
        """The version id an auto-numbered registration would get now (highest integer version + 1)."""
        ...

    def count_models(self, owner: str) -> int:
        """How many models `owner` itself has (its own partition only: never shared or another tenant's)."""
        ...

    def count_versions(self, owner: str, model: str) -> int:
        """How many versions `owner`'s own model has (0 when it has no such model)."""
        ...

    def register_version(self, tenant: str, model: str, manifest: Manifest, actor: str,
                         version: str | None = None, aliases: Sequence[str] = ()) -> ModelVersion:
        """Add a version (Conflict if it exists); point `aliases` at it; append an audit record."""
        ...

    def set_alias(self, tenant: str, model: str, alias: str, version: str, actor: str) -> AliasChange: ...

    def list_versions(self, tenant: str, model: str) -> list[VersionRecord]:
        """Versions of the model `tenant` would resolve (own first, then shared), oldest first."""
        ...

    def list_audit(self, tenant: str, limit: int = 50, next_token: str | None = None) -> AuditPage:
        """The tenant's audit log, newest first."""
        ...

    def get_rollout(self, owner: str, model: str) -> Any:
        """The owner's model's stored Rollout (strongly consistent), or None. ModelNotFound if no model."""
        ...

    def live_rollouts(self) -> list[tuple[str, str]]:
        """(owner, model) of every live (active or frozen) rollout: what the controller checks."""
        ...

    def record_refusal(self, tenant: str, action: str, actor: str, model: str, reason: str) -> None:
        """Append a `refused_<action>` audit record to `tenant`'s log (an admin attempt that was refused)."""
        ...

    def apply_rollout(self, owner: str, model: str, transition: Any) -> None:
        """Store `transition.after` if the stored rollout is still `transition.before` (Conflict
        otherwise), with its audit record `rollout_<action>` in the same write."""
        ...


class VerifiedArtifactStore(ArtifactStore, Protocol):
    """The artifact store with what registration needs: hashing in place and no-clobber writes."""

    def digest(self, owner: str, model: str, version: str, name: str) -> ArtifactDigest | None:
        """sha256 and size of the stored object, computed by streaming it; None if it does not exist."""
        ...

    def put_if_absent(self, owner: str, model: str, version: str, name: str,
                      data: bytes) -> ArtifactDigest | None:
        """Write only if no object exists under the key: None if written, else the existing object's
        digest (nothing written)."""
        ...

    def delete(self, owner: str, model: str, version: str, name: str) -> None:
        """Remove one object of a version that is not registered (a failed registration's upload); a
        missing object is fine."""
        ...


# --- shared rules -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelState:
    """The model item: what every registry implementation persists per (owner, model)."""

    owner: str
    model: str
    task: str
    backend: str
    latest: str
    max_int: int              # highest all-digit version registered (auto-numbering continues from it)
    version_count: int
    aliases: Mapping[str, str]
    created_at: str
    updated_at: str
    rollout: str | None = None      # the Rollout as JSON (tenantml.rollout.machine), None if never started


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    """Fixed-width ISO 8601 (sorts lexicographically)."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_tenant(tenant: str) -> None:
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise BadRequest("invalid tenant")


def check_model_name(model: str) -> None:
    if not isinstance(model, str) or not NAME_RE.fullmatch(model):
        raise BadRequest(f"model name must match {NAME_RE.pattern}")


def check_version_id(version: str) -> None:
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise BadRequest(f"version must match {VERSION_RE.pattern}")


def check_alias(alias: str) -> None:
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
        raise BadRequest(f"alias must match {ALIAS_RE.pattern}")


def lookup_owners(tenant: str) -> tuple[str, ...]:
    """Where a model name is looked up, in order: the tenant's own models, then the shared ones."""
    return (tenant,) if tenant == SHARED_TENANT else (tenant, SHARED_TENANT)


def is_valid_lookup(model: str, version: str | None) -> bool:
    """Names that can never exist are answered as not found without a lookup (and never reach a key)."""
    if not isinstance(model, str) or not NAME_RE.fullmatch(model):
        return False
    return version is None or (isinstance(version, str) and bool(VERSION_RE.fullmatch(version)))


def select_version(state: ModelState, requested: str | None) -> str:
    """None -> alias `production` if set, else the latest version; an alias name -> its version;
    anything else is taken as a version id."""
    if requested is None:
        return state.aliases.get(PRODUCTION_ALIAS, state.latest)
    return state.aliases.get(requested, requested)


def plan_registration(state: ModelState | None, owner: str, model: str, manifest: Manifest,
                      version: str | None, aliases: Sequence[str], now: str) -> ModelState:
    """The model item after registering `version` (auto-numbered when None). Validates names; the caller
    still has to make the write conditional on `state` being current and on the version being new."""
    check_tenant(owner)
    check_model_name(model)
    if manifest.name != model:
        raise BadRequest("manifest name must equal the model name")
    max_int = state.max_int if state else 0
    if version is None:
        version = str(max_int + 1)
    check_version_id(version)
    for alias in aliases:
        check_alias(alias)
    existing_aliases = dict(state.aliases) if state else {}
    if version in existing_aliases or version in aliases:
        raise BadRequest(f"version '{version}' collides with an alias name")
    new_aliases = {**existing_aliases, **{a: version for a in aliases}}
    if version.isascii() and version.isdigit():
        max_int = max(max_int, int(version))
    if state is None:
        return ModelState(owner=owner, model=model, task=manifest.task, backend=manifest.backend,
                          latest=version, max_int=max_int, version_count=1, aliases=new_aliases,
                          created_at=now, updated_at=now)
    return replace(state, task=manifest.task, backend=manifest.backend, latest=version, max_int=max_int,
                   version_count=state.version_count + 1, aliases=new_aliases, updated_at=now)


def rollout_of(state: ModelState | None) -> Any:
    """The stored Rollout of a model item, or None."""
    if state is None or not state.rollout:
        return None
    from tenantml.rollout.machine import Rollout  # noqa: PLC0415 - pure; only models with a rollout

    return Rollout.model_validate_json(state.rollout)


def plan_rollout(state: ModelState | None, transition: Any, now: str) -> ModelState:
    """The model item after applying a rollout Transition (tenantml.rollout.machine). Conflict unless the
    stored rollout is still the one the transition was computed from (its revision): a transition applies
    once, and a trigger that lost the race becomes a no-op for its caller. Completing or promoting moves
    the `production` alias to the candidate in the same write, so no window exists in which the rollout
    has ended but resolution still answers with the old version."""
    from tenantml.errors import Conflict, ModelNotFound  # noqa: PLC0415

    after = transition.after
    if state is None:
        raise ModelNotFound(after.model)
    current = rollout_of(state)
    expected = transition.before
    if (current.revision if current else None) != (expected.revision if expected else None) \
            or (expected is not None and current != expected):
        raise Conflict(f"the rollout of model '{after.model}' changed concurrently; read it again",
                       detail=f"revision {current.revision if current else None}, transition from "
                              f"{expected.revision if expected else None}")
    aliases = dict(state.aliases)
    if after.status == "completed":
        aliases[PRODUCTION_ALIAS] = after.candidate
    return replace(state, aliases=aliases, rollout=after.model_dump_json(), updated_at=now)


def rollout_details(transition: Any) -> dict[str, Any]:
    """The audit record of a rollout change: who or what, why, from, to."""
    after = transition.after
    return {"action": transition.action, "rollout_id": after.id, "mode": after.mode,
            "stable": after.stable, "candidate": after.candidate, "status": after.status,
            "from_weight": transition.from_weight, "to_weight": transition.to_weight,
            "stage": after.stages[after.stage], "revision": after.revision, "reason": transition.reason}


def registration_details(manifest: Manifest, aliases: Sequence[str]) -> dict[str, Any]:
    return {"aliases": list(aliases), "task": manifest.task, "backend": manifest.backend,
            "files": {name: entry.sha256 for name, entry in sorted(manifest.files.items())},
            **({"backbone": manifest.backbone.model_dump()} if manifest.backbone else {})}


# The audit page token is opaque to clients: the sort key of the last record returned, base64url-coded.
# It never holds a partition key, so a token can only ever page through the caller's own audit log.
_AUDIT_SK_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z#[0-9a-f-]{36}$")
MAX_AUDIT_PAGE = 100


def audit_sort_key(timestamp: str, record_id: str) -> str:
    return f"{timestamp}#{record_id}"


def encode_page_token(sort_key: str) -> str:
    raw = json.dumps({"v": 1, "after": sort_key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    """The sort key to continue after. BadRequest for anything this module did not produce."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
        sort_key = value["after"] if isinstance(value, dict) and value.get("v") == 1 else None
    except (binascii.Error, ValueError, TypeError, KeyError):
        sort_key = None
    if not isinstance(sort_key, str) or not _AUDIT_SK_RE.fullmatch(sort_key):
        raise BadRequest("invalid next_token")
    return sort_key


def check_page_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_AUDIT_PAGE:
        raise BadRequest(f"limit must be an integer between 1 and {MAX_AUDIT_PAGE}")
    return limit
