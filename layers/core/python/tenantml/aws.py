"""AWS SDK adapter: one place that creates boto3 clients (lazily: boto3 costs ~0.2 s to import, and the
authorizer never needs it). Local mode and tests point `endpoint_url` at moto."""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
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


@functools.cache
def _botocore_session(region: str) -> Any:
    import botocore.session  # noqa: PLC0415 - deliberate lazy import

    session = botocore.session.get_session()
    session.set_config_variable("region", region)
    return session


_CREATE_LOCK = threading.Lock()   # a botocore session is not thread-safe; creation is serialized here


def botocore_client(service: str, aws: AwsSettings, *, credentials: Mapping[str, str] | None = None) -> Any:
    """The same client as `client` (boto3's clients are botocore clients), made without importing boto3:
    ~40 ms and a few MB less cold start for the inference function, which needs nothing else from boto3.
    `credentials` (AccessKeyId, SecretAccessKey, SessionToken: an STS answer's) replace the function's
    own (tenantml.tenancy). Safe to call from several threads."""
    from botocore.config import Config  # noqa: PLC0415

    cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=2, read_timeout=10)
    keys = {} if credentials is None else {"aws_access_key_id": credentials["AccessKeyId"],
                                           "aws_secret_access_key": credentials["SecretAccessKey"],
                                           "aws_session_token": credentials["SessionToken"]}
    with _CREATE_LOCK:
        return _botocore_session(aws.region).create_client(service, region_name=aws.region,
                                                           endpoint_url=aws.endpoint_url, config=cfg, **keys)
