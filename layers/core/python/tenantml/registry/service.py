"""Registration: the logic shared by the CLI (`tenantml models register`) and the admin API.

A version is registered only when everything it names is real:
- the manifest validates (tenantml.manifest.Manifest);
- every file it lists exists under the version's prefix (`models/<owner>/<model>/<version>/`) and its
  sha256 and size, computed here by streaming the stored object, match the manifest (a client's claim
  is never trusted); small files may come inline and are uploaded only after they verify;
- a head's backbone is a registered version the owner may use (its own or a shared one).
Nothing is registered when a check fails. `manifest.json` is written beside the artifacts.

Quotas (`Quotas`, from RegistrySettings), checked before anything is written: models per tenant and
versions per model (409: the registry's current state refuses it, retrying will not help), files and
bytes per version and the manifest's size (413). Counts are the owner's own, never another tenant's.
Every path (the admin API, `tenantml models register`, local mode) also checks that the files load the
way serving loads them (tenantml.registry.validation; 400 naming the file); `validate_content=False` is
an opt-out for tests that register placeholder bytes only. A registration that fails after it has written
objects deletes the ones it wrote (and only those) unless the version got registered meanwhile.

Who may register (check_write_access): through the admin API a caller with scope `models:write` writes
its own tenant's models (the tenant comes from the authorizer context), and `_shared` when it asks for it
(`?owner=_shared`) and also holds scope `models:admin` (platform operators); no other tenant's. The
authorizer never accepts `_shared` as a token's tenant. The CLI, run by an operator with AWS credentials,
may register for any tenant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from tenantml import SHARED_TENANT
from tenantml.api.context import Caller
from tenantml.errors import BadRequest, Conflict, Forbidden, IntegrityError, ModelNotFound, PayloadTooLarge
from tenantml.manifest import Manifest, sha256_bytes, verify_file
from tenantml.observability import logger
from tenantml.registry import (
    AliasChange,
    ModelRegistry,
    ModelVersion,
    VerifiedArtifactStore,
    check_alias,
    check_model_name,
    check_tenant,
    check_version_id,
)
from tenantml.resources import WRITE_SCOPE
from tenantml.settings import AwsSettings, RegistrySettings, variable

ADMIN_SCOPE = "models:admin"
MANIFEST_FILE = "manifest.json"
MAX_INLINE_BYTES = 4 * 1024 * 1024   # decoded; API Gateway/Lambda bodies stop at 6-10 MB anyway
_MAX_ERRORS = 5


def _default(field: str) -> int:
    return int(RegistrySettings.model_fields[field].default)


@dataclass(frozen=True)
class Quotas:
    """Per-tenant registration limits; the defaults and their reasons are RegistrySettings'."""

    max_models_per_tenant: int = _default("max_models_per_tenant")
    max_versions_per_model: int = _default("max_versions_per_model")
    max_files_per_version: int = _default("max_files_per_version")
    max_version_bytes: int = _default("max_version_bytes")
    max_manifest_bytes: int = _default("max_manifest_bytes")

    @classmethod
    def from_settings(cls, settings: RegistrySettings) -> Quotas:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


def _limit(quotas: Quotas, field: str) -> str:
    return f"limit {getattr(quotas, field)}, setting {variable(field)}"


def check_write_access(caller: Caller, owner: str) -> None:
    """May `caller` change `owner`'s models? Its own tenant's with scope models:write; the shared models
    (`_shared`) with models:write and models:admin, whatever its tenant; no other tenant's (403)."""
    caller.require(WRITE_SCOPE)
    if owner == SHARED_TENANT:
        caller.require(ADMIN_SCOPE)
    elif owner != caller.tenant:
        raise Forbidden("you can change only your own tenant's models")


def summarize_validation(exc: ValidationError, prefix: str = "") -> str:
    """pydantic errors as one client-safe line: location and message, never the input values."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = []
    for err in errors[:_MAX_ERRORS]:
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        parts.append(f"{loc}: {err['msg']}" if loc else str(err["msg"]))
    if len(errors) > _MAX_ERRORS:
        parts.append(f"and {len(errors) - _MAX_ERRORS} more")
    return "invalid request: " + "; ".join(parts)


def parse_manifest(raw: str | bytes | Mapping[str, object]) -> Manifest:
    try:
        if isinstance(raw, str | bytes):
            return Manifest.model_validate_json(raw)
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest(summarize_validation(exc, "manifest")) from None


def named(manifest: Manifest, model: str) -> Manifest:
    """The manifest as registered under `model` (the CLI's --model or the API path wins over its name)."""
    return manifest if manifest.name == model else manifest.model_copy(update={"name": model})


class RegistrationService:
    def __init__(self, registry: ModelRegistry, store: VerifiedArtifactStore, *,
                 max_inline_bytes: int = MAX_INLINE_BYTES, quotas: Quotas | None = None,
                 validate_content: bool = True) -> None:
        self.registry = registry
        self.store = store
        self.max_inline_bytes = max_inline_bytes
        self.quotas = quotas or Quotas()
        self.validate_content = validate_content

    @classmethod
    def from_settings(cls, settings: RegistrySettings, aws: AwsSettings) -> RegistrationService:
        """The admin API's service: the configured quotas (content validation is on, as everywhere)."""
        from tenantml.registry.dynamo import DynamoRegistry  # noqa: PLC0415
        from tenantml.registry.s3 import S3ArtifactStore  # noqa: PLC0415

        return cls(DynamoRegistry(settings.registry_table, aws),
                   S3ArtifactStore(settings.artifact_bucket, aws), quotas=Quotas.from_settings(settings))

    def check_quotas(self, owner: str, model: str, manifest: Manifest) -> None:
        """The version's size (413) and the owner's counts (409), before anything is written. Counts only
        `owner`'s own models and versions; a message never carries another tenant's figures."""
        q = self.quotas
        manifest_bytes = len(manifest.model_dump_json().encode())
        if manifest_bytes > q.max_manifest_bytes:
            raise PayloadTooLarge(f"the manifest is {manifest_bytes} bytes as JSON, above the limit of "
                                  f"{q.max_manifest_bytes} ({_limit(q, 'max_manifest_bytes')})")
        if len(manifest.files) > q.max_files_per_version:
            raise PayloadTooLarge(f"a version may list at most {q.max_files_per_version} files, the manifest "
                                  f"lists {len(manifest.files)} "
                                  f"({_limit(q, 'max_files_per_version')})")
        total = sum(entry.size for entry in manifest.files.values())
        if total > q.max_version_bytes:
            raise PayloadTooLarge(f"a version's files may total at most {q.max_version_bytes} bytes, the "
                                  f"manifest lists {total} ({_limit(q, 'max_version_bytes')})")
        versions = self.registry.count_versions(owner, model)
        if versions >= q.max_versions_per_model:
            raise Conflict(f"quota reached: model '{model}' has {versions} versions "
                           f"({_limit(q, 'max_versions_per_model')}); ask the platform "
                           "operator to raise it")
        if versions == 0:
            models = self.registry.count_models(owner)
            if models >= q.max_models_per_tenant:
                raise Conflict(f"quota reached: your tenant has {models} models "
                               f"({_limit(q, 'max_models_per_tenant')}); register a "
                               "new version of an existing model, or ask the platform operator to raise it")

    def plan_version(self, owner: str, model: str, version: str | None = None) -> str:
        """The version a registration will use: `version` if it is free (Conflict if registered), else
        the next integer."""
        check_tenant(owner)
        check_model_name(model)
        if version is None:
            return self.registry.next_version(owner, model)
        check_version_id(version)
        try:
            self.registry.get_version(owner, model, version)
        except ModelNotFound:
            return version
        raise Conflict(f"version '{version}' of model '{model}' already exists")

    def upload_artifact(self, owner: str, model: str, version: str, name: str, data: bytes) -> bool:
        """Write one file of a version that is not registered yet. Never changes a registered version's
        files; identical content already in place is fine (a retried upload). True if this call wrote it."""
        existing = self.store.put_if_absent(owner, model, version, name, data)
        if existing is None:
            return True
        if existing.sha256 == sha256_bytes(data) and existing.size == len(data):
            return False
        try:
            self.registry.get_version(owner, model, version)
        except ModelNotFound:
            # Left over from a registration that never completed: nothing refers to it, replace it.
            logger.warning("replacing an unregistered artifact",
                           extra={"tenant": owner, "model": model, "version": version, "file": name})
            self.store.put(owner, model, version, name, data)
            return True
        raise Conflict(f"version '{version}' of model '{model}' already exists")

    def _check_backbone(self, owner: str, manifest: Manifest) -> ModelVersion | None:
        ref = manifest.backbone
        if ref is None:
            return None
        # The same answer for a missing backbone and another tenant's: never reveal that it exists.
        refused = BadRequest(f"backbone model '{ref.model}' version '{ref.version}' not found "
                             "(name a registered version of your own or a shared model, not an alias)")
        if ref.tenant not in (owner, SHARED_TENANT):
            raise refused
        try:
            backbone = self.registry.get_version(ref.tenant, ref.model, ref.version)
        except ModelNotFound:
            raise refused from None
        if backbone.manifest.backbone is not None:
            raise BadRequest(f"backbone model '{ref.model}' is itself a head; heads cannot be stacked")
        if backbone.manifest.task != "embedding" or backbone.manifest.backend != "cpu":
            # What the serving path can put a head on (tenantml.serving): a CPU embedding model.
            raise BadRequest(f"backbone model '{ref.model}' must be a cpu embedding model")
        return backbone

    def _check_stored(self, owner: str, model: str, version: str, manifest: Manifest,
                      skip: Sequence[str]) -> None:
        for name, entry in sorted(manifest.files.items()):
            if name in skip:
                continue
            found = self.store.digest(owner, model, version, name)
            if found is None:
                raise BadRequest(f"file '{name}' listed in the manifest was not uploaded for version "
                                 f"'{version}'")
            if found.sha256 != entry.sha256 or found.size != entry.size:
                raise BadRequest(f"file '{name}' does not match the sha256/size in the manifest",
                                 detail=f"stored sha256={found.sha256} size={found.size}")

    def prepare(self, owner: str, model: str, manifest: Manifest, version: str | None = None,
                aliases: Sequence[str] = ()) -> str:
        """The checks that need no artifact (names, backbone, a free version), before anything is
        uploaded. Returns the version to upload to and register."""
        check_tenant(owner)
        check_model_name(model)
        for alias in aliases:
            check_alias(alias)
        self._check_backbone(owner, manifest)
        self.check_quotas(owner, model, manifest)
        return self.plan_version(owner, model, version)

    def register(self, *, owner: str, model: str, manifest: Manifest, actor: str, version: str | None = None,
                 files: Mapping[str, bytes] | None = None, aliases: Sequence[str] = ()) -> ModelVersion:
        """Verify, upload inline files and manifest.json, then register. `files` are inline contents;
        every other file of the manifest must already be stored under the version's prefix."""
        check_tenant(owner)
        check_model_name(model)
        manifest = named(manifest, model)
        inline = dict(files or {})
        unknown = sorted(set(inline) - set(manifest.files))
        if unknown:
            raise BadRequest(f"inline file '{unknown[0]}' is not listed in the manifest")
        if sum(len(d) for d in inline.values()) > self.max_inline_bytes:
            raise PayloadTooLarge(f"inline files exceed {self.max_inline_bytes} bytes in total; store larger "
                                  "files under the version's artifact prefix first")
        if version is None and set(inline) != set(manifest.files):
            raise BadRequest("'version' is required unless every file of the manifest is supplied inline")
        for name, data in sorted(inline.items()):
            try:
                verify_file(manifest, name, data)
            except IntegrityError:
                raise BadRequest(f"file '{name}' does not match the sha256/size in the manifest") from None
        version = self.prepare(owner, model, manifest, version, aliases)
        self._check_stored(owner, model, version, manifest, skip=tuple(inline))
        if self.validate_content:
            from tenantml.registry.validation import ContentValidator  # noqa: PLC0415 - onnxruntime

            ContentValidator(self.store).validate(owner, model, version, manifest, inline,
                                                  self._check_backbone(owner, manifest))
        written: list[str] = []
        try:
            for name, data in sorted(inline.items()):
                if self.upload_artifact(owner, model, version, name, data):
                    written.append(name)
            if self.upload_artifact(owner, model, version, MANIFEST_FILE,
                                    manifest.model_dump_json(indent=2).encode()):
                written.append(MANIFEST_FILE)
            registered = self.registry.register_version(owner, model, manifest, actor, version=version,
                                                        aliases=aliases)
        except BaseException:
            self._discard(owner, model, version, written)
            raise
        logger.info("registration complete", extra={"tenant": owner, "model": model,
                                                     "version": registered.version, "aliases": list(aliases),
                                                     "actor": actor, "inline_files": sorted(inline)})
        return registered

    def _discard(self, owner: str, model: str, version: str, written: Sequence[str]) -> None:
        """Delete what a failed registration wrote, unless the version is registered after all (a
        concurrent registration of the same version won and may refer to the same objects). Best effort:
        a failure here is logged and never replaces the registration's own error."""
        if not written:
            return
        try:
            self.registry.get_version(owner, model, version)
            logger.warning("registration failed but the version is registered; its files are kept",
                           extra={"tenant": owner, "model": model, "version": version})
            return
        except ModelNotFound:
            pass
        except Exception as exc:  # noqa: BLE001 - cannot tell: keep the files rather than risk a version's
            logger.warning("registration cleanup skipped", extra={"error": type(exc).__name__})
            return
        for name in written:
            try:
                self.store.delete(owner, model, version, name)
            except Exception as exc:  # noqa: BLE001
                logger.warning("registration cleanup failed", extra={
                    "tenant": owner, "model": model, "version": version, "file": name,
                    "error": type(exc).__name__})
        logger.info("failed registration cleaned up", extra={"tenant": owner, "model": model,
                                                              "version": version, "files": list(written)})

    def set_alias(self, *, owner: str, model: str, alias: str, version: str, actor: str) -> AliasChange:
        return self.registry.set_alias(owner, model, alias, version, actor)
