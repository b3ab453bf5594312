"""The two Lambda layers every function gets.

* core:    `layers/core/python/tenantml` (the platform library), minus what only runs on a laptop
           (local mode, the example-model builders and their data, packaging metadata).
* runtime: `layers/runtime/requirements.txt`, pip-installed for the Lambda platform on this machine
           (no Docker, see tenantml_cdk.bundling).

Both zips have `python/` at their root, which Lambda puts on sys.path (/opt/python).
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import RemovalPolicy
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from tenantml_cdk.bundling import LAMBDA_PYTHON_VERSION, Architecture, runtime_layer_code

PYTHON_RUNTIME = lambda_.Runtime.PYTHON_3_12
if PYTHON_RUNTIME.name != f"python{LAMBDA_PYTHON_VERSION}":  # the wheels must match the runtime
    raise RuntimeError(f"{PYTHON_RUNTIME.name} != python{LAMBDA_PYTHON_VERSION}")

ARCHITECTURES = {"x86_64": lambda_.Architecture.X86_64, "arm64": lambda_.Architecture.ARM_64}

# Relative to layers/core (glob, .gitignore style).
CORE_LAYER_EXCLUDES = [
    "**/__pycache__",
    "**/*.pyc",
    "python/*.egg-info",          # editable-install metadata of the dev venv
    "python/tenantml/local",      # local mode: moto server and the API Gateway emulator
    "python/tenantml/example_models",  # the example-model builders and their training data
]


class PlatformLayers(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, root: Path, architecture: Architecture,
                 bundle_cache: Path | None = None) -> None:
        super().__init__(scope, construct_id)
        arch = ARCHITECTURES[architecture]
        self.core = lambda_.LayerVersion(
            self, "CoreLayer",
            code=lambda_.Code.from_asset(str(root / "layers" / "core"), exclude=CORE_LAYER_EXCLUDES),
            compatible_runtimes=[PYTHON_RUNTIME],
            compatible_architectures=[arch],
            description="tenantml platform library (python/tenantml)",
            removal_policy=RemovalPolicy.DESTROY,
        )
        runtime_code, self.runtime_build = runtime_layer_code(
            requirements_dir=root / "layers" / "runtime", architecture=architecture, cache_dir=bundle_cache)
        self.runtime = lambda_.LayerVersion(
            self, "RuntimeLayer",
            code=runtime_code,
            compatible_runtimes=[PYTHON_RUNTIME],
            compatible_architectures=[arch],
            description=f"tenantml third-party runtime (layers/runtime/requirements.txt, {architecture})",
            removal_policy=RemovalPolicy.DESTROY,
        )

    @property
    def all(self) -> list[lambda_.ILayerVersion]:
        return [self.runtime, self.core]
