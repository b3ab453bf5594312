"""The model registry: models, versions and aliases in DynamoDB; artifacts in S3.

`Registry` and `ArtifactStore` are the small protocols the serving path depends on; `DynamoRegistry`
and `S3ArtifactStore` are the AWS adapters; tests may use in-memory fakes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tenantml.manifest import Manifest


@dataclass(frozen=True)
class ModelVersion:
    """A registered version, as the serving path sees it. `owner` is the tenant that owns the artifacts
    (the caller's own tenant or `_shared`); it is never shown to another tenant."""

    owner: str
    model: str
    version: str
    manifest: Manifest
    status: str = "active"


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
        """Models the tenant may call: its own and shared ones (its own shadow a shared one of the same name)."""
        ...


class ArtifactStore(Protocol):
    def get(self, owner: str, model: str, version: str, name: str) -> bytes:
        """Raw bytes of one artifact file. Raises ModelUnavailable if missing (never leaks the S3 key)."""
        ...

    def put(self, owner: str, model: str, version: str, name: str, data: bytes) -> None: ...
