"""`tenantml drift report|run`: drift reports from the command line, against the running `make local` (or
a deployed platform when TENANTML_* variables point at it).

    tenantml drift report --tenant acme --model project-risk      the latest report summaries
    tenantml drift run --tenant acme --model project-risk         check the last window now; prints
                                                                  where the HTML report is
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tenantml.errors import TenantMLError

LOCAL_REPORTS = Path(".tenantml") / "reports"


def _fail(exc: Exception, verb: str) -> int:
    print(f"tenantml drift {verb}: {exc}", file=sys.stderr)
    return 2 if type(exc).__name__ == "NoPlatform" else 1


def _errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    from tenantml.local.state import NoPlatform  # noqa: PLC0415

    return TenantMLError, NoPlatform, BotoCoreError, ClientError, ValueError


def report_command(args: argparse.Namespace) -> int:
    from tenantml.aws import client  # noqa: PLC0415
    from tenantml.local.state import platform_target  # noqa: PLC0415
    from tenantml.monitoring.jobs import ReportIndex  # noqa: PLC0415
    from tenantml.settings import get_aws_settings, get_drift_settings  # noqa: PLC0415

    try:
        with platform_target("drift_worker"):
            settings, aws = get_drift_settings(), get_aws_settings()
            found = ReportIndex(client("s3", aws), settings.artifact_bucket).latest(args.tenant, args.model,
                                                                                   args.limit)
    except _errors() as exc:
        return _fail(exc, "report")
    if not found:
        print(f"no drift reports for {args.tenant}/{args.model} yet")
        return 0
    for r in found:
        print(f"{r['window']['end']}  version {r['version']:<6} {r['verdict']:<17} {r['summary']}")
        print(f"    s3://{settings.artifact_bucket}/{r['html']}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    from tenantml.aws import client  # noqa: PLC0415
    from tenantml.local.state import find_home, platform_target  # noqa: PLC0415
    from tenantml.monitoring.jobs import DriftJob, report_key, worker_from_settings  # noqa: PLC0415
    from tenantml.settings import (  # noqa: PLC0415
        get_aws_settings,
        get_drift_settings,
        get_publisher_settings,
        get_registry_settings,
        get_signal_settings,
    )

    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    try:
        with platform_target("drift_worker"):
            aws, drift = get_aws_settings(), get_drift_settings()
            worker = worker_from_settings(drift, get_registry_settings(), get_publisher_settings(), aws,
                                          signals_table=get_signal_settings().signals_table)
            version = args.version or worker.registry.resolve(args.tenant, args.model).version
            job = DriftJob(tenant=args.tenant, model=args.model, version=version,
                           window_start=end - timedelta(minutes=args.minutes), window_end=end)
            outcome = worker.run(job)
            html = client("s3", aws).get_object(Bucket=drift.artifact_bucket,
                                                Key=report_key(job, "html"))["Body"].read()
    except _errors() as exc:
        return _fail(exc, "run")
    home = find_home() or Path(".tenantml")
    out = home / "reports" / report_key(job, "html").replace("/", "_")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(html)
    accuracy = f", accuracy {outcome.accuracy_verdict.replace('_', ' ')}" if outcome.accuracy_verdict else ""
    published = f" ({len(outcome.event_ids)} DriftDetected published)" if outcome.event_ids else ""
    print(f"{args.tenant}/{args.model} version {version}: {outcome.verdict}{accuracy}{published}")
    print(f"report: {out.resolve()}")
    print(f"        s3://{drift.artifact_bucket}/{outcome.report_key}")
    return 0
