"""Module-level Powertools singletons. Metrics carry dimensions model and version only, never tenant
(tenant ids are unbounded cardinality and would be a cost and privacy problem); logs carry the tenant.

`tracer` is a Powertools Tracer created on first use, and only when `TENANTML_TRACING` is on: importing the
X-Ray SDK costs ~0.3-0.5 s of cold start (it builds a botocore client at import), which the inference
function should not pay unless someone wants X-Ray subsegments.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics

from tenantml.settings import get_observability_settings

SERVICE = "tenantml"
NAMESPACE = "tenantml"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)


class LazyTracer:
    """The decorator surface of `aws_lambda_powertools.Tracer`, resolved at the first call: a real Tracer
    when tracing is enabled in settings, a pass-through otherwise."""

    def __init__(self, service: str) -> None:
        self._service = service
        self._impl: Any = None
        self._resolved = False

    def _tracer(self) -> Any:
        if not self._resolved:
            if get_observability_settings().tracing:
                from aws_lambda_powertools import Tracer  # noqa: PLC0415 - deliberate lazy import

                self._impl = Tracer(service=self._service)
            self._resolved = True
        return self._impl

    def _wrap(self, fn: Callable, kind: str, **kwargs: Any) -> Callable:
        traced: list[Callable] = []

        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            impl = self._tracer()
            if impl is None:
                return fn(*args, **kw)
            if not traced:
                traced.append(getattr(impl, kind)(fn, **kwargs))
            return traced[0](*args, **kw)
        return wrapper

    def capture_lambda_handler(self, fn: Callable | None = None, **kwargs: Any) -> Any:
        if fn is None:
            return lambda f: self._wrap(f, "capture_lambda_handler", **kwargs)
        return self._wrap(fn, "capture_lambda_handler", **kwargs)

    def capture_method(self, fn: Callable | None = None, **kwargs: Any) -> Any:
        if fn is None:
            return lambda f: self._wrap(f, "capture_method", **kwargs)
        return self._wrap(fn, "capture_method", **kwargs)

    def put_annotation(self, key: str, value: str | int | float | bool) -> None:
        if (impl := self._tracer()) is not None:
            impl.put_annotation(key=key, value=value)

    def put_metadata(self, key: str, value: Any, namespace: str | None = None) -> None:
        if (impl := self._tracer()) is not None:
            impl.put_metadata(key=key, value=value, namespace=namespace)


tracer = LazyTracer(SERVICE)
