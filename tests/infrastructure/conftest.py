"""Infrastructure suite: the CDK app is synthesized ONCE per session, in-process (no CDK CLI, no Docker,
no AWS), with the context of cdk.json, exactly as `cdk synth` would run it; the tests then assert intent on
the templates, the cloud assembly (asset sizes), the cdk-nag validation report and cfn-lint.
(test_snapstart.py synthesizes the same app once more with `snapstart` on, sharing the bundle cache.)

`tenantml_cdk` lives in cdk/ (not an installed package); it is loaded by file path, the way the CDK CLI
runs cdk/app.py, without touching sys.path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from infra_helpers import CLI_CONTEXT, bundle_cache, cdk_json_context
from pytest_socket import disable_socket, enable_socket

CDK_DIR = Path(__file__).resolve().parents[2] / "cdk"

# jsii's Node.js warnings (this machine runs Node 20) are noise in test output.
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


def _load_cdk_package() -> None:
    if "tenantml_cdk" in sys.modules:
        return
    pkg = CDK_DIR / "tenantml_cdk"
    spec = importlib.util.spec_from_file_location("tenantml_cdk", pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["tenantml_cdk"] = module
    spec.loader.exec_module(module)


_load_cdk_package()


@dataclass(frozen=True)
class Synth:
    built: Any                         # tenantml_cdk.application.TenantmlApp
    outdir: Path
    seconds: float
    templates: dict[str, dict]         # stack name -> template JSON

    def template(self, stack: str):
        from aws_cdk.assertions import Template

        return Template.from_json(self.templates[stack])

    @property
    def config(self):
        return self.built.config

    def manifest(self) -> dict:
        return json.loads((self.outdir / "manifest.json").read_text())

    def validation_report(self) -> dict:
        return json.loads((self.outdir / "validation-report.json").read_text())

    def template_file(self, stack: str) -> Path:
        return self.outdir / f"{stack}.template.json"


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synth]:
    from tenantml_cdk.application import STATEFUL_STACK, STATELESS_STACK, build_app

    outdir = tmp_path_factory.mktemp("cdk.out")
    started = time.perf_counter()
    built = build_app(context={**cdk_json_context(), **CLI_CONTEXT}, outdir=str(outdir), nag=True,
                      bundle_cache=bundle_cache())
    # Hermetic synth: the app's Python side may open no network socket (no STS, no lookups). Node (jsii)
    # talks to Python over pipes; pip (runtime layer) runs in a subprocess and only on a cache miss.
    disable_socket(allow_unix_socket=True)
    try:
        built.app.synth()
    finally:
        enable_socket()
    seconds = time.perf_counter() - started
    print(f"\n[infrastructure] synthesized {STATEFUL_STACK} + {STATELESS_STACK} in {seconds:.1f} s")
    templates = {name: json.loads((outdir / f"{name}.template.json").read_text())
                 for name in (STATEFUL_STACK, STATELESS_STACK)}
    yield Synth(built=built, outdir=outdir, seconds=seconds, templates=templates)
