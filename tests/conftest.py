"""Fixtures shared by every suite. Handlers are loaded by file path (functions/<name>/handler.py), the way
Lambda loads them, without touching sys.path."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"


def load_event(name: str) -> dict:
    """Load events/<name>.json (name with or without .json)."""
    path = EVENTS / (name if name.endswith(".json") else f"{name}.json")
    return json.loads(path.read_text())


def load_handler(function: str, *, fresh: bool = True) -> ModuleType:
    """Import functions/<function>/handler.py as a module (fresh by default, i.e. a new cold start)."""
    path = ROOT / "functions" / function / "handler.py"
    mod_name = f"tenantml_fn_{function}"
    if not fresh and mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


class FakeLambdaContext:
    function_name = "tenantml-test"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:tenantml-test"
    memory_limit_in_mb = 1024
    aws_request_id = "11111111-2222-3333-4444-555555555555"
    log_group_name = "/aws/lambda/tenantml-test"
    log_stream_name = "2026/11/22/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


@pytest.fixture(name="load_event")
def _load_event_fixture():
    return load_event


@pytest.fixture(name="load_handler")
def _load_handler_fixture():
    return load_handler
