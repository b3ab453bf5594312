"""The serving path's registry cache (tenantml.serving.cache.CachingRegistry): answers are kept for the
registry TTL (30 s deployed), except a model with a live rollout, kept for the rollout TTL (5 s): the bound
on how late a warm environment sees a rollout's next stage or its rollback."""

from __future__ import annotations

from datetime import UTC, datetime

from tenantml.registry.memory import MemoryRegistry, manifest_for
from tenantml.rollout.machine import Transition, rollback, start
from tenantml.serving.cache import CachingRegistry

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class Timer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def registry_with_rollout() -> MemoryRegistry:
    reg = MemoryRegistry()
    for model in ("risk", "churn"):
        for aliases in (["production"], []):
            reg.register_version("acme", model, manifest_for(model, {"model.onnx": b"x"}), "t",
                                 aliases=aliases)
    r = start(owner="acme", model="risk", stable="1", candidate="2", now=T0, actor="t", reason="go")
    reg.apply_rollout("acme", "risk", Transition(action="start", before=None, after=r, reason="go",
                                                 actor="t"))
    return reg


def test_a_rollback_is_seen_within_the_rollout_ttl_and_other_models_keep_the_long_ttl():
    reg, timer = registry_with_rollout(), Timer()
    cache = CachingRegistry(reg, ttl=30, rollout_ttl=5, timer=timer)
    assert cache.resolve("acme", "risk").rollout.live
    cache.resolve("acme", "churn")
    r = reg.get_rollout("acme", "risk")
    reg.apply_rollout("acme", "risk", rollback(r, candidate="2", now=T0, actor="alarm", reason="alarm"))
    reg.register_version("acme", "churn", manifest_for("churn", {"model.onnx": b"y"}), "t",
                         aliases=["production"])                       # churn's production moves to 3
    timer.now += 4.9
    assert cache.resolve("acme", "risk").rollout.live                  # still the cached answer
    timer.now += 0.2                                                    # 5.1 s after it was cached
    assert cache.resolve("acme", "risk").rollout.status == "rolled_back"
    assert cache.resolve("acme", "churn").version == "1"               # 30 s TTL: not yet
    timer.now += 25
    assert cache.resolve("acme", "churn").version == "3"


def test_the_rollout_ttl_never_lengthens_caching():
    reg, timer = registry_with_rollout(), Timer()
    cache = CachingRegistry(reg, ttl=2, rollout_ttl=5, timer=timer)
    cache.resolve("acme", "risk")
    r = reg.get_rollout("acme", "risk")
    reg.apply_rollout("acme", "risk", rollback(r, candidate="2", now=T0, actor="alarm", reason="alarm"))
    timer.now += 2.1
    assert cache.resolve("acme", "risk").rollout.status == "rolled_back"


class Counting:
    """A registry double recording what reached it."""

    def __init__(self, registry) -> None:
        self.registry, self.calls = registry, []

    def resolve(self, tenant, model, version=None):
        self.calls.append((tenant, model, version))
        return self.registry.resolve(tenant, model, version)


def test_with_caching_off_every_resolve_reaches_the_registry_with_its_arguments():
    reg = Counting(registry_with_rollout())
    cache = CachingRegistry(reg, ttl=0, rollout_ttl=5, timer=Timer())
    assert cache.resolve("acme", "churn", "2").version == "2"
    assert cache.resolve("acme", "churn", "2").version == "2"
    assert cache.resolve("acme", "churn").version == "1"
    assert reg.calls == [("acme", "churn", "2"), ("acme", "churn", "2"), ("acme", "churn", None)]


def test_a_one_second_ttl_caches_and_a_version_is_its_own_entry():
    reg, timer = Counting(registry_with_rollout()), Timer()
    cache = CachingRegistry(reg, ttl=1, rollout_ttl=1, timer=timer)
    for _ in range(3):
        assert cache.resolve("acme", "churn").version == "1"
    assert cache.resolve("acme", "churn", "2").version == "2"
    assert reg.calls == [("acme", "churn", None), ("acme", "churn", "2")]
    timer.now += 1.01
    cache.resolve("acme", "churn")
    assert len(reg.calls) == 3


def test_the_prediction_cache_is_on_only_with_a_size_and_a_ttl():
    from tenantml.serving.cache import PredictionCache

    assert PredictionCache(size=1, ttl=0.5).enabled
    assert not PredictionCache(size=0, ttl=60).enabled
    assert not PredictionCache(size=64, ttl=0).enabled
    one = PredictionCache(size=1, ttl=60, timer=Timer())
    one.put(("acme", "acme", "m", "1", "d1"), ["a"])
    one.put(("acme", "acme", "m", "1", "d2"), ["b"])
    assert (len(one), one.get(("acme", "acme", "m", "1", "d2"))) == (1, ["b"])
