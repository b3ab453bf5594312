"""tenantml.serving.throttle: per-tenant limits shared by execution environments through DynamoDB (moto),
leased a few tokens per write; a noisy tenant is refused, a quiet one never notices; the store failing
fails open."""

from __future__ import annotations

import pytest
from botocore.stub import Stubber
from moto import mock_aws

from tenantml.errors import Throttled
from tenantml.local.provision import create_resources
from tenantml.resources import THROTTLE_TABLE, LocalNames
from tenantml.serving.throttle import TenantLimiter, TenantThrottled
from tenantml.settings import AwsSettings

AWS = AwsSettings(region="us-east-1")
NAMES = LocalNames.make("tenantml-throttle")
TABLE = NAMES.tables[THROTTLE_TABLE.id]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.25

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ddb(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        create_resources(AWS, NAMES)
        from tenantml.aws import botocore_client

        yield botocore_client("dynamodb", AWS)


def admitted(limiter: TenantLimiter, tenant: str, n: int) -> int:
    ok = 0
    for _ in range(n):
        try:
            limiter.admit(tenant)
            ok += 1
        except TenantThrottled:
            pass
    return ok


def test_environments_share_one_limit_per_tenant_and_second(ddb):
    clock = Clock()
    envs = [TenantLimiter(TABLE, 20, lease=4, ddb=ddb, clock=clock) for _ in range(3)]
    total = sum(admitted(env, "noisy", 30) for env in envs)
    assert total == 20                                   # 5 leases of 4, across the three environments
    assert sum(env.writes for env in envs) <= 5 + 3      # a write per lease, plus one refusal per env
    clock.now += 1                                       # the next second: a new window
    assert admitted(envs[0], "noisy", 3) == 3


def test_a_noisy_tenant_never_takes_a_quiet_tenants_requests(ddb):
    clock = Clock()
    env = TenantLimiter(TABLE, 10, lease=2, ddb=ddb, clock=clock)
    assert admitted(env, "noisy", 100) == 10
    assert admitted(env, "quiet", 5) == 5


def test_refusals_in_a_used_up_window_cost_no_write(ddb):
    clock = Clock()
    env = TenantLimiter(TABLE, 4, lease=2, ddb=ddb, clock=clock)
    admitted(env, "t", 4)
    writes = env.writes
    assert admitted(env, "t", 50) == 0
    assert env.writes == writes + 1                      # one refused lease, then none


def test_the_answer_is_429_with_retry_after():
    exc = TenantThrottled()
    assert isinstance(exc, Throttled) and exc.status == 429 and exc.headers == {"Retry-After": "1"}


def test_the_lease_defaults_to_a_tenth_of_the_limit_and_fits_in_it():
    assert TenantLimiter(TABLE, 50, ddb=object()).lease == 5
    assert TenantLimiter(TABLE, 3, ddb=object()).lease == 1
    assert TenantLimiter(TABLE, 3, lease=10, ddb=object()).lease == 3
    with pytest.raises(ValueError):
        TenantLimiter(TABLE, 0, ddb=object())


@pytest.mark.parametrize("code", ["ProvisionedThroughputExceededException", "InternalServerError"])
def test_the_store_failing_fails_open(ddb, code):
    env = TenantLimiter(TABLE, 1, ddb=ddb, clock=Clock())
    with Stubber(ddb) as stub:
        stub.add_client_error("update_item", service_error_code=code, http_status_code=500)
        env.admit("t")                                    # admitted although nothing was leased
    env.admit("t")                                        # the store is back: the window's one token
    with pytest.raises(TenantThrottled):
        env.admit("t")
