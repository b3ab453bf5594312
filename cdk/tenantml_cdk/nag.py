"""cdk-nag (v3) wiring. Rule packs run as CDK policy-validation plugins; a finding that is accepted is
acknowledged on the construct it concerns, next to the code that causes it, always with a reason."""

from __future__ import annotations

import aws_cdk as cdk
from constructs import IConstruct

MIN_REASON_CHARS = 40


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Accept nag finding `rule` (e.g. "AwsSolutions-IAM5[Resource::*]") on `scope` and its children."""
    if len(reason.strip()) < MIN_REASON_CHARS:
        raise ValueError(f"acknowledging {rule} needs a written reason, got {reason!r}")
    cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=rule, reason=reason))


def export_name(producer: cdk.Stack, value: str) -> str:
    """The name under which `producer` exports `value` to other stacks, i.e. how nag prints a
    cross-stack reference. `Stack.export_value` is the public API that creates (or finds) exactly the
    export CDK's automatic cross-stack references use, so no generated id is spelled out here."""
    imported = producer.resolve(producer.export_value(value))
    return str(imported["Fn::ImportValue"])


def add_nag_checks(app: cdk.App) -> None:
    """Run the AWS Solutions rule pack over every stack of `app` at synth time."""
    from cdk_nag import AwsSolutionsChecks  # noqa: PLC0415 - only needed when checks are on

    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
