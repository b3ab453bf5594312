"""Build the tenantml CDK app: config from context, the stateful stack, the stateless stack.

`cdk/app.py` (what `cdk synth` runs) and the infrastructure tests both call `build_app`, so the tests
synthesize exactly what gets deployed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk

from tenantml_cdk.config import AppConfig, load_config
from tenantml_cdk.nag import add_nag_checks
from tenantml_cdk.stateful_stack import StatefulStack
from tenantml_cdk.stateless_stack import StatelessStack

STATEFUL_STACK = "tenantml-stateful"
STATELESS_STACK = "tenantml-stateless"


@dataclass(frozen=True)
class TenantmlApp:
    app: cdk.App
    config: AppConfig
    stateful: StatefulStack
    stateless: StatelessStack


def build_app(*, context: Mapping[str, Any] | None = None, outdir: str | None = None,
              nag: bool | None = None, bundle_cache: Path | None = None) -> TenantmlApp:
    """`context` adds to (and wins over) what the CDK CLI passes; `nag` defaults to the `nag` context
    key (on unless `-c nag=false`)."""
    app = cdk.App(context=dict(context or {}), outdir=outdir)
    config = load_config(app.node.try_get_context)
    if nag is None:
        nag = str(app.node.try_get_context("nag")).lower() not in {"false", "0", "no"}
    if nag:
        add_nag_checks(app)

    # Environment-agnostic unless account/region are given in context: synth never calls AWS.
    env = cdk.Environment(account=config.account, region=config.region) \
        if config.account or config.region else None
    tags = {"project": "tenantml", "stage": config.stage}
    stateful = StatefulStack(app, STATEFUL_STACK, env=env, tags=tags, config=config,
                             description="tenantml stateful: artifact bucket, registry/idempotency tables, "
                                         "event bus, queues (RETAINed)")
    stateless = StatelessStack(app, STATELESS_STACK, env=env, tags=tags, config=config, data=stateful.data,
                               bundle_cache=bundle_cache,
                               description="tenantml stateless: layers, functions, REST API, dashboard, "
                                           "alarms")
    stateless.add_stack_dependency(stateful, "functions reference the bucket, tables and bus")
    return TenantmlApp(app=app, config=config, stateful=stateful, stateless=stateless)
