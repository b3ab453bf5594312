"""Listing the artifact bucket's time-partitioned objects (capture frames, feedback, reports): ListObjectsV2
pages, keys under a prefix, the hours a time range spans. Works with boto3's and botocore's S3 clients."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any


def hours(start: datetime, end: datetime) -> list[datetime]:
    """The whole hours that [start, end) touches, oldest first (the `date=/hour=` partitions to list)."""
    h = start.replace(minute=0, second=0, microsecond=0)
    out = []
    while h < end:
        out.append(h)
        h += timedelta(hours=1)
    return out


def list_pages(s3: Any, bucket: str, prefix: str, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
    """Every ListObjectsV2 page under `prefix`."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if delimiter:
        kwargs["Delimiter"] = delimiter
    while True:
        resp = s3.list_objects_v2(**kwargs)
        yield resp
        if not resp.get("NextContinuationToken"):
            return
        kwargs["ContinuationToken"] = resp["NextContinuationToken"]


def list_keys(s3: Any, bucket: str, prefix: str) -> Iterator[str]:
    for page in list_pages(s3, bucket, prefix):
        for obj in page.get("Contents") or []:
            yield obj["Key"]


def stamped_keys(s3: Any, bucket: str, partition: str, suffix: str, start: datetime, end: datetime,
                 ) -> Iterator[str]:
    """Keys `<partition>date=YYYY-MM-DD/hour=HH/<epoch ms>-<token><suffix>` stamped in [start, end), oldest
    hour first."""
    lo, hi = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    for h in hours(start, end):
        for key in list_keys(s3, bucket, f"{partition}date={h:%Y-%m-%d}/hour={h:%H}/"):
            name = key.rsplit("/", 1)[-1]
            stamp = name.split("-", 1)[0]
            if name.endswith(suffix) and stamp.isdigit() and lo <= int(stamp) < hi:
                yield key
