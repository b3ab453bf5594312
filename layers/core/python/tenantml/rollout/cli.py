"""`tenantml rollout start|status|promote|abort|freeze|resume`: the operator's side of rollouts (AWS
credentials, any tenant; `_shared` for shared models), against the running `make local` or, with
TENANTML_REGISTRY_TABLE and TENANTML_SIGNALS_TABLE set, a deployment.

    tenantml rollout start --tenant acme --model project-risk --candidate 2 [--mode canary|ab|shadow]
        [--stages 5,25,50,100] [--bake-seconds 600] [--min-requests 20] [--cohort acme,globex] [--reason ..]
    tenantml rollout status --tenant acme --model project-risk [--json]
    tenantml rollout promote|abort|freeze|resume --tenant acme --model project-risk [--reason ..]

The same service as the admin API (tenantml.rollout.service): the same checks, the same conditional
writes, the same audit records (actor `cli:<user>`) and events.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from pydantic import ValidationError

from tenantml.errors import TenantMLError


def _service() -> Any:
    from tenantml.aws import client  # noqa: PLC0415
    from tenantml.registry.dynamo import DynamoRegistry  # noqa: PLC0415
    from tenantml.rollout.service import RolloutService  # noqa: PLC0415
    from tenantml.rollout.signals import DynamoSignals  # noqa: PLC0415
    from tenantml.settings import get_aws_settings, get_registry_settings, get_signal_settings  # noqa: PLC0415

    aws = get_aws_settings()
    return RolloutService(DynamoRegistry(get_registry_settings().registry_table, aws),
                          signals=DynamoSignals(client("dynamodb", aws), get_signal_settings().signals_table))


def _errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    from tenantml.local.state import NoPlatform  # noqa: PLC0415

    return TenantMLError, ValidationError, NoPlatform, BotoCoreError, ClientError


def _run(args: argparse.Namespace, work: Any, err: TextIO | None) -> Any:
    from tenantml.local.state import platform_target  # noqa: PLC0415
    from tenantml.registry.cli import _actor  # noqa: PLC0415

    with platform_target("registry", needs="TENANTML_REGISTRY_TABLE"):
        return work(_service(), _actor())


def format_status(s: dict[str, Any]) -> str:
    lines = [f"{s['model']}: {s['mode']} rollout {s['rollout_id']} {s['status'].replace('_', ' ')}",
             f"  stable {s['stable']}  candidate {s['candidate']}  weight {s['weight']}%  stages "
             f"{','.join(map(str, s['stages']))}  bake {s['bake_seconds']} s  revision {s['revision']}",
             f"  last change: {s['reason']} ({s['actor']}, {s['updated_at']})"]
    for role in ("stable", "candidate"):
        sig = (s.get("signals") or {}).get(role)
        if sig:
            rate = "-" if sig["error_rate"] is None else f"{sig['error_rate']:.2%}"
            acc = "" if sig["accuracy"] is None else f"  accuracy {sig['accuracy']:.1%} ({sig['labelled']})"
            lat = sig["latency_ms"]
            lines.append(f"  {role:<9} v{sig['version']}: {sig['requests']} requests, errors {rate}, "
                         f"p50/p95 {lat['p50'] or '-'}/{lat['p95'] or '-'} ms{acc}")
    if s.get("next"):
        lines.append(f"  next: {s['next']}")
    if s.get("accuracy_test"):
        lines.append(f"  A/B accuracy: {s['accuracy_test']['verdict']} ({s['accuracy_test']['reason']})")
    return "\n".join(lines)


def rollout_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from tenantml.rollout.machine import Guardrails  # noqa: PLC0415
    from tenantml.rollout.service import StartRollout  # noqa: PLC0415

    out, err = out or sys.stdout, err or sys.stderr
    verb = args.rollout_verb
    try:
        if verb == "start":
            body = StartRollout(
                candidate=args.candidate, stable=args.stable, mode=args.mode, bake_seconds=args.bake_seconds,
                stages=[int(x) for x in args.stages.split(",")] if args.stages else None,
                guardrails=Guardrails(min_requests=args.min_requests) if args.min_requests else None,
                cohort=args.cohort.split(",") if args.cohort else None, reason=args.reason)

            def work(svc: Any, actor: str) -> Any:
                svc.start(args.tenant, args.model, body, actor)
                return svc.status(args.tenant, args.model)
        elif verb == "status":
            def work(svc: Any, actor: str) -> Any:
                return svc.status(args.tenant, args.model)
        else:
            def work(svc: Any, actor: str) -> Any:
                svc.act(args.tenant, args.model, verb, actor, args.reason)
                return svc.status(args.tenant, args.model)
        status = _run(args, work, err)
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return 2
    except _errors() as exc:
        print(f"error: {getattr(exc, 'public_message', None) or exc}", file=err)
        return 1
    print(json.dumps(status, indent=2) if getattr(args, "json", False) else format_status(status), file=out)
    return 0
