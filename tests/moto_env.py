"""Shared by the integration tests: a moto account holding the platform's resources (created from
tenantml.resources, as local mode and the CDK app do) and the process environment one function gets on
Lambda: exactly its declared variables (tenantml.local.provision.local_environment), nothing else of
tenantml's, undone afterwards."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from moto import mock_aws

from tenantml import resources
from tenantml.local.provision import create_resources, local_environment, process_env
from tenantml.settings import PREFIX, AwsSettings, reset_settings

AWS = AwsSettings(region="us-east-1")
NAMES = resources.LocalNames.make("tenantml-test")


def use_function_environment(monkeypatch, function: str, auth: Mapping[str, str] | None = None) -> dict:
    """Set the process environment to what `function` gets: its declared variables only."""
    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    env = {**process_env(AWS), **local_environment(resources.function(function), NAMES, AWS, auth)}
    env.pop("TENANTML_ENDPOINT_URL", None)   # in-process moto: no endpoint URL
    # No per-tenant rate limit: tests call handlers as fast as they can; the limit's tests set their own.
    env.pop("TENANTML_TENANT_RATE_LIMIT", None)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    return env


@contextmanager
def lambda_account(monkeypatch, function: str, auth: Mapping[str, str] | None = None) -> Iterator[dict]:
    """moto with the platform's resources, and `function`'s environment pointing at them (`auth`: the
    authorizer's JWKS/issuer/audience, e.g. DevKeys.auth_env())."""
    with mock_aws():
        create_resources(AWS, NAMES)
        env = use_function_environment(monkeypatch, function, auth)
        try:
            yield env
        finally:
            reset_settings()


def local_functions(definitions, path_of, **overrides: str) -> dict:
    """LocalFunctions for `definitions` (handler file from `path_of(definition)`), each with exactly its
    declared variables pointed at in-process moto, plus `overrides` where a function declares them."""
    from tenantml.local.context import LocalFunction

    functions = {}
    for d in definitions:
        env = local_environment(d, NAMES, AWS)
        env.pop("TENANTML_ENDPOINT_URL", None)
        env.pop("TENANTML_TENANT_RATE_LIMIT", None)
        env.update({k: v for k, v in overrides.items() if k in env})
        functions[d.name] = LocalFunction(d, path_of(d), prefix=NAMES.prefix, env=env)
    return functions
