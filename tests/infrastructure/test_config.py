"""Deployment configuration from CDK context: defaults, coercion of `-c key=value` strings, and errors that
name the context key to fix. No synthesis here."""

from __future__ import annotations

import pytest
from infra_helpers import ROOT, cdk_json_context
from tenantml_cdk.config import ConfigError, context_keys, load_config

from tenantml import resources, settings

REQUIRED = {"jwks_url": "https://tenant.eu.auth0.com/.well-known/jwks.json",
            "issuer": "https://tenant.eu.auth0.com/", "audience": "https://api.example.org"}


def test_cdk_json_context_is_a_valid_configuration_out_of_the_box():
    config = load_config(cdk_json_context())
    assert config.stage == resources.DEFAULT_STAGE
    assert config.tenant_claim == "tenant_id"
    assert config.authorizer_cache_ttl_seconds == 300
    assert config.snapstart is False
    # The shipped values are documentation placeholders, and the app knows it (it warns at synth).
    assert config.uses_example_identity_provider


def test_defaults_come_from_resources_and_a_real_idp_is_not_flagged_as_example():
    config = load_config(REQUIRED)
    assert not config.uses_example_identity_provider
    assert config.architecture == "x86_64"
    for definition in resources.FUNCTIONS:
        assert config.sizing(definition.name).memory_mb == definition.memory_mb
        assert config.sizing(definition.name).timeout_seconds == definition.timeout_s


def test_command_line_strings_are_coerced():
    config = load_config({**REQUIRED, "snapstart": "true", "authorizer_cache_ttl_seconds": "60",
                          "inference_memory_mb": "3008", "architecture": "arm64",
                          "preload_models": " _shared/minilm-embed , acme/risk/3 "})
    assert config.snapstart is True
    assert config.authorizer_cache_ttl_seconds == 60
    assert config.sizing("inference").memory_mb == 3008
    assert config.architecture == "arm64"
    assert config.preload_models == "_shared/minilm-embed,acme/risk/3"


@pytest.mark.parametrize(("override", "key"), [
    ({"jwks_url": None}, "jwks_url"),
    ({"jwks_url": "http://idp.example.org/jwks.json"}, "jwks_url"),
    ({"issuer": ""}, "issuer"),
    ({"architecture": "sparc"}, "architecture"),
    ({"inference_memory_mb": 64}, "inference_memory_mb"),
    ({"authorizer_timeout_seconds": 901}, "authorizer_timeout_seconds"),
    ({"authorizer_cache_ttl_seconds": 7200}, "authorizer_cache_ttl_seconds"),
    ({"log_retention_days": 31}, "log_retention_days"),
    ({"throttling_rate_limit": 0}, "throttling_rate_limit"),
    ({"stage": "v1/prod"}, "stage"),
    ({"preload_models": "just-a-model"}, "preload_models"),
    ({"account": "12345"}, "account"),
])
def test_an_invalid_value_names_its_context_key(override, key):
    context = {k: v for k, v in {**REQUIRED, **override}.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        load_config(context)
    message = str(err.value)
    assert f"'{key}'" in message
    assert f"-c {key}=" in message


def test_every_context_key_is_documented_in_the_architecture_doc():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = [key for key in context_keys() if f"`{key}`" not in doc]
    assert not missing, f"document these context keys in docs/architecture.md: {missing}"


def test_a_required_variable_the_stack_cannot_provide_fails_synth():
    import aws_cdk as cdk
    from tenantml_cdk.constructs.functions import FunctionFactory

    broken = resources.FunctionDef("inference", "needs the bus", (settings.PublisherSettings,))
    factory = FunctionFactory(cdk.Stack(cdk.App(), "EnvTest"), "Functions", config=load_config(REQUIRED),
                              layers=[], code_root=ROOT / "functions",
                              values={"TENANTML_ARTIFACT_BUCKET": "b"})
    with pytest.raises(resources.EnvironmentContractError, match="needs TENANTML_EVENT_BUS_NAME"):
        factory.create(broken)


def test_sam_local_declares_overridable_placeholders_only_when_asked():
    from tenantml_cdk.stateless_stack import platform_values

    data = _FakeData()
    plain = platform_values(load_config(REQUIRED), data)   # type: ignore[arg-type]
    assert "TENANTML_JWKS_JSON" not in plain and "TENANTML_ENDPOINT_URL" not in plain
    assert "TENANTML_PRELOAD_MODELS" not in plain
    sam = platform_values(load_config({**REQUIRED, "sam_local": "true", "preload_models": "acme/risk"}),
                          data)  # type: ignore[arg-type]
    assert sam["TENANTML_JWKS_JSON"] == "" and sam["TENANTML_ENDPOINT_URL"] == ""
    assert sam["TENANTML_PRELOAD_MODELS"] == "acme/risk"
    env = {d.name: resources.function_environment(d, sam) for d in resources.FUNCTIONS}
    assert env["authorizer"]["TENANTML_JWKS_JSON"] == "" and "TENANTML_ENDPOINT_URL" not in env["authorizer"]
    assert env["inference"]["TENANTML_PRELOAD_MODELS"] == "acme/risk"
    assert all(env[n]["TENANTML_ENDPOINT_URL"] == "" for n in ("inference", "registry", "publisher"))
    # "" is "not set" to tenantml.settings, so a deployed function with the placeholders is unchanged.
    assert settings.AwsSettings.from_env({"TENANTML_ENDPOINT_URL": ""}).endpoint_url is None


class _Named:
    def __init__(self, name: str) -> None:
        self.bucket_name = self.table_name = self.event_bus_name = self.queue_name = name


class _FakeData:
    """The names platform_values reads from the stateful stack's PlatformData."""

    artifact_bucket = _Named("bucket")
    registry_table = _Named("registry")
    event_bus = _Named("bus")
    tables = {t.id: _Named(t.id) for t in resources.TABLES if t is not resources.REGISTRY_TABLE}
    queues = {q.id: _Named(q.id) for q in resources.QUEUES}


# --- GPU asynchronous inference endpoint ------------------------------------------------------------------

GPU_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/tenantml/mpnet-gpu:2024.1"
GPU_MODEL = "s3://tenantml-models/models/_shared/mpnet/1/model.tar.gz"


def test_gpu_endpoint_is_off_without_its_context_and_has_safe_defaults():
    config = load_config(REQUIRED)
    assert not config.gpu_enabled
    assert config.gpu_image_uri is None and config.gpu_model_data_url is None
    assert config.gpu_instance_type == "ml.g5.xlarge"
    assert (config.gpu_max_instances, config.gpu_max_concurrent_invocations,
            config.gpu_backlog_per_instance_target) == (1, 32, 32.0)
    assert not load_config(cdk_json_context()).gpu_enabled   # `cdk synth` out of the box: nothing billable


def test_gpu_endpoint_is_on_with_image_and_model_data_and_strings_are_coerced():
    config = load_config({**REQUIRED, "gpu_image_uri": GPU_IMAGE, "gpu_model_data_url": GPU_MODEL,
                          "gpu_instance_type": "ml.g6.xlarge", "gpu_max_instances": "2",
                          "gpu_max_concurrent_invocations": "8", "gpu_backlog_per_instance_target": "2.5"})
    assert config.gpu_enabled
    assert (config.gpu_instance_type, config.gpu_max_instances, config.gpu_max_concurrent_invocations,
            config.gpu_backlog_per_instance_target) == ("ml.g6.xlarge", 2, 8, 2.5)
    digest = GPU_IMAGE.split(":")[0] + "@sha256:" + "a" * 64
    assert load_config({**REQUIRED, "gpu_image_uri": digest, "gpu_model_data_url": GPU_MODEL}).gpu_enabled


@pytest.mark.parametrize(("override", "key"), [
    ({"gpu_image_uri": "docker.io/library/python:3.12"}, "gpu_image_uri"),                # not ECR
    ({"gpu_image_uri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mpnet"}, "gpu_image_uri"),  # no tag
    ({"gpu_image_uri": "12345.dkr.ecr.eu-west-1.amazonaws.com/mpnet:1"}, "gpu_image_uri"),  # account
    ({"gpu_image_uri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/MPNet:1"}, "gpu_image_uri"),  # case
    ({"gpu_model_data_url": "https://tenantml-models.s3.amazonaws.com/model.tar.gz"}, "gpu_model_data_url"),
    ({"gpu_model_data_url": "s3://tenantml-models/models/mpnet/"}, "gpu_model_data_url"),  # not a tar.gz
    ({"gpu_model_data_url": "s3://tenantml-models/models/*/model.tar.gz"}, "gpu_model_data_url"),  # IAM *
    ({"gpu_model_data_url": "s3://tenantml-models/${aws:username}/model.tar.gz"}, "gpu_model_data_url"),
    ({"gpu_model_data_url": "s3://Bad_Bucket/model.tar.gz"}, "gpu_model_data_url"),
    ({"gpu_instance_type": "g5.xlarge"}, "gpu_instance_type"),
    ({"gpu_max_instances": 0}, "gpu_max_instances"),
    ({"gpu_max_concurrent_invocations": 0}, "gpu_max_concurrent_invocations"),
    ({"gpu_backlog_per_instance_target": 0}, "gpu_backlog_per_instance_target"),
])
def test_an_invalid_gpu_value_names_its_context_key(override, key):
    context = {**REQUIRED, "gpu_image_uri": GPU_IMAGE, "gpu_model_data_url": GPU_MODEL, **override}
    with pytest.raises(ConfigError) as err:
        load_config(context)
    message = str(err.value)
    assert f"'{key}'" in message and f"-c {key}=" in message
    assert message.count("context key") == 1, message


@pytest.mark.parametrize(("given", "missing"), [("gpu_image_uri", "gpu_model_data_url"),
                                                ("gpu_model_data_url", "gpu_image_uri")])
def test_one_gpu_key_without_the_other_names_the_missing_one(given, missing):
    value = {"gpu_image_uri": GPU_IMAGE, "gpu_model_data_url": GPU_MODEL}[given]
    with pytest.raises(ConfigError) as err:
        load_config({**REQUIRED, given: value})
    message = str(err.value)
    assert f"context key '{missing}'" in message and given in message and f"-c {missing}=" in message
