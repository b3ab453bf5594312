"""The serving path's two small caches, both keyed by tenant first.

- `CachingRegistry`: registry resolutions (and "not found" answers) for a short TTL, keyed by
  (tenant, model, version-or-alias); a Registry itself, so it wraps any adapter or fake. An alias move or
  a new registration is therefore seen by a warm environment within `registry_cache_ttl_seconds`, a
  rollout's stage change or rollback within `rollout_cache_ttl_seconds` (5 s).
- `PredictionCache`: finished outputs for identical inputs, keyed by (tenant, owner, model, version,
  sha256 of the canonical input); size 0 disables it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from cachetools import TLRUCache, TTLCache

from tenantml.errors import ModelNotFound
from tenantml.registry import ModelSummary, ModelVersion, Registry
from tenantml.serving.oip import EncodedOutput

Timer = Callable[[], float]
_NOT_FOUND = object()


class CachingRegistry:
    """A Registry that remembers answers for `ttl` seconds (0: no caching), and answers whose model has a
    live rollout for `rollout_ttl` seconds (default: `ttl`): the bound on how late a warm environment
    sees a rollout's next stage or its rollback."""

    def __init__(self, registry: Registry, *, ttl: float, maxsize: int = 4096,
                 timer: Timer = time.monotonic, rollout_ttl: float | None = None) -> None:
        self._registry = registry
        self._enabled = ttl > 0
        short = ttl if rollout_ttl is None else min(rollout_ttl, ttl)

        def expires(_key: Any, value: Any, now: float) -> float:
            rollout = getattr(value, "rollout", None)
            return now + (short if rollout is not None and rollout.live else ttl)

        self._resolved: TLRUCache[tuple[str, str, str], Any] = TLRUCache(maxsize, ttu=expires, timer=timer)
        self._listed: TTLCache[str, list[ModelSummary]] = TTLCache(min(maxsize, 1024), ttl or 1, timer=timer)
        self._lock = threading.Lock()

    def resolve(self, tenant: str, model: str, version: str | None = None) -> ModelVersion:
        if not self._enabled:
            return self._registry.resolve(tenant, model, version)
        key = (tenant, model, version or "")
        with self._lock:
            hit = self._resolved.get(key)
        if hit is None:
            try:
                hit = self._registry.resolve(tenant, model, version)
            except ModelNotFound:
                hit = _NOT_FOUND
            with self._lock:
                self._resolved[key] = hit
        if hit is _NOT_FOUND:
            raise ModelNotFound(model, version)
        return hit

    def list_models(self, tenant: str) -> list[ModelSummary]:
        if not self._enabled:
            return self._registry.list_models(tenant)
        with self._lock:
            hit = self._listed.get(tenant)
        if hit is None:
            hit = list(self._registry.list_models(tenant))
            with self._lock:
                self._listed[tenant] = hit
        return hit

    def clear(self) -> None:
        with self._lock:
            self._resolved.clear()
            self._listed.clear()


PredictionKey = tuple[str, str, str, str, str]


class PredictionCache:
    """Outputs of identical requests for `ttl` seconds. Values are treated as immutable."""

    def __init__(self, *, size: int, ttl: float, timer: Timer = time.monotonic) -> None:
        self.enabled = size > 0 and ttl > 0
        self._cache: TTLCache[PredictionKey, Sequence[EncodedOutput]] | None = (
            TTLCache(size, ttl, timer=timer) if self.enabled else None)
        self._lock = threading.Lock()

    @staticmethod
    def key(tenant: str, mv: ModelVersion, digest: str) -> PredictionKey:
        return (tenant, mv.owner, mv.model, mv.version, digest)

    def get(self, key: PredictionKey) -> Sequence[EncodedOutput] | None:
        if self._cache is None:
            return None
        with self._lock:
            return self._cache.get(key)

    def put(self, key: PredictionKey, outputs: Sequence[EncodedOutput]) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache[key] = outputs

    def __len__(self) -> int:
        return 0 if self._cache is None else len(self._cache)
