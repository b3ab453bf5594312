"""S3 adapter of the artifact store: `models/<tenant>/<model>/<version>/<file>` in the artifact bucket.

Clients never see a key or bucket: a missing or unreadable artifact is ModelUnavailable, with the key in
`detail` (logs only). Models are streamed into a file (`download`) rather than read whole. Registration
hashes objects in place by streaming them (`digest`), and writes new artifacts with `If-None-Match: *`
(`put_if_absent`) so an existing version's files are never clobbered.
"""

from __future__ import annotations

import hashlib
from typing import Any, BinaryIO

from tenantml.aws import client as aws_client
from tenantml.errors import BadRequest, Conflict, ModelUnavailable
from tenantml.registry import ArtifactDigest
from tenantml.resources import artifact_prefix
from tenantml.settings import AwsSettings

_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_CHUNK = 1 << 20


def _code(exc: Exception) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


class S3ArtifactStore:
    """`ArtifactStore` + `VerifiedArtifactStore` on one bucket."""

    def __init__(self, bucket: str, aws: AwsSettings, *, client: Any | None = None,
                 chunk_size: int = _CHUNK) -> None:
        self.bucket = bucket
        self._s3 = client if client is not None else aws_client("s3", aws)
        self._chunk = chunk_size

    @staticmethod
    def key(owner: str, model: str, version: str, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise BadRequest("invalid artifact file name")
        return artifact_prefix(owner, model, version) + name

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def get(self, owner: str, model: str, version: str, name: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        key = self.key(owner, model, version, name)
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            what = "missing" if _code(exc) in _MISSING else f"unreadable ({_code(exc)})"
            raise ModelUnavailable(detail=f"artifact {what}: {self._where(key)}") from None
        except BotoCoreError as exc:
            raise ModelUnavailable(detail=f"artifact unreachable ({type(exc).__name__}): "
                                          f"{self._where(key)}") from None

    def download(self, owner: str, model: str, version: str, name: str, out: BinaryIO) -> None:
        """GetObject streamed into `out` in `chunk_size` pieces (a model never sits in memory whole)."""
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        key = self.key(owner, model, version, name)
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                for chunk in body.iter_chunks(self._chunk):
                    out.write(chunk)
            finally:
                body.close()
        except ClientError as exc:
            what = "missing" if _code(exc) in _MISSING else f"unreadable ({_code(exc)})"
            raise ModelUnavailable(detail=f"artifact {what}: {self._where(key)}") from None
        except BotoCoreError as exc:   # includes a connection dropped part-way through the body
            raise ModelUnavailable(detail=f"artifact unreachable ({type(exc).__name__}): "
                                          f"{self._where(key)}") from None

    def put(self, owner: str, model: str, version: str, name: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=self.key(owner, model, version, name), Body=data)

    def put_if_absent(self, owner: str, model: str, version: str, name: str,
                      data: bytes) -> ArtifactDigest | None:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        key = self.key(owner, model, version, name)
        try:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
            return None
        except ClientError as exc:
            if _code(exc) == "ConditionalRequestConflict":   # a concurrent conditional write of this key
                raise Conflict("artifact upload raced with another; retry",
                               detail=f"conditional put conflict: {self._where(key)}") from None
            if _code(exc) not in ("PreconditionFailed", "412"):
                raise
        existing = self.digest(owner, model, version, name)
        if existing is None:     # deleted between the two calls: report it rather than guess
            raise Conflict("artifact upload raced with another; retry",
                           detail=f"object vanished after precondition failure: {self._where(key)}")
        return existing

    def delete(self, owner: str, model: str, version: str, name: str) -> None:
        """DeleteObject (S3 answers success for a missing key). Registration calls it only for the objects
        a failed registration wrote itself, of a version that is not registered."""
        self._s3.delete_object(Bucket=self.bucket, Key=self.key(owner, model, version, name))

    def digest(self, owner: str, model: str, version: str, name: str) -> ArtifactDigest | None:
        """Stream the object through sha256 (never trusts a stored checksum or a client claim)."""
        from botocore.exceptions import ClientError  # noqa: PLC0415

        key = self.key(owner, model, version, name)
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        h = hashlib.sha256()
        size = 0
        try:
            for chunk in body.iter_chunks(self._chunk):
                h.update(chunk)
                size += len(chunk)
        finally:
            body.close()
        return ArtifactDigest(sha256=h.hexdigest(), size=size)
