"""`tenantml invoke` (the Docker-free `sam local invoke`) and the Lambda-like environment under it
(LambdaContext, LocalFunction, EnvPatch), with handler modules of our own in tmp_path."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest

from tenantml.cli import main
from tenantml.local import state as platform_state
from tenantml.local.context import FunctionError, LambdaContext, LocalFunction
from tenantml.resources import FUNCTIONS, FunctionDef
from tenantml.settings import EnvPatch

HANDLER = """
import os, sys
print("module init on stdout")
def handler(event, context):
    print("a log line on stdout")
    if event.get("fail"):
        raise KeyError("boom")
    return {"greeting": os.environ.get("TENANTML_GREETING"), "state": os.environ.get("TENANTML_FROM_STATE"),
            "echo": event, "function": context.function_name,
            "remaining": context.get_remaining_time_in_millis()}
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    """A working directory with functions/hello/handler.py and an event file."""
    handler = tmp_path / "functions" / "hello" / "handler.py"
    handler.parent.mkdir(parents=True)
    handler.write_text(textwrap.dedent(HANDLER))
    (tmp_path / "event.json").write_text(json.dumps({"name": "acme"}))
    (tmp_path / "fail.json").write_text(json.dumps({"fail": True}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(platform_state, "checkout_home", lambda: None)   # only this project counts
    monkeypatch.delenv("TENANTML_GREETING", raising=False)
    monkeypatch.delenv("TENANTML_FROM_STATE", raising=False)
    return tmp_path


def test_invoke_prints_only_the_result_on_stdout(project, capfd):
    rc = main(["invoke", "hello", "event.json", "--env", "TENANTML_GREETING=hi"])
    out, err = capfd.readouterr()
    assert rc == 0
    result = json.loads(out)
    assert result["greeting"] == "hi" and result["echo"] == {"name": "acme"}
    assert result["function"] == "tenantml-local-hello" and 0 < result["remaining"] <= 29_000
    assert "a log line on stdout" in err and "module init on stdout" in err
    assert "TENANTML_GREETING" not in os.environ  # the environment is put back


def test_invoke_handler_error_exits_1_with_the_error_type(project, capfd):
    rc = main(["invoke", "hello", "fail.json"])
    out, err = capfd.readouterr()
    assert rc == 1 and out == ""
    assert "hello raised KeyError" in err


@pytest.mark.parametrize("argv", [
    ["invoke", "nope", "event.json"],                 # no such function
    ["invoke", "../hello", "event.json"],             # not a function name
    ["invoke", "hello", "missing.json"],              # no event file
    ["invoke", "hello", "event.json", "--env", "NOEQUALS"],
])
def test_invoke_bad_arguments_exit_2(project, capfd, argv):
    assert main(argv) == 2
    assert capfd.readouterr().out == ""


def _state(project: Path) -> None:
    state = {"pid": 1, "moto": {"endpoint_url": "http://127.0.0.1:59999"},
             "process_env": {"AWS_REGION": "us-east-1"},
             "functions": {"hello": {"env": {"TENANTML_FROM_STATE": "local-platform",
                                             "TENANTML_GREETING": "from-state"}},
                           "other": {"env": {"TENANTML_OTHER": "not for hello"}}}}
    (project / ".tenantml").mkdir()
    (project / ".tenantml" / "local.json").write_text(json.dumps(state))


def test_invoke_uses_the_running_platforms_environment_and_env_overrides_it(project, capfd, monkeypatch):
    _state(project)
    monkeypatch.setattr(platform_state, "emulator_answers", lambda url, timeout_s=1.0: True)
    assert main(["invoke", "hello", "event.json", "--env", "TENANTML_GREETING=cli"]) == 0
    result = json.loads(capfd.readouterr().out)
    assert result["state"] == "local-platform" and result["greeting"] == "cli"


def test_invoke_ignores_a_stale_state_file(project, capfd, monkeypatch):
    _state(project)
    monkeypatch.setattr(platform_state, "emulator_answers", lambda url, timeout_s=1.0: False)
    assert main(["invoke", "hello", "event.json"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["state"] is None and "stale" in err


def test_invoking_a_function_that_needs_aws_without_a_platform_says_how_to_start_one(project, capfd,
                                                                                    monkeypatch):
    for key in ("TENANTML_REGISTRY_TABLE", "TENANTML_ARTIFACT_BUCKET"):
        monkeypatch.delenv(key, raising=False)
    registry = project / "functions" / "registry"
    registry.mkdir()
    (registry / "handler.py").write_text("def handler(event, context):\n    return {'statusCode': 500}\n")
    assert main(["invoke", "registry", "event.json"]) == 1
    out, err = capfd.readouterr()
    assert out == "" and "registry needs TENANTML_ARTIFACT_BUCKET, TENANTML_REGISTRY_TABLE" in err
    assert "make local" in err and "Traceback" not in err


def test_emulator_answers_refuses_non_local_endpoints():
    assert platform_state.emulator_answers("https://s3.amazonaws.com") is False


# -- the Lambda-like environment -------------------------------------------------------------------------

def test_lambda_context_counts_down_from_the_function_timeout():
    auth = next(f for f in FUNCTIONS if f.name == "authorizer")
    ctx = LambdaContext.for_function(auth)
    assert ctx.function_name == "tenantml-local-authorizer"
    assert ctx.invoked_function_arn == (
        "arn:aws:lambda:us-east-1:123456789012:function:tenantml-local-authorizer")
    assert ctx.memory_limit_in_mb == auth.memory_mb and ctx.function_version == "$LATEST"
    assert ctx.log_group_name == "/aws/lambda/tenantml-local-authorizer" and ctx.aws_request_id
    first = ctx.get_remaining_time_in_millis()
    assert auth.timeout_s * 1000 - 50 <= first <= auth.timeout_s * 1000
    time.sleep(0.05)
    assert ctx.get_remaining_time_in_millis() < first
    assert LambdaContext.for_function(auth).aws_request_id != ctx.aws_request_id


def _function(tmp_path: Path, source: str, timeout_s: float = 5) -> LocalFunction:
    path = tmp_path / "handler.py"
    path.write_text(textwrap.dedent(source))
    return LocalFunction(FunctionDef("inference", purpose="t", timeout_s=5), path, timeout_s=timeout_s)


def test_local_function_is_warm_after_the_first_call_and_copies_events(tmp_path):
    fn = _function(tmp_path, """
        calls = []
        def handler(event, context):
            calls.append(1)
            event["mutated"] = True
            return {"calls": len(calls)}
    """)
    event = {"a": 1}
    assert fn.invoke(event) == {"calls": 1}
    assert fn.invoke(event) == {"calls": 2}
    assert event == {"a": 1} and fn.cold_starts == 1 and fn.invocations == 2


@pytest.mark.parametrize("body, error_type", [
    ("return object()", "TypeError"),         # Lambda cannot serialise the result either
    ("raise SystemExit(3)", "SystemExit"),
    ("raise ValueError('x')", "ValueError"),
])
def test_local_function_errors(tmp_path, body, error_type):
    fn = _function(tmp_path, f"def handler(event, context):\n    {body}\n")
    with pytest.raises(FunctionError) as info:
        fn.invoke({})
    assert info.value.error_type == error_type


def test_import_error_is_a_function_error_and_retried(tmp_path):
    fn = _function(tmp_path, "raise ImportError('missing dependency')\n")
    for _ in range(2):
        with pytest.raises(FunctionError):
            fn.invoke({})
    assert fn.cold_starts == 0


def test_env_patch_sets_removes_and_restores(monkeypatch):
    monkeypatch.setenv("TENANTML_KEEP", "old")
    monkeypatch.setenv("AWS_PROFILE", "prod")
    monkeypatch.delenv("TENANTML_NEW", raising=False)
    with EnvPatch({"TENANTML_KEEP": "new", "TENANTML_NEW": "1"}, remove=["AWS_PROFILE"]):
        assert os.environ["TENANTML_KEEP"] == "new" and os.environ["TENANTML_NEW"] == "1"
        assert "AWS_PROFILE" not in os.environ
    assert os.environ["TENANTML_KEEP"] == "old" and os.environ["AWS_PROFILE"] == "prod"
    assert "TENANTML_NEW" not in os.environ
