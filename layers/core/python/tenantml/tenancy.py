"""Data access on behalf of one tenant, with credentials that can reach only that tenant's data.

The code keeps tenants apart (resolvers, the second-layer owner checks); IAM keeps them apart even when the
code is wrong. A function that acts for a tenant (inference per request, the drift worker per job) does
its tenant-partitioned reads and writes with STS credentials of its *tenant data role*, assumed with the
session tag `tenant=<tenant>`. That role's policies (tenantml_cdk.permissions.TENANT_CALLS) name
`models/${aws:PrincipalTag/tenant}/*` plus `models/_shared/*` in the artifact bucket and the partitions
`T#${aws:PrincipalTag/tenant}` and `T#_shared` (dynamodb:LeadingKeys), so a resolver pointed at another
tenant's key is refused by AWS.

- `acting_for(tenant)` marks the block (and what it calls, in this thread) as acting for `tenant`: a
  context variable, so concurrent requests on local mode's threads never see each other's tenant, and
  leaving the block restores the previous value (nothing leaks into the next invocation).
- `TenantSessions` assumes the role once per tenant and keeps the credentials (and the clients made with
  them) until `refresh_margin_s` before they expire: a warm request pays no STS call. Bounded LRU
  (cachetools.TLRUCache: each entry lives until its own credentials' expiry).
- `ScopedClient(sessions, service)` looks like one botocore client; each call goes to the client of the
  tenant acted for. Outside `acting_for` it raises `NoTenantContext`: fails closed, never falls back to
  the function's own role.

Requests for the `_shared` tenant (preloading shared models at init) act as `_shared`, whose session reaches
the shared partition and prefix only. Loaded models are cached by the serving runtime independently of the
credentials that fetched them, so the `_shared` backbone is still loaded once per execution environment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from cachetools import TLRUCache

from tenantml.manifest import TENANT_RE
from tenantml.settings import AwsSettings, TenancySettings

TENANT_TAG = "tenant"        # the session tag the data role's policies read (aws:PrincipalTag/tenant)

_ACTING_FOR: ContextVar[str | None] = ContextVar("tenantml_acting_for", default=None)


class NoTenantContext(RuntimeError):
    """Tenant-scoped data access outside `acting_for`: a programming error, refused (fails closed)."""


@contextmanager
def acting_for(tenant: str) -> Iterator[str]:
    """Run the block acting for `tenant` (a valid tenant id, `_shared` included)."""
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise NoTenantContext("acting_for needs a valid tenant id")
    token = _ACTING_FOR.set(tenant)
    try:
        yield tenant
    finally:
        _ACTING_FOR.reset(token)


def current_tenant() -> str:
    tenant = _ACTING_FOR.get()
    if tenant is None:
        raise NoTenantContext("tenant-scoped AWS call outside acting_for()")
    return tenant


@dataclass
class _Session:
    credentials: dict[str, Any]       # AccessKeyId, SecretAccessKey, SessionToken
    expires_at: float                 # epoch seconds
    clients: dict[str, Any] = field(default_factory=dict)


class TenantSessions:
    """Per-tenant sessions of one tenant data role. `sts`: a botocore STS client (made on first use from
    the function's own credentials otherwise); `make_client(service, credentials)`: how a client is built
    with the assumed credentials (default: tenantml.aws.botocore_client's configuration)."""

    def __init__(self, role_arn: str, aws: AwsSettings, *, session_seconds: int = 3600, maxsize: int = 64,
                 refresh_margin_s: float = 300.0, sts: Any = None, clock: Callable[[], float] = time.time,
                 make_client: Callable[[str, dict[str, Any]], Any] | None = None,
                 session_prefix: str = "tenantml") -> None:
        self.role_arn = role_arn
        self._aws = aws
        self._seconds = session_seconds
        self._margin = refresh_margin_s
        self._sts = sts
        self._clock = clock
        self._make_client = make_client or self._default_client
        self._prefix = session_prefix
        self._lock = threading.Lock()
        self._cache: TLRUCache[str, _Session] = TLRUCache(
            maxsize=maxsize, ttu=lambda _k, s, _now: s.expires_at - self._margin, timer=clock)
        self.assumed = 0                      # AssumeRole calls made (the benchmark and tests read it)

    @classmethod
    def from_settings(cls, settings: TenancySettings, aws: AwsSettings) -> TenantSessions | None:
        """None where no tenant role is configured (unit tests with in-memory adapters)."""
        if not settings.tenant_role_arn:
            return None
        return cls(settings.tenant_role_arn, aws, session_seconds=settings.tenant_session_seconds,
                   maxsize=settings.tenant_sessions_max)

    def _default_client(self, service: str, creds: dict[str, Any]) -> Any:
        from tenantml.aws import botocore_client  # noqa: PLC0415 - deliberate lazy import

        return botocore_client(service, self._aws, credentials=creds)

    def _assume(self, tenant: str) -> _Session:
        if self._sts is None:
            from tenantml.aws import botocore_client  # noqa: PLC0415

            self._sts = botocore_client("sts", self._aws)
        resp = self._sts.assume_role(RoleArn=self.role_arn, RoleSessionName=f"{self._prefix}-{tenant}"[:64],
                                     DurationSeconds=self._seconds,
                                     Tags=[{"Key": TENANT_TAG, "Value": tenant}])
        self.assumed += 1
        c = resp["Credentials"]
        expires = c["Expiration"]
        expires_at = expires.timestamp() if hasattr(expires, "timestamp") else float(expires)
        return _Session({"AccessKeyId": c["AccessKeyId"], "SecretAccessKey": c["SecretAccessKey"],
                         "SessionToken": c["SessionToken"]}, expires_at)

    def session(self, tenant: str) -> _Session:
        with self._lock:            # one AssumeRole per tenant even when threads race (local mode)
            s = self._cache.get(tenant)
            if s is None:
                s = self._assume(tenant)
                self._cache[tenant] = s
            return s

    def client(self, service: str, tenant: str | None = None) -> Any:
        """The `service` client of `tenant` (default: the tenant acted for now)."""
        who = current_tenant() if tenant is None else tenant
        s = self.session(who)
        c = s.clients.get(service)
        if c is None:
            with self._lock:
                c = s.clients.get(service)
                if c is None:
                    c = s.clients[service] = self._make_client(service, s.credentials)
        return c


class ScopedClient:
    """A stand-in for one botocore client: every attribute (an API call, `exceptions`, `meta`) is taken
    from the acting tenant's client at the moment it is used."""

    def __init__(self, sessions: TenantSessions, service: str) -> None:
        self._sessions = sessions
        self._service = service

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sessions.client(self._service), name)
