"""`tenantml local`: the whole platform on this machine, no Docker and no AWS account.

    moto (S3, DynamoDB, SQS, EventBridge, ...) on 127.0.0.1:<moto-port>  <- every boto3 call of the functions
    API Gateway emulator on <host>:<port>           -> authorizer, inference, registry handlers
    event runtime (tenantml.local.events)           -> queue, schedule, rule and stream triggered functions

Steps: start moto; create the tables, bucket, bus and queues from the same definitions the CDK app uses;
compute each function's environment (exactly its declared variables, by the function the CDK app uses:
AWS endpoint, resource names, the authorizer trusting the local dev keys); build the example models
(cached); start the event runtime; register the models; start the API; write .tenantml/local.json (for
`tenantml invoke` and tooling); print a dev token and two curl commands; serve until Ctrl-C.

Every function runs in this process with its own variables (tenantml.settings.function_environ), not in a
process each: one process starts in ~3 s and keeps moto, the model cache and the e2e tests' handles in one
place, while each function still sees only what it declares, so a missing variable fails here as on AWS.
What stays process-wide is what Lambda gives every function anyway (AWS_REGION, credentials) and
Powertools' own switches.

`start_platform()` does the same without blocking and returns a `Platform` (the e2e tests use it).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenantml import SHARED_TENANT, resources
from tenantml.aws import client as boto_client
from tenantml.local import provision
from tenantml.local.apigw import DEFAULT_AUTHORIZER_TTL_S, ApiConfig, ApiGatewayEmulator, ApiServer
from tenantml.local.context import LocalFunction, handler_path
from tenantml.local.events import EventRuntime
from tenantml.local.invoke import STATE_FILE
from tenantml.local.logs import LogShipper, ship_function_logs, unship
from tenantml.local.moto_server import (
    DUMMY_CREDENTIALS,
    PROFILE_VARIABLES,
    MotoServer,
    MotoServerError,
    port_is_free,
)
from tenantml.settings import PREFIX, AwsSettings, EnvPatch

REGION = "us-east-1"
DEMO_TENANT = "acme"
DEMO_SCOPES = ("models:read", "models:write", "models:feedback")
MODEL_VERSION = "1"
# (built model folder, owner tenant). Order matters: work-item-classifier's head sits on
# _shared/minilm-embed/1, which must be registered first.
REGISTRATIONS: tuple[tuple[str, str], ...] = (
    ("minilm-embed", SHARED_TENANT),
    ("minilm-embed-fp32", SHARED_TENANT),
    ("work-item-classifier", SHARED_TENANT),
    ("project-risk", DEMO_TENANT),
    ("mpnet-embed", SHARED_TENANT),          # backend gpu: served by the local GPU endpoint stand-in
)
GPU_MODEL = "mpnet-embed"                    # what the local GPU endpoint serves (one model, as deployed)
GPU_ENDPOINT = f"{resources.LOCAL_PREFIX}-gpu"
# Variables that would point the functions somewhere else than the emulator or the dev keys.
REMOVED_VARIABLES = (*PROFILE_VARIABLES, "TENANTML_JWKS_URL", "AWS_ENDPOINT_URL")

Say = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


@dataclass
class Platform:
    """A running local platform. `stop()` stops everything and restores the process environment."""

    moto: MotoServer
    api: ApiServer
    keys: Any                      # tenantml.auth.devkeys.DevKeys
    names: resources.LocalNames
    aws: AwsSettings
    env: dict[str, dict[str, str]]          # function name -> its variables
    models_dir: Path
    state_file: Path
    registered: list[dict[str, str]] = field(default_factory=list)
    events: EventRuntime | None = None
    _env_patch: EnvPatch | None = None
    logs: LogShipper | None = None          # function log lines -> the emulator's CloudWatch Logs
    gpu: Any = None                         # the GPU endpoint stand-in (tenantml.local.sagemaker), if built
    _log_handler: Any = None
    _stopped: bool = False

    @property
    def base_url(self) -> str:
        return self.api.base_url

    @property
    def emulator(self) -> ApiGatewayEmulator:
        return self.api.emulator

    def token(self, tenant: str = DEMO_TENANT, scopes: Iterable[str] | str = ("models:read",),
              **kw: Any) -> str:
        """A dev JWT the authorizer accepts (kw: sub, ttl, alg, now, ...; see DevKeys.mint)."""
        return self.keys.mint(tenant, scopes, **kw)

    def state(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "api": {"base_url": self.base_url, "host": self.api.host, "port": self.api.port,
                    "stage": self.emulator.config.stage, "api_id": self.emulator.config.api_id},
            "moto": {"endpoint_url": self.moto.endpoint_url, "port": self.moto.port},
            "names": {"tables": dict(self.names.tables), "buckets": dict(self.names.buckets),
                      "event_bus": self.names.event_bus},
            "models_dir": str(self.models_dir),
            "registered": self.registered,
            "process_env": process_environment(self.aws),
            "functions": {name: {"env": dict(env), "log_group": self.names.log_group(name)}
                          for name, env in self.env.items()},
        }

    def stop_log_shipping(self) -> None:
        """Stop copying function log lines to the emulator (the benchmark: on Lambda the function's own
        process ships nothing, and the shipping thread would compete for the 2 cores)."""
        _stop_logs(self.logs, self._log_handler)
        self.logs, self._log_handler = None, None

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.events is not None:
                self.events.stop()
            if self.gpu is not None:
                self.gpu.stop()
            self.api.stop()
        finally:
            try:
                _stop_logs(self.logs, self._log_handler)   # ships what is queued while moto still answers
                self.moto.stop()
            finally:
                if self._env_patch is not None:
                    self._env_patch.restore()
                _remove_state(self.state_file)

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _remove_state(path: Path) -> None:
    """Remove the state file if it is ours (another platform may have written it since)."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def _step(say: Say, n: int, total: int, text: str):
    """Context manager printing `[n/total] text ... ok (x.x s)`."""

    class _Step:
        def __enter__(self) -> None:
            self.t0 = time.perf_counter()
            say(f"[{n}/{total}] {text} ...")

        def __exit__(self, exc_type, exc, tb) -> None:
            took = time.perf_counter() - self.t0
            say(f"[{n}/{total}] {text}: {'ok' if exc_type is None else 'FAILED'} ({took:.1f} s)")

    return _Step()


def process_environment(aws: AwsSettings) -> dict[str, str]:
    """What the local process gets for every function: dummy credentials, the region, no X-Ray daemon."""
    return {**DUMMY_CREDENTIALS, **provision.process_env(aws), "POWERTOOLS_TRACE_DISABLED": "true"}


def function_environment(names: resources.LocalNames, aws: AwsSettings, keys: Any,
                         definitions: Iterable[resources.FunctionDef] = resources.FUNCTIONS,
                         extra: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """Each function's own variables in local mode (keys.auth_env(): the authorizer trusts the dev keys;
    `extra`: more values, such as the GPU endpoint stand-in's)."""
    auth = {**keys.auth_env(), **(extra or {})}
    return {fn.name: provision.local_environment(fn, names, aws, auth) for fn in definitions}


def gpu_values(runtime_port: int) -> dict[str, str]:
    """The async path's values locally: the endpoint's name and the SageMaker runtime stand-in's URL."""
    return {"TENANTML_GPU_ENDPOINT_NAME": GPU_ENDPOINT,
            "TENANTML_SAGEMAKER_RUNTIME_URL": f"http://127.0.0.1:{runtime_port}"}


GPU_LOG_GROUP = f"/aws/sagemaker/Endpoints/{GPU_ENDPOINT}"
GPU_HEARTBEAT_SECONDS = "10"     # the container's instance heartbeat locally (60 s deployed): `tenantml cost`


def start_gpu_endpoint(aws: AwsSettings, names: resources.LocalNames, model_dir: Path, port: int,
                       root: Path | None = None, shipper: LogShipper | None = None, **kw: Any) -> Any:
    """The SageMaker async endpoint stand-in serving `model_dir` (its container starts on the first
    request: scale from zero), with its SNS topics feeding the gpu-results queue; the container's log
    lines go to the endpoint's log group in the emulator, as SageMaker sends them to CloudWatch Logs."""
    from tenantml.local.context import repo_root  # noqa: PLC0415
    from tenantml.local.sagemaker import ContainerProcess, LocalAsyncEndpoint, provision_topics  # noqa: PLC0415

    sqs = boto_client("sqs", aws)
    results_url = sqs.get_queue_url(QueueName=f"{names.prefix}-gpu-results")["QueueUrl"]
    success, error = provision_topics(aws, names.prefix, results_url)
    on_line = None
    if shipper is not None:
        shipper.prepare([GPU_LOG_GROUP])

        def on_line(line: str) -> None:
            shipper.put(GPU_LOG_GROUP, "AllTraffic/local-instance", int(time.time() * 1000), line)

    heartbeat = str(kw.pop("heartbeat_seconds", GPU_HEARTBEAT_SECONDS))
    container = ContainerProcess(model_dir, root=root or repo_root(), on_line=on_line,
                                 env={"TENANTML_GPU_HEARTBEAT_SECONDS": heartbeat})
    bucket = names.buckets[resources.ARTIFACT_BUCKET.id]
    return LocalAsyncEndpoint(aws, endpoint_name=GPU_ENDPOINT, bucket=bucket, success_topic=success,
                              error_topic=error, container=container, port=port, **kw).start()


def load_functions(env: dict[str, dict[str, str]], root: Path | None = None,
                   definitions: Iterable[resources.FunctionDef] = resources.FUNCTIONS,
                   ) -> dict[str, LocalFunction]:
    return {fn.name: LocalFunction(fn, handler_path(fn.name, root), env=env[fn.name]) for fn in definitions}


def register_models(folders: dict[str, Path], aws: AwsSettings, names: resources.LocalNames, say: Say,
                    ) -> list[dict[str, str]]:
    """Register each built model of REGISTRATIONS as version 1 (alias production) of its owner."""
    from tenantml.registry.dynamo import DynamoRegistry  # noqa: PLC0415
    from tenantml.registry.s3 import S3ArtifactStore  # noqa: PLC0415

    registry = DynamoRegistry(names.tables[resources.REGISTRY_TABLE.id], aws)
    store = S3ArtifactStore(names.buckets[resources.ARTIFACT_BUCKET.id], aws)
    done = []
    # The registry's own INFO lines (JSON, meant for CloudWatch) would drown the progress lines here;
    # warnings and errors still show.
    lib_logger = logging.getLogger("tenantml")
    level = lib_logger.level
    lib_logger.setLevel(logging.WARNING)
    try:
        _register_all(folders, registry, store, say, done)
    finally:
        lib_logger.setLevel(level)
    return done


def _register_all(folders: dict[str, Path], registry: Any, store: Any, say: Say, done: list) -> None:
    from tenantml.registry.cli import register_folder  # noqa: PLC0415

    for model, tenant in REGISTRATIONS:
        folder = folders[model]
        if not (folder / "manifest.json").is_file():
            say(f"      skipped {tenant}/{model}: no build in {folder}")
            continue
        register_folder(folder, tenant, registry, store, model=model, version=MODEL_VERSION,
                        aliases=("production",), actor="tenantml-local")
        done.append({"tenant": tenant, "model": model, "version": MODEL_VERSION})
        say(f"      registered {tenant}/{model} version {MODEL_VERSION}")


def start_platform(models_dir: Path | str = ".tenantml/models", host: str = "127.0.0.1", port: int = 8080,
                   moto_port: int = 5005, build: bool = True, *, home: Path | str = ".tenantml",
                   authorizer_ttl_s: float = DEFAULT_AUTHORIZER_TTL_S, functions_root: Path | None = None,
                   say: Say = _print, gpu_options: dict[str, Any] | None = None,
                   api: str = "rest") -> Platform:
    """Start everything (ports 0 pick free ones) and return the running Platform; on any failure what
    was started is stopped again (and the environment restored) before the error propagates.
    `home` holds the dev keys (home/keys) and the state file (home/local.json). `gpu_options`: the GPU
    endpoint stand-in's (tenantml.local.sagemaker.LocalAsyncEndpoint: autoscale, idle_s, ...). `api`: the
    API Gateway flavour the emulator plays, "rest" (REST API) or "http" (HTTP API), as `-c api=` deploys."""
    from tenantml.auth.devkeys import ensure_dev_keys  # noqa: PLC0415

    home, models_dir = Path(home), Path(models_dir)
    total = 7
    moto = MotoServer(host="127.0.0.1", port=moto_port)
    env_patch: EnvPatch | None = None
    flavour = api
    if flavour not in ("rest", "http"):
        raise ValueError(f"api must be 'rest' or 'http', not {flavour!r}")
    api: ApiServer | None = None  # type: ignore[no-redef]
    runtime: EventRuntime | None = None
    shipper: LogShipper | None = None
    log_handler: Any = None
    gpu: Any = None
    if port and not port_is_free(host, port):  # fail before the slow steps, not after them
        raise OSError(errno.EADDRINUSE, f"API port {host}:{port} is in use")
    try:
        with _step(say, 1, total, "AWS emulator (moto)"):
            moto.start()
            say(f"      {moto.endpoint_url}")
        aws = AwsSettings(region=REGION, endpoint_url=moto.endpoint_url)
        names = resources.LocalNames.make()
        with _step(say, 2, total, "dev keys and function environment"):
            keys = ensure_dev_keys(home / "keys")
            from tenantml.local.sagemaker import free_port  # noqa: PLC0415

            gpu_port = free_port()
            env = function_environment(names, aws, keys, extra=gpu_values(gpu_port))
            # From here on the process has dummy credentials: nothing in it can reach a real account.
            # No TENANTML_* variable stays process-wide: each function gets its own (function_environ).
            env_patch = EnvPatch(process_environment(aws), remove=REMOVED_VARIABLES,
                                 remove_prefix=PREFIX).apply()
            say(f"      issuer {keys.issuer}, keys in {home / 'keys'}")
        with _step(say, 3, total, "tables, bucket, bus and queues (tenantml.resources, as in the CDK app)"):
            provision.create_resources(aws, names)
            say(f"      {', '.join([*names.tables.values(), *names.buckets.values(), names.event_bus])}")
            # Each function's log lines go to its log group in the emulator too, as on AWS (`tenantml cost`).
            shipper = LogShipper(aws).start()
            shipper.prepare(names.log_group(fn.name) for fn in resources.FUNCTIONS)
            log_handler = ship_function_logs(shipper)
            say(f"      function logs also in CloudWatch Logs: {names.log_group('<function>')}")
        functions = load_functions(env, functions_root)
        folders = {model: models_dir / model for model, _ in REGISTRATIONS}
        if build:
            with _step(say, 4, total, f"models (cached in {models_dir})"):
                from tenantml.example_models.pipeline import build_models  # noqa: PLC0415

                built = build_models(models_dir, progress=lambda line: say(f"      {line}"))
                folders.update({name: Path(path) for name, path in built.items()})
        else:
            say(f"[4/{total}] models: not building (--no-build), using {models_dir}")
        with _step(say, 5, total, "event runtime (queues, schedules, rules, streams)"):
            runtime = EventRuntime(functions, aws, names).provision()
            for line in runtime.describe() or ["no event triggers declared"]:
                say(f"      {line}")
            runtime.start()
        with _step(say, 6, total, "register models"):
            registered = register_models(folders, aws, names, say)
            gpu_dir = folders.get(GPU_MODEL)
            if gpu_dir is not None and (gpu_dir / "manifest.json").is_file():
                gpu = start_gpu_endpoint(aws, names, gpu_dir, gpu_port, functions_root, shipper,
                                         **(gpu_options or {}))
                say(f"      GPU endpoint stand-in {gpu.url} serves {GPU_MODEL} (0 instances: its container "
                    "starts on the first request)")
        with _step(say, 7, total, "API Gateway emulator"):
            for fn in functions.values():
                try:  # cold starts now, with the environment set, not on the first request
                    fn.load()
                except Exception:  # noqa: BLE001 - like Lambda: an init error fails the requests (502)
                    logging.getLogger("tenantml-local.apigw").exception("%s failed to initialise", fn.name)
                    say(f"      {fn.name}: init FAILED (its requests answer 502; see the log)")
            http = {r.function for r in resources.ROUTES} | {"authorizer"}
            emulator = ApiGatewayEmulator({n: f for n, f in functions.items() if n in http},
                                          config=ApiConfig(flavour=flavour,
                                                           authorizer_ttl_s=authorizer_ttl_s))
            api = ApiServer(emulator, host=host, port=port).start()
            say(f"      {api.base_url} ({'HTTP' if flavour == 'http' else 'REST'} API; stage prefix "
                f"/{emulator.config.stage} optional)")
        platform = Platform(moto=moto, api=api, keys=keys, names=names, aws=aws, env=env,
                            models_dir=models_dir, state_file=home / STATE_FILE.name, registered=registered,
                            events=runtime, _env_patch=env_patch, logs=shipper, _log_handler=log_handler,
                            gpu=gpu)
        platform.state_file.parent.mkdir(parents=True, exist_ok=True)
        platform.state_file.write_text(json.dumps(platform.state(), indent=2) + "\n")
        return platform
    except BaseException:
        if gpu is not None:
            gpu.stop()
        if runtime is not None:
            runtime.stop()
        if api is not None:
            api.stop()
        _stop_logs(shipper, log_handler)
        moto.stop()
        if env_patch is not None:
            env_patch.restore()
        raise


def _stop_logs(shipper: LogShipper | None, handler: Any) -> None:
    if handler is not None:
        unship(handler)
    if shipper is not None:
        shipper.stop()


def infer_body(models_dir: Path, model: str, value: Any) -> dict[str, Any]:
    """An OIP request for `model` with one row, named after the model's first input."""
    try:
        manifest = json.loads((models_dir / model / "manifest.json").read_text())
        spec = manifest["inputs"][0]
        name, datatype = spec["name"], spec["datatype"]
    except (OSError, ValueError, KeyError, IndexError):
        name, datatype = "text", "BYTES"
    return {"inputs": [{"name": name, "datatype": datatype, "shape": [1], "data": [value]}]}


def usage(platform: Platform, token: str) -> list[str]:
    base = platform.base_url
    embed = infer_body(platform.models_dir, "minilm-embed", "The build pipeline is green again")
    classify = infer_body(platform.models_dir, "work-item-classifier",
                          "App crashes with a null pointer exception when saving the settings page")

    def curl(model: str, body: dict[str, Any]) -> str:
        return (f'curl -s {base}/v2/models/{model}/infer -H "Authorization: Bearer $TOKEN" '
                f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}")

    return [
        "",
        f"tenantml is running at {base}   (Ctrl-C stops it)",
        f"dev token for tenant {DEMO_TENANT} ({' '.join(DEMO_SCOPES)}), valid 1 h "
        f"(more: tenantml token --tenant {DEMO_TENANT}):",
        f"export TOKEN={token}",
        "",
        f'curl -s {base}/v2/models -H "Authorization: Bearer $TOKEN"',
        curl("minilm-embed", embed),
        curl("work-item-classifier", classify),
        *([] if platform.gpu is None else [
            "",
            f"# {GPU_MODEL} runs on the GPU endpoint stand-in (CPU here): 202 + Location, then poll it",
            curl(GPU_MODEL, infer_body(platform.models_dir, GPU_MODEL, "The build pipeline is green again"))
            .replace("curl -s ", "curl -si ", 1),
            f'curl -s {base}/v2/requests/<id> -H "Authorization: Bearer $TOKEN"']),
        "",
        f"state for `tenantml invoke`: {platform.state_file}",
    ]


def local_command(args: argparse.Namespace) -> int:
    _configure_logging()
    try:
        platform = start_platform(args.models_dir, host=args.host, port=args.port, moto_port=args.moto_port,
                                  build=not args.no_build, api=args.api)
    except (OSError, MotoServerError) as exc:  # typically a port in use
        print(f"tenantml local: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tenantml local: interrupted while starting; everything started was stopped", file=sys.stderr)
        return 130
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for line in usage(platform, platform.token(DEMO_TENANT, DEMO_SCOPES)):
            _print(line)
        while not stop.wait(0.5):
            pass
        _print("stopping ...")
    finally:
        platform.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _print("stopped")
    return 0


def _configure_logging() -> None:
    """Access log and emulator messages to stderr, one line each (the functions log JSON to stdout)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    local = logging.getLogger("tenantml-local")
    local.addHandler(handler)
    local.setLevel(logging.INFO)
    local.propagate = False
