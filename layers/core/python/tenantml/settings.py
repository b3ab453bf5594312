"""Settings: the only module that reads the environment.

Each function parses what it needs once, at the edge, through a cached getter; the domain receives the
resulting pydantic model. Tests call `reset_settings()` after changing the environment.
Every variable is prefixed `TENANTML_` (e.g. TENANTML_REGISTRY_TABLE).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

PREFIX = "TENANTML_"
T = TypeVar("T", bound=BaseModel)


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @classmethod
    def from_env(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = PREFIX + name.upper()
            if key in env and env[key] != "":
                values[name] = env[key]
        return cls.model_validate(values)


class AwsSettings(_Settings):
    """Where the AWS SDK points. `endpoint_url` is set only in local mode (moto server)."""

    region: str = Field(default_factory=lambda: os.environ.get("AWS_REGION")
                        or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    endpoint_url: str | None = None


class AuthSettings(_Settings):
    """The JWT authorizer. Exactly one of jwks_url / jwks_json."""

    jwks_url: str | None = None
    jwks_json: str | None = None
    issuer: str
    audience: str
    tenant_claim: str = "tenant_id"
    leeway_seconds: int = Field(default=60, ge=0, le=60)
    jwks_ttl_seconds: int = Field(default=300, ge=1)
    jwks_min_refresh_seconds: int = Field(default=60, ge=1)

    @model_validator(mode="after")
    def _one_key_source(self) -> AuthSettings:
        if bool(self.jwks_url) == bool(self.jwks_json):
            raise ValueError("set exactly one of TENANTML_JWKS_URL or TENANTML_JWKS_JSON")
        return self


class RegistrySettings(_Settings):
    """Where models live: the artifact bucket and the registry table."""

    artifact_bucket: str
    registry_table: str


class ServingSettings(RegistrySettings):
    """The inference function."""

    max_batch: int = Field(default=64, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1)
    model_cache_mb: int = Field(default=512, ge=16)
    prediction_cache_size: int = Field(default=2048, ge=0)
    prediction_cache_ttl_seconds: int = Field(default=300, ge=0)
    registry_cache_ttl_seconds: int = Field(default=30, ge=0)
    # Comma-separated "tenant/model[/version]" loaded at init (SnapStart, cold start).
    preload_models: str = ""


class ObservabilitySettings(_Settings):
    """X-Ray through the Powertools Tracer. Off by default: the X-Ray SDK builds a botocore client when it
    is imported (~0.3-0.5 s of cold start on a 2-core machine). Lambda's own Active tracing still records
    each invocation without it; turn this on to get subsegments (boto3 calls, model load, predict)."""

    tracing: bool = False


@functools.cache
def get_observability_settings() -> ObservabilitySettings:
    return ObservabilitySettings.from_env()


@functools.cache
def get_aws_settings() -> AwsSettings:
    return AwsSettings.from_env()


@functools.cache
def get_auth_settings() -> AuthSettings:
    return AuthSettings.from_env()


@functools.cache
def get_registry_settings() -> RegistrySettings:
    return RegistrySettings.from_env()


@functools.cache
def get_serving_settings() -> ServingSettings:
    return ServingSettings.from_env()


def reset_settings() -> None:
    for getter in (get_observability_settings, get_aws_settings, get_auth_settings, get_registry_settings,
                   get_serving_settings):
        getter.cache_clear()


def environment(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the process environment with `overrides` applied (for child processes)."""
    return {**os.environ, **(overrides or {})}


class EnvPatch:
    """Set (and remove) process environment variables, and put everything back on `restore()`; the
    settings caches are reset both ways. Local mode and the benchmark use it to give in-process functions
    the environment Lambda would (they read it through this module, exactly as on Lambda)."""

    def __init__(self, values: Mapping[str, str], remove: Iterable[str] = ()) -> None:
        self.values = dict(values)
        self.remove = tuple(remove)
        self._saved: dict[str, str | None] | None = None

    def apply(self) -> EnvPatch:
        if self._saved is None:
            self._saved = {k: os.environ.get(k) for k in (*self.values, *self.remove)}
            for k in self.remove:
                os.environ.pop(k, None)
            os.environ.update(self.values)
            reset_settings()
        return self

    def restore(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_settings()

    def __enter__(self) -> EnvPatch:
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        self.restore()
