"""Shared by the integration tests: a moto account holding the platform's resources (created from
tenantml.resources, as local mode and the CDK app do) and the process environment a function would get
on Lambda (tenantml.local.provision.function_env), undone afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from moto import mock_aws

from tenantml import resources
from tenantml.local.provision import create_resources, function_env
from tenantml.settings import AwsSettings, reset_settings

AWS = AwsSettings(region="us-east-1")
NAMES = resources.LocalNames.make("tenantml-test")


@contextmanager
def lambda_account(monkeypatch) -> Iterator[None]:
    """moto with the tables and bucket, and the functions' environment pointing at them (in-process moto:
    no endpoint URL)."""
    with mock_aws():
        create_resources(AWS, NAMES)
        for key, value in function_env(NAMES, AWS).items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("TENANTML_ENDPOINT_URL", raising=False)
        reset_settings()
        try:
            yield
        finally:
            reset_settings()
