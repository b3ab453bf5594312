"""Lambda, in-process: the context object handlers receive and the warm execution environment that runs
them (local mode and `tenantml invoke`).

`LambdaContext` carries the attributes the Lambda Python runtime provides (and Powertools'
`inject_lambda_context` reads), and a real deadline: `get_remaining_time_in_millis()` counts down from
the function's timeout.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import tenantml
from tenantml.resources import LOCAL_PREFIX, FunctionDef
from tenantml.settings import function_environ, use_function_environ

ACCOUNT_ID = "123456789012"
INIT_TIMEOUT_S = 60.0  # a local cold start may build caches; Lambda allows 10 s (then retries the init)
REGION = "us-east-1"

# The context of the invocation this thread runs (each invocation runs on a thread of its own): what local
# mode's log shipping (tenantml.local.logs) reads to know the function's log group and stream.
_CURRENT: ContextVar[LambdaContext | None] = ContextVar("tenantml_lambda_context", default=None)


def current_context() -> LambdaContext | None:
    """The LambdaContext of the local invocation running in this thread, or None."""
    return _CURRENT.get()


@dataclass
class LambdaContext:
    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    timeout_s: float
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""
    identity: object | None = None
    client_context: object | None = None
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if not self.log_group_name:
            self.log_group_name = f"/aws/lambda/{self.function_name}"
        if not self.log_stream_name:
            day = time.strftime("%Y/%m/%d", time.gmtime())
            self.log_stream_name = f"{day}/[{self.function_version}]{uuid.uuid4().hex}"
        if not self._deadline:
            self._deadline = time.monotonic() + self.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    @classmethod
    def for_function(cls, fn: FunctionDef, *, prefix: str = LOCAL_PREFIX, timeout_s: float | None = None,
                     region: str = REGION, account_id: str = ACCOUNT_ID,
                     log_stream_name: str = "") -> LambdaContext:
        """A fresh context for one invocation of `fn`: new request id, the clock starts now.
        `log_stream_name`: the execution environment's stream (Lambda keeps one per environment)."""
        name = f"{prefix}-{fn.name}"
        return cls(function_name=name, memory_limit_in_mb=fn.memory_mb,
                   timeout_s=float(fn.timeout_s if timeout_s is None else timeout_s),
                   invoked_function_arn=f"arn:aws:lambda:{region}:{account_id}:function:{name}",
                   log_stream_name=log_stream_name)


class FunctionTimeout(Exception):
    """The handler ran past the function's timeout (Lambda would have stopped it)."""


class FunctionError(Exception):
    """The handler (or its module initialisation) raised; `error_type` is what Lambda would report."""

    def __init__(self, function: str, error_type: str) -> None:
        super().__init__(f"{function}: {error_type}")
        self.function = function
        self.error_type = error_type


def repo_root() -> Path:
    """The folder holding functions/: the working directory if it has one, else the source checkout."""
    cwd = Path.cwd()
    if (cwd / "functions").is_dir():
        return cwd
    return Path(tenantml.__file__).resolve().parents[4]


def handler_path(function: str, root: Path | None = None) -> Path:
    return (root or repo_root()) / "functions" / function / "handler.py"


def load_module(path: Path, module_name: str) -> ModuleType:
    """Import a handler file by path, the way the Lambda runtime does (no sys.path changes)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


class LocalFunction:
    """One warm execution environment of a function: the handler module is imported once (cold start,
    after the environment is set) and serves one invocation at a time, like a Lambda sandbox. One at a
    time matters: handlers keep per-request state in module singletons (the logger's tenant key).

    `invoke` passes the event and the result through JSON, as Lambda does, and enforces the timeout: a
    handler that overruns raises FunctionTimeout and its environment is discarded, so the next call is a
    cold start (the overrunning thread is a daemon and is left to finish on its own).

    `env`: the function's own variables (tenantml.settings.function_environ): its init and every
    invocation see exactly these, not those of the other functions sharing the process. None: the
    process environment (`tenantml invoke`, which runs one function per process).
    """

    def __init__(self, fn: FunctionDef, path: Path, *, prefix: str = LOCAL_PREFIX,
                 timeout_s: float | None = None, env: dict[str, str] | None = None) -> None:
        self.fn = fn
        self.path = path
        self.prefix = prefix
        self.env = None if env is None else dict(env)
        self.timeout_s = float(fn.timeout_s if timeout_s is None else timeout_s)
        self.invocations = 0
        self.cold_starts = 0
        self._module: ModuleType | None = None
        self.log_stream_name = ""           # one per execution environment (set at each cold start)
        self._load_lock = threading.Lock()
        self._invoke_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.fn.name

    def load(self) -> ModuleType:
        """Import the handler module if this environment has not yet (idempotent)."""
        with self._load_lock:
            if self._module is None:
                if self.env is None:
                    self._module = load_module(self.path, f"tenantml_local_fn_{self.fn.name}")
                else:
                    with function_environ(self.env):
                        self._module = load_module(self.path, f"tenantml_local_fn_{self.fn.name}")
                self.cold_starts += 1
                self.log_stream_name = LambdaContext.for_function(self.fn, prefix=self.prefix).log_stream_name
            return self._module

    def _run(self, payload: str, out: dict[str, Any], initialised: threading.Event) -> None:
        if self.env is not None:
            use_function_environ(self.env)   # this thread runs one invocation of this function only
        try:
            module = self.load()
            initialised.set()
            context = LambdaContext.for_function(self.fn, prefix=self.prefix, timeout_s=self.timeout_s,
                                                 log_stream_name=self.log_stream_name)
            _CURRENT.set(context)
            out["result"] = json.dumps(module.handler(json.loads(payload), context))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported to the caller; Lambda: Runtime.ExitError
            out["error"] = exc
        finally:
            initialised.set()

    def invoke(self, event: Any) -> Any:
        """Run the handler on `event`; FunctionError if it raised, FunctionTimeout if it overran."""
        payload = json.dumps(event)
        out: dict[str, Any] = {}
        initialised = threading.Event()
        with self._invoke_lock:
            self.invocations += 1
            worker = threading.Thread(target=self._run, args=(payload, out, initialised), daemon=True,
                                      name=f"lambda-{self.fn.name}")
            worker.start()
            # The timeout runs from the handler call; the cold start (module import) has its own limit.
            initialised.wait(INIT_TIMEOUT_S)
            worker.join(self.timeout_s)
            if worker.is_alive():
                self._module = None  # Lambda stops the sandbox; the next call gets a fresh one
                raise FunctionTimeout(self.fn.name)
        if "error" in out:
            exc = out["error"]
            raise FunctionError(self.fn.name, type(exc).__name__) from exc
        return json.loads(out["result"])
