"""cdk-nag (AwsSolutions, run as a CDK validation plugin during the session synth) and cfn-lint on every
synthesized template."""

from __future__ import annotations

import json
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3
from cfnlint.api import ManualArgs, lint_file
from tenantml_cdk.application import STATEFUL_STACK, STATELESS_STACK
from tenantml_cdk.nag import MIN_REASON_CHARS, add_nag_checks

# cfn-lint rules skipped, each with its reason.
CFN_LINT_IGNORED = {
    "W3005": "CDK makes a Lambda function DependsOn its role (and the role's DefaultPolicy, which "
             "the function must wait for) next to the GetAtt of the role ARN; redundant, harmless.",
}
LINT_REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2"]


def _failed(report: dict) -> list[str]:
    return [f"{p['pluginName']}: {v['ruleName']} at "
            f"{[c.get('constructPath') for c in v.get('violatingConstructs', [])]}"
            for p in report["pluginReports"] for v in p["violations"]
            if v["severity"] in {"error", "fatal"}]


def test_no_unacknowledged_nag_or_validation_errors(synth):
    report = synth.validation_report()
    assert not _failed(report), "\n".join(_failed(report))
    assert all(p["conclusion"] != "failure" for p in report["pluginReports"])


def _acknowledgments(outdir: Path, stack: str) -> dict[str, dict[str, str]]:
    metadata = json.loads((outdir / f"{stack}.metadata.json").read_text())
    out: dict[str, dict[str, str]] = {}
    for path, entries in metadata.items():
        for entry in entries:
            if entry["type"] == "aws:cdk:acknowledged-rules":
                out.setdefault(path, {}).update(entry["data"])
    return out


def test_every_acknowledged_finding_has_a_written_reason(synth):
    acknowledged = {s: _acknowledgments(synth.outdir, s) for s in (STATEFUL_STACK, STATELESS_STACK)}
    assert any(acknowledged.values())
    print("\n[cdk-nag acknowledgments]")
    for by_path in acknowledged.values():
        for path, rules in sorted(by_path.items()):
            for rule, reason in rules.items():
                assert len(reason.strip()) >= MIN_REASON_CHARS, (path, rule)
                print(f"  {path}: {rule.removeprefix('Annotation::')} -- {reason}")


def test_the_nag_wiring_reports_a_real_violation(tmp_path):
    """Guards the test above against a silent no-op: the same add_nag_checks on a deliberately bad
    bucket must produce AwsSolutions errors in the report."""
    app = cdk.App(outdir=str(tmp_path), context={"@aws-cdk/core:failSynthOnValidationErrors": False})
    add_nag_checks(app)
    stack = cdk.Stack(app, "Bad")
    s3.Bucket(stack, "NoLogsNoSsl", enforce_ssl=False)
    app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    failed = _failed(report)
    assert any("AwsSolutions-S1" in f for f in failed) and any("AwsSolutions-S10" in f for f in failed)


@pytest.mark.parametrize("stack", [STATEFUL_STACK, STATELESS_STACK])
def test_cfn_lint_passes(synth, stack):
    matches = lint_file(synth.template_file(stack),
                        ManualArgs(ignore_checks=list(CFN_LINT_IGNORED), regions=LINT_REGIONS))
    assert not matches, "\n".join(str(m) for m in matches)
