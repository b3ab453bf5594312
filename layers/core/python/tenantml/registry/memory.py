"""In-memory fakes of `ModelRegistry` and `VerifiedArtifactStore` for unit tests (no moto, no sockets).

They follow the same rules as the AWS adapters (the shared plans in `tenantml.registry`): own-then-shared
resolution, aliases, auto-numbering, Conflict on a duplicate version, an audit record per change with
the same opaque page token, and ModelUnavailable for a missing artifact. Thread-safe.

    registry, store = MemoryRegistry(), MemoryArtifactStore()
    registry.register_version("acme", "risk", manifest, actor="test", aliases=["production"])
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, BinaryIO

from tenantml.errors import BadRequest, Conflict, ModelNotFound, ModelUnavailable
from tenantml.manifest import BackboneRef, FileEntry, Manifest, Task, TensorSpec, sha256_bytes
from tenantml.registry import (
    ACTION_REFUSED,
    ACTION_REGISTER,
    ACTION_ROLLOUT,
    ACTION_SET_ALIAS,
    AliasChange,
    ArtifactDigest,
    AuditPage,
    AuditRecord,
    ModelState,
    ModelSummary,
    ModelVersion,
    VersionRecord,
    audit_sort_key,
    check_alias,
    check_model_name,
    check_page_limit,
    check_tenant,
    check_version_id,
    decode_page_token,
    encode_page_token,
    is_valid_lookup,
    iso,
    lookup_owners,
    plan_registration,
    plan_rollout,
    registration_details,
    rollout_details,
    rollout_of,
    select_version,
    utc_now,
)
from tenantml.resources import artifact_prefix


@dataclass(frozen=True)
class _Version:
    seq: int
    value: ModelVersion
    registered_at: str
    registered_by: str


class MemoryRegistry:
    """`Registry` + `ModelRegistry` in a dict. Inspect `audit(tenant)` in tests."""

    def __init__(self, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._models: dict[tuple[str, str], ModelState] = {}
        self._versions: dict[tuple[str, str, str], _Version] = {}
        self._audit: dict[str, list[AuditRecord]] = {}

    # --- reads ---------------------------------------------------------------------------------------

    def _owner_state(self, tenant: str, model: str) -> ModelState | None:
        return next((self._models[(o, model)] for o in lookup_owners(tenant) if (o, model) in self._models),
                    None)

    def _version(self, owner: str, model: str, version: str) -> ModelVersion:
        found = self._versions.get((owner, model, version))
        if found is None:
            raise ModelNotFound(model, version)
        return found.value

    def resolve(self, tenant: str, model: str, version: str | None = None) -> ModelVersion:
        if not is_valid_lookup(model, version):
            raise ModelNotFound(model, version)
        with self._lock:
            state = self._owner_state(tenant, model)
            if state is None:
                raise ModelNotFound(model, version)
            mv = self._version(state.owner, model, select_version(state, version))
            return replace(mv, rollout=rollout_of(state)) if state.rollout else mv

    def get_version(self, owner: str, model: str, version: str) -> ModelVersion:
        if not is_valid_lookup(model, version):
            raise ModelNotFound(model, version)
        with self._lock:
            return self._version(owner, model, version)

    def next_version(self, owner: str, model: str) -> str:
        check_tenant(owner)
        check_model_name(model)
        with self._lock:
            state = self._models.get((owner, model))
            return str((state.max_int if state else 0) + 1)

    def count_models(self, owner: str) -> int:
        check_tenant(owner)
        with self._lock:
            return sum(1 for (o, _) in self._models if o == owner)

    def count_versions(self, owner: str, model: str) -> int:
        check_tenant(owner)
        check_model_name(model)
        with self._lock:
            state = self._models.get((owner, model))
            return state.version_count if state else 0

    def _versions_of(self, owner: str, model: str) -> list[_Version]:
        return sorted((v for (o, m, _), v in self._versions.items() if o == owner and m == model),
                      key=lambda v: v.seq)

    def list_models(self, tenant: str) -> list[ModelSummary]:
        check_tenant(tenant)
        with self._lock:
            summaries: dict[str, ModelSummary] = {}
            for owner in reversed(lookup_owners(tenant)):   # own models shadow shared ones
                for (o, name), state in self._models.items():
                    if o == owner:
                        summaries[name] = ModelSummary(
                            owner=owner, model=name,
                            versions=tuple(v.value.version for v in self._versions_of(owner, name)),
                            aliases=dict(state.aliases), task=state.task, backend=state.backend)
            return [summaries[name] for name in sorted(summaries)]

    def list_versions(self, tenant: str, model: str) -> list[VersionRecord]:
        check_tenant(tenant)
        if not is_valid_lookup(model, None):
            raise ModelNotFound(model)
        with self._lock:
            state = self._owner_state(tenant, model)
            if state is None:
                raise ModelNotFound(model)
            return [VersionRecord(owner=state.owner, model=model, version=v.value.version,
                                  status=v.value.status, registered_at=v.registered_at,
                                  registered_by=v.registered_by, task=v.value.manifest.task,
                                  backend=v.value.manifest.backend,
                                  aliases=tuple(a for a, t in sorted(state.aliases.items())
                                                if t == v.value.version))
                    for v in self._versions_of(state.owner, model)]

    def list_audit(self, tenant: str, limit: int = 50, next_token: str | None = None) -> AuditPage:
        check_tenant(tenant)
        check_page_limit(limit)
        after = decode_page_token(next_token) if next_token is not None else None
        with self._lock:
            newest_first = sorted(self._audit.get(tenant, []),
                                  key=lambda r: audit_sort_key(r.timestamp, r.id), reverse=True)
        if after is not None:
            newest_first = [r for r in newest_first if audit_sort_key(r.timestamp, r.id) < after]
        page = tuple(newest_first[:limit])
        token = (encode_page_token(audit_sort_key(page[-1].timestamp, page[-1].id))
                 if len(newest_first) > limit else None)
        return AuditPage(records=page, next_token=token)

    def audit(self, tenant: str) -> list[AuditRecord]:
        """Every audit record of `tenant`, oldest first (test helper)."""
        with self._lock:
            return sorted(self._audit.get(tenant, []), key=lambda r: audit_sort_key(r.timestamp, r.id))

    # --- writes --------------------------------------------------------------------------------------

    def _append_audit(self, tenant: str, action: str, actor: str, model: str, version: str | None,
                      details: Mapping[str, object], now: str) -> None:
        self._audit.setdefault(tenant, []).append(AuditRecord(
            tenant=tenant, timestamp=now, id=str(uuid.uuid4()), action=action, actor=actor, model=model,
            version=version, details=dict(details)))

    def register_version(self, tenant: str, model: str, manifest: Manifest, actor: str,
                         version: str | None = None, aliases: Sequence[str] = ()) -> ModelVersion:
        check_tenant(tenant)
        check_model_name(model)
        aliases = tuple(dict.fromkeys(aliases))
        with self._lock:
            before = self._models.get((tenant, model))
            now = iso(self._clock())
            after = plan_registration(before, tenant, model, manifest, version, aliases, now)
            chosen = after.latest
            if (tenant, model, chosen) in self._versions:
                raise Conflict(f"version '{chosen}' of model '{model}' already exists")
            value = ModelVersion(owner=tenant, model=model, version=chosen, manifest=manifest)
            self._versions[(tenant, model, chosen)] = _Version(after.version_count, value, now, actor)
            self._models[(tenant, model)] = after
            self._append_audit(tenant, ACTION_REGISTER, actor, model, chosen,
                               registration_details(manifest, aliases), now)
            return value

    def set_alias(self, tenant: str, model: str, alias: str, version: str, actor: str) -> AliasChange:
        check_tenant(tenant)
        check_model_name(model)
        check_alias(alias)
        check_version_id(version)
        if alias == version:
            raise BadRequest(f"alias '{alias}' collides with a version name")
        with self._lock:
            before = self._models.get((tenant, model))
            if before is None:
                raise ModelNotFound(model)
            previous = before.aliases.get(alias)
            if previous == version:
                return AliasChange(tenant, model, alias, version, previous)
            if (tenant, model, version) not in self._versions:
                raise ModelNotFound(model, version)
            if (tenant, model, alias) in self._versions:
                raise BadRequest(f"alias '{alias}' collides with a version name")
            now = iso(self._clock())
            self._models[(tenant, model)] = replace(before, aliases={**before.aliases, alias: version},
                                                    updated_at=now)
            self._append_audit(tenant, ACTION_SET_ALIAS, actor, model, version,
                               {"alias": alias, "previous": previous}, now)
            return AliasChange(tenant, model, alias, version, previous)

    def get_rollout(self, owner: str, model: str) -> Any:
        check_tenant(owner)
        check_model_name(model)
        with self._lock:
            state = self._models.get((owner, model))
            if state is None:
                raise ModelNotFound(model)
            return rollout_of(state)

    def record_refusal(self, tenant: str, action: str, actor: str, model: str, reason: str) -> None:
        check_tenant(tenant)
        with self._lock:
            self._append_audit(tenant, f"{ACTION_REFUSED}_{action}", actor, model, None, {"reason": reason},
                               iso(self._clock()))

    def live_rollouts(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(key for key, state in self._models.items()
                          if state.rollout and rollout_of(state).live)

    def apply_rollout(self, owner: str, model: str, transition: Any) -> None:
        check_tenant(owner)
        check_model_name(model)
        with self._lock:
            now = iso(self._clock())
            after = plan_rollout(self._models.get((owner, model)), transition, now)
            candidate = transition.after.candidate
            if transition.action == "start" and (owner, model, candidate) not in self._versions:
                raise ModelNotFound(model, candidate)
            self._models[(owner, model)] = after
            self._append_audit(owner, f"{ACTION_ROLLOUT}_{transition.action}", transition.actor, model,
                               transition.after.candidate, rollout_details(transition), now)


class MemoryArtifactStore:
    """`VerifiedArtifactStore` in a dict keyed exactly like the S3 adapter (`models/<t>/<m>/<v>/<name>`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.objects: dict[str, bytes] = {}

    @staticmethod
    def key(owner: str, model: str, version: str, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise BadRequest("invalid artifact file name")
        return artifact_prefix(owner, model, version) + name

    def get(self, owner: str, model: str, version: str, name: str) -> bytes:
        key = self.key(owner, model, version, name)
        with self._lock:
            data = self.objects.get(key)
        if data is None:
            raise ModelUnavailable(detail=f"artifact missing: memory://{key}")
        return data

    def download(self, owner: str, model: str, version: str, name: str, out: BinaryIO) -> None:
        out.write(self.get(owner, model, version, name))

    def put(self, owner: str, model: str, version: str, name: str, data: bytes) -> None:
        key = self.key(owner, model, version, name)
        with self._lock:
            self.objects[key] = bytes(data)

    def put_if_absent(self, owner: str, model: str, version: str, name: str,
                      data: bytes) -> ArtifactDigest | None:
        key = self.key(owner, model, version, name)
        with self._lock:
            existing = self.objects.get(key)
            if existing is None:
                self.objects[key] = bytes(data)
                return None
        return ArtifactDigest(sha256=sha256_bytes(existing), size=len(existing))

    def delete(self, owner: str, model: str, version: str, name: str) -> None:
        key = self.key(owner, model, version, name)
        with self._lock:
            self.objects.pop(key, None)

    def digest(self, owner: str, model: str, version: str, name: str) -> ArtifactDigest | None:
        key = self.key(owner, model, version, name)
        with self._lock:
            data = self.objects.get(key)
        return None if data is None else ArtifactDigest(sha256=sha256_bytes(data), size=len(data))


_SPECS: dict[str, tuple[list[TensorSpec], list[TensorSpec]]] = {
    "embedding": ([TensorSpec(name="text", datatype="BYTES", shape=[-1])],
                  [TensorSpec(name="embedding", datatype="FP32", shape=[-1, 8])]),
    "text-classification": ([TensorSpec(name="text", datatype="BYTES", shape=[-1])],
                            [TensorSpec(name="label", datatype="FP32", shape=[-1, 2])]),
    "tabular-classification": ([TensorSpec(name="features", datatype="FP32", shape=[-1, 3])],
                               [TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2])]),
}


def manifest_for(name: str, files: Mapping[str, bytes], *, task: Task = "tabular-classification",
                 backend: str = "cpu", backbone: BackboneRef | None = None, **extra: object) -> Manifest:
    """A valid manifest listing `files` with their real sha256 and size (for tests of code that registers
    or loads versions; the files need not be real models unless the test loads them)."""
    inputs, outputs = _SPECS[task]
    return Manifest.model_validate({
        "name": name, "task": task, "backend": backend, "inputs": inputs, "outputs": outputs,
        "backbone": backbone,
        "files": {n: FileEntry(sha256=sha256_bytes(d), size=len(d)) for n, d in files.items()}, **extra})
