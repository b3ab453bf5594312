"""Every function initialises with exactly the variables its definition declares (what the CDK app and
local mode give it), and fails its init, here, when a required one is missing: a handler whose settings
need a variable it is not given fails a test, not a deployment."""

from __future__ import annotations

import pytest
from moto_env import lambda_account

from tenantml import resources
from tenantml.auth.devkeys import ensure_dev_keys
from tenantml.settings import reset_settings


@pytest.fixture(scope="module")
def auth(tmp_path_factory):
    return ensure_dev_keys(tmp_path_factory.mktemp("contract") / "keys").auth_env()


@pytest.mark.parametrize("fn", resources.FUNCTIONS, ids=lambda d: d.name)
def test_each_handler_initialises_with_only_its_declared_variables(monkeypatch, load_handler, auth, fn):
    with lambda_account(monkeypatch, fn.name, auth=auth) as env:
        assert {k for k in env if k.startswith("TENANTML_")} <= set(fn.variables)
        load_handler(fn.name)   # module init: settings parsed, service built


@pytest.mark.parametrize("fn", [f for f in resources.FUNCTIONS if any(f.variables.values())],
                         ids=lambda d: d.name)
def test_a_missing_required_variable_fails_the_init(monkeypatch, load_handler, auth, fn):
    required = sorted(k for k, needed in fn.variables.items() if needed)
    with lambda_account(monkeypatch, fn.name, auth=auth):
        monkeypatch.delenv(required[0])
        reset_settings()
        with pytest.raises(ValueError, match=required[0].removeprefix("TENANTML_").lower()):
            load_handler(fn.name)
