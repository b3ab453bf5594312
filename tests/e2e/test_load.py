"""The bounded load test (tenantml.local.loadtest) against the local platform over loopback: 32
concurrent keep-alive clients over 8 tenants, a fixed number of requests, every answer checked for its
status, its model and its request id. Target: 0 errors, no cross-tenant answers. Then a noisy tenant
sending as fast as it can next to them: it gets 429s from its rate limit, the others get none."""

from __future__ import annotations

import asyncio

from tenantml.local.loadtest import prepare_tenants, run_load
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.registry.s3 import S3ArtifactStore

from .conftest import MODELS_DIR

TENANTS = [f"load{i}" for i in range(8)]


def _prepare(platform, tenants):
    prepare_tenants(MODELS_DIR, tenants, DynamoRegistry(platform.names.tables["registry"], platform.aws),
                    S3ArtifactStore(platform.names.buckets["artifacts"], platform.aws))


def test_32_clients_over_8_tenants_get_every_answer_right(platform, capsys):
    _prepare(platform, TENANTS)
    tokens = {t: platform.token(t, ["models:read"]) for t in TENANTS}
    measured, _ = asyncio.run(run_load(platform.base_url, tokens, clients=32, requests=640))
    with capsys.disabled():
        print(f"\n[load] {measured}")
    assert measured["requests"] == 640
    assert measured["errors"] == 0 and measured["cross_tenant_answers"] == 0, measured
    assert measured["throttled_429"] == 0, measured
    assert measured["statuses"].get("404", 0) == measured["foreign_probes"] > 0     # each probe a 404


def test_a_noisy_tenant_is_throttled_and_the_others_do_not_notice(platform, capsys):
    """A per-tenant limit of 10/s, on the platform's throttle table, for this test (the suite runs without
    one; local mode's default, 50/s, is more than a loaded 2-core machine serves): 16 quiet clients over 8
    tenants, each client at most 4 requests a second (8 a second per tenant), next to 16 unpaced clients
    of one noisy tenant."""
    from tenantml.aws import botocore_client
    from tenantml.resources import THROTTLE_TABLE
    from tenantml.serving.throttle import TenantLimiter

    _prepare(platform, [*TENANTS, "noisy"])
    service = platform.emulator.functions["inference"].load().service
    default = service.limiter
    service.limiter = TenantLimiter(platform.names.tables[THROTTLE_TABLE.id], 10, lease=1,
                                    ddb=botocore_client("dynamodb", platform.aws))
    try:
        tokens = {t: platform.token(t, ["models:read"]) for t in TENANTS}
        noisy = ("noisy", platform.token("noisy", ["models:read"]), 16)
        measured, loud = asyncio.run(run_load(platform.base_url, tokens, clients=16, requests=320,
                                              noisy=noisy, pace_s=0.25))
    finally:
        service.limiter = default
    with capsys.disabled():
        print(f"\n[load, with a noisy tenant] {measured}\n[noisy] {loud}")
    assert measured["errors"] == 0 and measured["cross_tenant_answers"] == 0, measured
    assert measured["throttled_429"] == 0, measured
    assert loud is not None and loud["throttled_429"] > 0, loud
    assert loud["errors"] == 0 and loud["cross_tenant_answers"] == 0, loud
