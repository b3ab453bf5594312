"""The one exceptions module. Domain code raises these; `tenantml.api.errors` maps them to HTTP
exactly once. `public_message` is what a client may see: it never carries exception text from a
library, an S3 URI, a stack trace or another tenant's id.
"""

from __future__ import annotations


class TenantMLError(Exception):
    """Base class. `status` is the HTTP status the API layer answers with."""

    status: int = 500
    default_message: str = "internal error"

    def __init__(self, public_message: str | None = None, *, detail: str | None = None) -> None:
        self.public_message = public_message or self.default_message
        # `detail` goes to logs only, never to a client.
        self.detail = detail
        super().__init__(self.public_message if detail is None else f"{self.public_message} ({detail})")

    @property
    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(TenantMLError):
    status = 400
    default_message = "bad request"


class Unauthorized(TenantMLError):
    status = 401
    default_message = "unauthorized"


class Forbidden(TenantMLError):
    status = 403
    default_message = "forbidden"


class NotFound(TenantMLError):
    status = 404
    default_message = "not found"


class ModelNotFound(NotFound):
    """Raised for a missing model AND for another tenant's model: the answer must be identical."""

    def __init__(self, model: str, version: str | None = None, *, detail: str | None = None) -> None:
        where = f"model '{model}'" if version is None else f"model '{model}' version '{version}'"
        super().__init__(f"{where} not found", detail=detail)


class Conflict(TenantMLError):
    status = 409
    default_message = "conflict"


class PayloadTooLarge(TenantMLError):
    status = 413
    default_message = "payload too large"


class Throttled(TenantMLError):
    status = 429
    default_message = "too many requests"


class ModelUnavailable(TenantMLError):
    """The model exists but cannot be served now (artifact missing/corrupt, backend down)."""

    status = 503
    default_message = "model unavailable"

    def __init__(self, public_message: str | None = None, *, retry_after: int = 30,
                 detail: str | None = None) -> None:
        super().__init__(public_message, detail=detail)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ServiceUnavailable(TenantMLError):
    """A platform dependency (event bus, queue) refused the work after its retries; the work is retried
    by its trigger, never dropped."""

    status = 503
    default_message = "service unavailable"


class DeadlineExceeded(TenantMLError):
    status = 504
    default_message = "deadline exceeded"


class IntegrityError(ModelUnavailable):
    """An artifact's sha256 does not match its manifest. Never load it."""

    default_message = "model unavailable"
