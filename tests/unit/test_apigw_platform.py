"""The pure parts of `tenantml local`: the functions' environment, the registration plan, the printed
curl bodies and the state file's ownership. (Starting the platform itself is the e2e suite's job.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tenantml import resources
from tenantml.auth.devkeys import ensure_dev_keys
from tenantml.local import platform as plat
from tenantml.settings import AuthSettings, AwsSettings, RegistrySettings


def test_function_environment_points_everything_at_the_emulator(tmp_path):
    names = resources.LocalNames.make()
    aws = AwsSettings(region="us-east-1", endpoint_url="http://127.0.0.1:5005")
    envs = plat.function_environment(names, aws, ensure_dev_keys(tmp_path / "keys"))
    process = plat.process_environment(aws)
    assert process["AWS_ACCESS_KEY_ID"] == "testing" and process["AWS_SECRET_ACCESS_KEY"] == "testing"
    assert not any(k.startswith("TENANTML_") for k in process)   # every TENANTML_* is per function
    assert AwsSettings.from_env(envs["registry"]).endpoint_url == "http://127.0.0.1:5005"
    reg = RegistrySettings.from_env(envs["registry"])
    assert reg.registry_table == "tenantml-local-registry"
    assert reg.artifact_bucket == "tenantml-local-artifacts"
    auth = AuthSettings.from_env(envs["authorizer"])
    assert auth.issuer == "https://tenantml.local/dev" and auth.audience == "tenantml"
    assert json.loads(auth.jwks_json or "")["keys"] and "TENANTML_JWKS_URL" not in envs["authorizer"]
    assert "TENANTML_JWKS_URL" in plat.REMOVED_VARIABLES and "AWS_PROFILE" in plat.REMOVED_VARIABLES


def test_each_function_gets_only_what_its_settings_read(tmp_path):
    names = resources.LocalNames.make()
    aws = AwsSettings(region="us-east-1", endpoint_url="http://127.0.0.1:5005")
    envs = plat.function_environment(names, aws, ensure_dev_keys(tmp_path / "keys"))
    assert set(envs) == {fn.name for fn in resources.FUNCTIONS}
    for fn in resources.FUNCTIONS:
        tenantml_vars = {k for k in envs[fn.name] if k.startswith("TENANTML_")}
        assert tenantml_vars <= set(fn.variables), fn.name
        assert {k for k, required in fn.variables.items() if required} <= tenantml_vars, fn.name
    assert "TENANTML_REGISTRY_TABLE" not in envs["authorizer"]          # no data access, no data names
    assert "TENANTML_JWKS_JSON" not in envs["inference"]
    assert envs["publisher"]["TENANTML_EVENT_BUS_NAME"] == names.event_bus


def test_backbone_is_registered_before_the_head_that_sits_on_it():
    order = [model for model, _ in plat.REGISTRATIONS]
    assert order.index("minilm-embed") < order.index("work-item-classifier")
    assert dict(plat.REGISTRATIONS)["project-risk"] == "acme"
    assert {t for m, t in plat.REGISTRATIONS if m != "project-risk"} == {"_shared"}


def test_curl_bodies_use_the_models_input_names(tmp_path):
    (tmp_path / "project-risk").mkdir()
    (tmp_path / "project-risk" / "manifest.json").write_text(json.dumps(
        {"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}]}))
    assert plat.infer_body(tmp_path, "project-risk", 1.0)["inputs"][0]["name"] == "features"
    fallback = plat.infer_body(tmp_path, "minilm-embed", "hi")["inputs"][0]  # not built yet
    assert fallback == {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}


def test_state_file_is_removed_only_by_the_platform_that_wrote_it(tmp_path):
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    ours.write_text(json.dumps({"pid": os.getpid()}))
    theirs.write_text(json.dumps({"pid": os.getpid() + 1}))
    plat._remove_state(ours)
    plat._remove_state(theirs)
    plat._remove_state(Path(tmp_path / "missing.json"))
    assert not ours.exists() and theirs.exists()
