"""`tenantml` command-line tool. Each verb is defined here and dispatched lazily to the module that
implements it, so `tenantml --help` stays fast and a verb only imports what it needs."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

DEFAULT_MODELS_DIR = ".tenantml/models"


def _lazy(target: str):
    def run(args: argparse.Namespace) -> int:
        module, func = target.split(":")
        return getattr(importlib.import_module(module), func)(args) or 0
    return run


def _reference_arguments(p: argparse.ArgumentParser, *, required: bool) -> None:
    what = "" if required else "compute baseline.json from it first (see `models baseline`); "
    p.add_argument("--reference", required=required, metavar="FILE.csv",
                   help=f"{what}reference data, CSV with a header: a tabular model's manifest `features` "
                        "columns, or a text model's text column (named like its BYTES input, e.g. text)")
    p.add_argument("--label", default=None, metavar="COLUMN",
                   help="the reference's true class (or numeric outcome) column, for the baseline accuracy")
    p.add_argument("--backbone-folder", default=None, metavar="DIR",
                   help="a head's backbone, as a built folder (registering: default, the registered "
                        "backbone)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tenantml", description="tenantml: serverless multi-tenant MLOps.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    # models ------------------------------------------------------------------------------------
    models = sub.add_parser("models", help="build, register and list models")
    msub = models.add_subparsers(dest="models_verb", required=True, metavar="VERB")

    b = msub.add_parser("build", help="build the example models (offline, reproducible, cached)")
    b.add_argument("--out", default=DEFAULT_MODELS_DIR, help="output folder (default: %(default)s)")
    b.add_argument("--only", action="append", default=None,
                   help="build only this model (repeatable): minilm-embed, minilm-embed-fp32, "
                        "work-item-classifier, project-risk")
    b.add_argument("--force", action="store_true", help="rebuild even if the cache says nothing changed")
    b.set_defaults(func=_lazy("tenantml.example_models.pipeline:build_command"))

    r = msub.add_parser("register", help="upload a built model version to S3 and register it in DynamoDB")
    r.add_argument("path", help="a built model folder (holding manifest.json)")
    r.add_argument("--tenant", required=True, help="owner tenant, or _shared")
    r.add_argument("--model", help="model name (default: the manifest's name)")
    r.add_argument("--version", help="version id (default: next integer)")
    r.add_argument("--alias", action="append", default=None,
                   help="point this alias at the new version (repeatable; default: production)")
    _reference_arguments(r, required=False)
    r.set_defaults(func=_lazy("tenantml.registry.cli:register_command"))

    bl = msub.add_parser("baseline", help="compute the drift baseline (baseline.json) of a model folder from "
                                          "reference data by running the model on it; lists it in "
                                          "manifest.json")
    bl.add_argument("path", help="a model folder (holding manifest.json)")
    _reference_arguments(bl, required=True)
    bl.add_argument("--bins", type=int, default=100,
                    help="equal-frequency bins per numeric feature (default: %(default)s)")
    bl.set_defaults(func=_lazy("tenantml.monitoring.reference:baseline_command"))

    ls = msub.add_parser("list", help="list the models a tenant can call (its own and shared ones)")
    ls.add_argument("--tenant", required=True)
    ls.set_defaults(func=_lazy("tenantml.registry.cli:list_command"))

    ref = msub.add_parser("reference", help="regenerate the reference-embedding fixture (needs torch + "
                                            "sentence-transformers: pip install -e '.[reference]')")
    ref.add_argument("--out", default=None, help="fixture path (default: the committed fixture)")
    ref.set_defaults(func=_lazy("tenantml.example_models.reference:reference_command"))

    # token -------------------------------------------------------------------------------------
    t = sub.add_parser("token", help="mint a dev JWT signed by the local dev key")
    t.add_argument("--tenant", required=True)
    t.add_argument("--scope", action="append", default=None,
                   help="scope to grant (repeatable; default: models:read). Others: models:feedback "
                        "(ground truth), models:write (admin API), models:admin (with models:write: shared "
                        "models)")
    t.add_argument("--sub", default="dev-user", help="subject (default: %(default)s)")
    t.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default: %(default)s)")
    t.add_argument("--alg", choices=["RS256", "ES256"], default="RS256")
    t.add_argument("--keys", default=None, metavar="DIR",
                   help="dev key folder (default: .tenantml/keys of this project, found from the working "
                        "directory upwards, else of the tenantml checkout)")
    t.set_defaults(func=_lazy("tenantml.auth.devkeys:token_command"))

    # local -------------------------------------------------------------------------------------
    loc = sub.add_parser("local", help="run the whole platform on this machine (moto + API Gateway emulator)")
    loc.add_argument("--host", default="127.0.0.1")
    loc.add_argument("--port", type=int, default=8080, help="API port (default: %(default)s)")
    loc.add_argument("--moto-port", type=int, default=5005, help="AWS emulator port (default: %(default)s)")
    loc.add_argument("--models-dir", default=DEFAULT_MODELS_DIR)
    loc.add_argument("--no-build", action="store_true",
                     help="do not build models (use what --models-dir has)")
    loc.add_argument("--api", choices=["rest", "http"], default="rest",
                     help="the API Gateway flavour to emulate: REST API or HTTP API (default: %(default)s)")
    loc.set_defaults(func=_lazy("tenantml.local.platform:local_command"))

    # loadtest ----------------------------------------------------------------------------------
    lt = sub.add_parser("loadtest", help="a bounded load test of the running local platform (loopback)")
    lt.add_argument("--clients", type=int, default=32, help="concurrent clients (default: %(default)s)")
    lt.add_argument("--tenants", type=int, default=8, help="tenants they spread over (default: %(default)s)")
    lt.add_argument("--requests", type=int, default=4000, help="requests in all (default: %(default)s)")
    lt.add_argument("--noisy", type=int, default=0, metavar="N",
                    help="N more clients of one noisy tenant, as fast as they can (default: none)")
    lt.add_argument("--models-dir", default=DEFAULT_MODELS_DIR)
    lt.add_argument("--json", dest="json_out", default=None, help="also write the figures as JSON here")
    lt.set_defaults(func=_lazy("tenantml.local.loadtest:loadtest_command"))

    # events ------------------------------------------------------------------------------------
    ev = sub.add_parser("events", help="the event side: declared triggers, published events, schedules")
    evsub = ev.add_subparsers(dest="events_verb", required=True, metavar="VERB")
    el = evsub.add_parser("list", help="list every declared trigger and the events the platform publishes")
    el.set_defaults(func=_lazy("tenantml.local.events:list_command"))
    ef = evsub.add_parser("fire", help="fire a declared schedule once against the running `make local`")
    ef.add_argument("schedule", help="schedule id (see `tenantml events list`)")
    ef.add_argument("--time", default=None,
                    help="the scheduled time, ISO 8601 (default: this minute); the same time twice is a "
                         "duplicate delivery, which idempotent consumers run once")
    ef.set_defaults(func=_lazy("tenantml.local.events:fire_command"))

    # drift -------------------------------------------------------------------------------------
    dr = sub.add_parser("drift", help="drift checks: run one now, list reports")
    drsub = dr.add_subparsers(dest="drift_verb", required=True, metavar="VERB")
    drr = drsub.add_parser("report", help="the latest drift report summaries of a tenant's model")
    drr.add_argument("--tenant", required=True)
    drr.add_argument("--model", required=True)
    drr.add_argument("--limit", type=int, default=10)
    drr.set_defaults(func=_lazy("tenantml.monitoring.cli:report_command"))
    drn = drsub.add_parser("run", help="check a tenant's model over the last window now; prints where the "
                                       "HTML report is")
    drn.add_argument("--tenant", required=True)
    drn.add_argument("--model", required=True)
    drn.add_argument("--version", default=None, help="default: the version the tenant resolves")
    drn.add_argument("--minutes", type=int, default=60, help="window length (default: %(default)s)")
    drn.set_defaults(func=_lazy("tenantml.monitoring.cli:run_command"))

    # rollout -----------------------------------------------------------------------------------
    ro = sub.add_parser("rollout", help="roll a model version out (canary, A/B, shadow), watch it, end it")
    rosub = ro.add_subparsers(dest="rollout_verb", required=True, metavar="VERB")
    verbs = {"start": "start rolling a candidate version out",
             "status": "the rollout, its signals per version",
             "promote": "the candidate serves everyone now", "abort": "back to the stable version now",
             "freeze": "hold the current stage", "resume": "continue a frozen rollout"}
    for name, text in verbs.items():
        v = rosub.add_parser(name, help=text)
        v.add_argument("--tenant", required=True, help="the model's owner: a tenant, or _shared")
        v.add_argument("--model", required=True)
        v.add_argument("--json", action="store_true", help="print the status as JSON")
        if name != "status":
            v.add_argument("--reason", default="", help="why (kept in the audit log and the event)")
        if name == "start":
            v.add_argument("--candidate", required=True, help="the version to roll out")
            v.add_argument("--stable", default=None, help="compare with (default: what production serves)")
            v.add_argument("--mode", choices=["canary", "ab", "shadow"], default="canary")
            v.add_argument("--stages", default=None,
                           help="candidate percentages (default 5,25,50,100; ab: 50)")
            v.add_argument("--bake-seconds", type=int, default=600, help="per stage (default: %(default)s)")
            v.add_argument("--min-requests", type=int, default=None,
                           help="candidate requests a stage needs before any verdict (default 20)")
            v.add_argument("--cohort", default=None, help="shared models: only these tenants (comma list)")
        v.set_defaults(func=_lazy("tenantml.rollout.cli:rollout_command"))

    # cost --------------------------------------------------------------------------------------
    co = sub.add_parser("cost", help="cost per 1000 inferences per tenant, model and version, from the "
                                     "inference function's cost records (CloudWatch Logs)")
    co.add_argument("--hours", type=float, default=24.0,
                    help="the period: the last this many hours (default: %(default)s)")
    co.add_argument("--since", default=None, help="period start, ISO 8601 (UTC unless it says)")
    co.add_argument("--until", default=None, help="period end, ISO 8601 (default: now)")
    co.add_argument("--tenant", default=None, help="only this tenant")
    co.add_argument("--model", default=None, help="only this model")
    co.add_argument("--architecture", choices=["x86_64", "arm64"], default=None,
                    help="price the duration for this architecture (default: TENANTML_COST_ARCHITECTURE, "
                         "x86_64)")
    co.add_argument("--log-group", default=None,
                    help="the inference function's log group (default: TENANTML_COST_LOG_GROUP, else the "
                         "running `make local`)")
    co.add_argument("--gpu-log-groups", nargs=2, metavar=("RESULT_GROUP", "ENDPOINT_GROUP"), default=None,
                    help="GPU models: gpu_result's log group and the endpoint's (/aws/sagemaker/Endpoints/"
                         "<name>) (default: TENANTML_COST_GPU_RESULT_LOG_GROUP and "
                         "TENANTML_COST_GPU_ENDPOINT_LOG_GROUP, else the running `make local`'s)")
    co.add_argument("--json", action="store_true", help="print the summary as JSON")
    co.set_defaults(func=_lazy("tenantml.monitoring.cost:cost_command"))

    # invoke ------------------------------------------------------------------------------------
    inv = sub.add_parser("invoke",
                         help="run one function handler with an event file (sam local invoke, no Docker)")
    inv.add_argument("function", help="authorizer, inference, registry or publisher")
    inv.add_argument("event", help="event JSON file, e.g. events/inference-infer-embed.json")
    inv.add_argument("--env", action="append", default=None, metavar="KEY=VALUE",
                     help="extra environment for the function (repeatable)")
    inv.set_defaults(func=_lazy("tenantml.local.invoke:invoke_command"))

    # bench -------------------------------------------------------------------------------------
    be = sub.add_parser("bench", help="benchmark the inference handler against raw onnxruntime (and torch)")
    be.add_argument("--models-dir", default=DEFAULT_MODELS_DIR)
    be.add_argument("--iterations", type=int, default=200)
    be.add_argument("--json", dest="json_out", default=None, help="also write the figures as JSON here")
    be.set_defaults(func=_lazy("tenantml.bench:bench_command"))
    besub = be.add_subparsers(dest="bench_verb", required=False, metavar="VERB")
    bd = besub.add_parser("drift", help="drift statistics: tenantml (arrays, and end to end from capture "
                                        "frames) vs scipy.stats vs Evidently, time and peak memory")
    bd.add_argument("--rows", default="100000,1000000",
                    help="window sizes, comma-separated (default: %(default)s; add 10000000 for the 10M run)")
    bd.add_argument("--reference-rows", type=int, default=100_000)
    bd.add_argument("--no-evidently", action="store_true", help="skip Evidently even if it is installed")
    bd.add_argument("--evidently-max-rows", type=int, default=1_000_000,
                    help="largest window Evidently is run on (default: %(default)s; at 10M rows it needs "
                         "minutes and ~9 GB)")
    bd.add_argument("--json", dest="json_out", default=None, help="also write the figures as JSON here")
    bd.set_defaults(func=_lazy("tenantml.monitoring.bench:drift_bench_command"))

    # openapi -----------------------------------------------------------------------------------
    oa = sub.add_parser("openapi", help="print the HTTP API's OpenAPI 3.1 document (generated from the "
                                        "routes and the request models; docs/openapi.json is its copy)")
    oa.add_argument("--out", default=None, metavar="FILE", help="write it to FILE instead of stdout")
    oa.set_defaults(func=_lazy("tenantml.api.openapi:openapi_command"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
