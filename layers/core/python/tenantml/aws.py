"""AWS SDK adapter: one place that creates boto3 clients (lazily: boto3 costs ~0.2 s to import, and the
authorizer never needs it). Local mode and tests point `endpoint_url` at moto."""

from __future__ import annotations

import functools
from typing import Any

from tenantml.settings import AwsSettings


@functools.cache
def _session(region: str) -> Any:
    import boto3  # noqa: PLC0415 - deliberate lazy import

    return boto3.session.Session(region_name=region)


def client(service: str, aws: AwsSettings) -> Any:
    """A boto3 client for `service`, honouring the endpoint override of local mode."""
    from botocore.config import Config  # noqa: PLC0415

    cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=2, read_timeout=10)
    return _session(aws.region).client(service, endpoint_url=aws.endpoint_url, config=cfg)


def resource(service: str, aws: AwsSettings) -> Any:
    return _session(aws.region).resource(service, endpoint_url=aws.endpoint_url)
