"""`tenantml events list|fire`: the declarations printed, and a schedule fired against a (stand-in)
running local platform with the Scheduler envelope, in a project of our own (tmp_path)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tenantml import resources
from tenantml.cli import main
from tenantml.local import state as platform_state

TICK = resources.FunctionDef("ticker", "test", triggers=(  # type: ignore[arg-type]
    resources.ScheduleTrigger("tick", "rate(1 hour)"),))


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    handler = tmp_path / "functions" / "ticker" / "handler.py"
    handler.parent.mkdir(parents=True)
    handler.write_text(textwrap.dedent("""
        import os

        def handler(event, context):
            return {"time": event["time"], "detail": event["detail"], "source": event["source"],
                    "schedule": event["resources"][0], "env": os.environ.get("TENANTML_FOR_TICKER")}
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(platform_state, "checkout_home", lambda: None)   # only this project counts
    monkeypatch.setattr(resources, "FUNCTIONS", (*resources.FUNCTIONS, TICK))
    return tmp_path


def _running(project: Path, monkeypatch) -> None:
    state = {"pid": 1, "moto": {"endpoint_url": "http://127.0.0.1:59999"},
             "process_env": {"AWS_REGION": "eu-west-1"},
             "functions": {"ticker": {"env": {"TENANTML_FOR_TICKER": "yes"}}}}
    (project / ".tenantml").mkdir()
    (project / ".tenantml" / "local.json").write_text(json.dumps(state))
    monkeypatch.setattr(platform_state, "emulator_answers", lambda url, timeout_s=1.0: True)


def test_list_prints_triggers_and_events(capsys):
    assert main(["events", "list"]) == 0
    out = capsys.readouterr().out
    assert "stream   registry table" in out and "-> publisher" in out
    assert "ModelVersionRegistered" in out and "AliasChanged" in out and "change_id" in out


def test_fire_runs_the_target_with_the_scheduler_envelope(project, monkeypatch, capsys):
    _running(project, monkeypatch)
    assert main(["events", "fire", "tick", "--time", "2026-11-30T18:00:00Z"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["function"] == "ticker" and out["time"] == "2026-11-30T18:00:00Z"
    assert out["result"] == {"time": "2026-11-30T18:00:00Z", "detail": "{}", "source": "aws.scheduler",
                             "schedule": "arn:aws:scheduler:eu-west-1:123456789012:schedule/default/"
                                         "tenantml-local-tick", "env": "yes"}


@pytest.mark.parametrize(("argv", "rc", "message"), [
    (["events", "fire", "nope"], 2, "no schedule 'nope'; declared: drift, rollout, tick"),
    (["events", "fire", "tick", "--time", "yesterday"], 2, "--time must be ISO 8601"),
    (["events", "fire", "tick"], 1, "no local platform is running; start the local platform with"),
])
def test_fire_errors_are_one_line(project, capsys, argv, rc, message):
    assert main(argv) == rc
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and "Traceback" not in captured.err
