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
