"""`tenantml invoke <function> <event.json> [--env KEY=VALUE ...]`: the Docker-free twin of
`sam local invoke -e`.

The handler file (functions/<function>/handler.py) is loaded by path in a fresh Lambda-like environment
and called once with the event. Its environment is, in order: the local platform's process environment
and this function's own variables (from .tenantml/local.json, written by `tenantml local`, used only
while that platform's AWS emulator answers), then every --env. The JSON result goes to stdout; everything
the handler prints or logs goes to stderr, so `tenantml invoke ... | jq` works. Exit status: 0 on
success, 1 if the handler raised or timed out, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tenantml import resources
from tenantml.local import state as platform_state
from tenantml.local.context import FunctionError, FunctionTimeout, LocalFunction, handler_path
from tenantml.settings import EnvPatch, environment

STATE_FILE = Path(platform_state.HOME) / platform_state.STATE_NAME   # relative to the project's home
FUNCTION_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum():
            raise ValueError(f"--env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def local_environment(state: dict[str, Any] | None, function: str) -> dict[str, str]:
    """The running platform's process environment plus `function`'s own variables ({} if none runs)."""
    if state is None:
        return {}
    endpoint = str(state.get("moto", {}).get("endpoint_url", ""))
    if not platform_state.emulator_answers(endpoint):
        print(f"tenantml invoke: the local platform's state file is stale (no AWS emulator at "
              f"{endpoint or '?'}); not using it. {platform_state.START_HINT[0].upper()}"
              f"{platform_state.START_HINT[1:]}.", file=sys.stderr)
        return {}
    return platform_state.function_environment(state, function)


def missing_variables(fn: resources.FunctionDef, env: dict[str, str]) -> list[str]:
    return sorted(k for k, required in fn.variables.items() if required and not env.get(k))


def function_def(name: str) -> resources.FunctionDef:
    for fn in resources.FUNCTIONS:
        if fn.name == name:
            return fn
    # Any other functions/<name>/handler.py runs with Lambda's defaults for this project.
    return resources.FunctionDef(name, "", (), memory_mb=1024, timeout_s=29)  # type: ignore[arg-type]


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what the handler writes to stdout (print, Powertools' logger, native libraries) to stderr:
    at the file descriptor for anything holding fd 1, and `sys.stdout` for Python-level writers."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run(function: str, event: Any, env: dict[str, str], *, root: Path | None = None) -> Any:
    """Invoke `function` once with `event` under `env` (restored afterwards); returns the result.
    Raises FunctionError / FunctionTimeout like the emulator."""
    fn = LocalFunction(function_def(function), handler_path(function, root))
    with EnvPatch(env), stdout_to_stderr():
        return fn.invoke(event)


def invoke_command(args: argparse.Namespace) -> int:
    try:
        extra = parse_env(args.env or [])
    except ValueError as exc:
        print(f"tenantml invoke: {exc}", file=sys.stderr)
        return 2
    if not FUNCTION_RE.fullmatch(args.function):
        print(f"tenantml invoke: not a function name: {args.function!r}", file=sys.stderr)
        return 2
    path = handler_path(args.function)
    if not path.is_file():
        print(f"tenantml invoke: no handler at {path}", file=sys.stderr)
        return 2
    try:
        event = json.loads(Path(args.event).read_text())
    except (OSError, ValueError) as exc:
        print(f"tenantml invoke: cannot read event {args.event}: {exc}", file=sys.stderr)
        return 2
    env = {**local_environment(platform_state.read_state(), args.function), **extra}
    missing = missing_variables(function_def(args.function), environment(env))
    if missing:
        print(f"tenantml invoke: {args.function} needs {', '.join(missing)}: {platform_state.START_HINT} "
              "(invoke then uses its resources), or pass them with --env", file=sys.stderr)
        return 1
    try:
        result = run(args.function, event, env)
    except FunctionTimeout:
        print(f"tenantml invoke: {args.function} timed out after {function_def(args.function).timeout_s} s",
              file=sys.stderr)
        return 1
    except FunctionError as err:
        cause = err.__cause__
        if cause is not None:
            traceback.print_exception(type(cause), cause, cause.__traceback__, file=sys.stderr)
        print(f"tenantml invoke: {args.function} raised {err.error_type}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0
