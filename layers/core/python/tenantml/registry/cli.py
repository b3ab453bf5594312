"""`tenantml models register|list`: the operator's side of the registry (AWS credentials, any tenant).

    tenantml models register .tenantml/models/project-risk --tenant acme [--model M] [--version V] [--alias A]
        [--reference FILE.csv [--label COLUMN] [--backbone-folder DIR]]
    tenantml models list --tenant acme

`--reference` computes the folder's baseline.json from reference data first (tenantml.monitoring.reference),
so the version is registered with its drift baseline.

Settings come from the environment (TENANTML_ARTIFACT_BUCKET, TENANTML_REGISTRY_TABLE and, in local mode,
TENANTML_ENDPOINT_URL). `register_folder` is the same flow without settings, for local mode and tests.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from tenantml.errors import BadRequest, IntegrityError, TenantMLError
from tenantml.manifest import verify_file
from tenantml.observability import logger
from tenantml.registry import (
    PRODUCTION_ALIAS,
    ModelRegistry,
    ModelSummary,
    ModelVersion,
    VerifiedArtifactStore,
)
from tenantml.registry.service import MANIFEST_FILE, RegistrationService, named, parse_manifest


def register_folder(path: str | Path, tenant: str, registry: ModelRegistry, store: VerifiedArtifactStore, *,
                    model: str | None = None, version: str | None = None,
                    aliases: Sequence[str] = (PRODUCTION_ALIAS,), actor: str = "cli") -> ModelVersion:
    """Upload a built model folder to `models/<tenant>/<model>/<version>/` and register it.

    Local files are checked against the manifest before anything is uploaded; the service then verifies
    what is stored (it re-hashes the objects) before it registers. Files in the folder that the manifest
    does not list are not uploaded: nothing could ever verify them."""
    folder = Path(path)
    if not (folder / MANIFEST_FILE).is_file():
        raise BadRequest(f"{folder} holds no {MANIFEST_FILE}")
    manifest = parse_manifest((folder / MANIFEST_FILE).read_bytes())
    model = model or manifest.name
    manifest = named(manifest, model)
    # The folder's files go to the service as inline files (no 4 MiB API body here: the version-bytes
    # quota bounds them), so a registration that fails after uploading removes what it uploaded.
    service = RegistrationService(registry, store, max_inline_bytes=2 ** 62)
    contents: dict[str, bytes] = {}
    for name in sorted(manifest.files):
        file = folder / name
        if not file.is_file():
            raise BadRequest(f"file '{name}' listed in the manifest is missing from {folder}")
        try:
            contents[name] = verify_file(manifest, name, file.read_bytes())
        except IntegrityError:
            raise BadRequest(f"file '{name}' in {folder} does not match the sha256/size in the "
                             "manifest") from None
    unlisted = sorted(p.name for p in folder.iterdir() if p.name not in contents and p.name != MANIFEST_FILE)
    if unlisted:
        logger.warning("files not listed in the manifest are not uploaded",
                       extra={"tenant": tenant, "model": model, "files": unlisted})
    version = service.prepare(tenant, model, manifest, version, aliases)
    return service.register(owner=tenant, model=model, manifest=manifest, actor=actor, version=version,
                            files=contents, aliases=aliases)


def _target() -> Any:
    from tenantml.local.state import platform_target  # noqa: PLC0415

    return platform_target("registry", needs="TENANTML_REGISTRY_TABLE")


def _clients():
    from tenantml.registry.dynamo import DynamoRegistry  # noqa: PLC0415
    from tenantml.registry.s3 import S3ArtifactStore  # noqa: PLC0415
    from tenantml.settings import get_aws_settings, get_registry_settings  # noqa: PLC0415

    settings, aws = get_registry_settings(), get_aws_settings()
    return DynamoRegistry(settings.registry_table, aws), S3ArtifactStore(settings.artifact_bucket, aws)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _no_platform() -> tuple[type[Exception], ...]:
    from tenantml.local.state import NoPlatform  # noqa: PLC0415

    return (NoPlatform,)


def _aws_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    return BotoCoreError, ClientError


def _fail(exc: Exception, err: TextIO | None) -> int:
    err = err or sys.stderr
    if isinstance(exc, _aws_errors()):
        print(f"error: the AWS call failed ({type(exc).__name__}: {exc})", file=err)
        return 1
    from tenantml.local.state import NoPlatform  # noqa: PLC0415

    if isinstance(exc, NoPlatform):
        print(f"error: {exc}", file=err)
        return 2
    if isinstance(exc, ValidationError):
        print("error: set TENANTML_ARTIFACT_BUCKET and TENANTML_REGISTRY_TABLE (and TENANTML_ENDPOINT_URL "
              "in local mode)", file=err)
        return 2
    # An operator's terminal: the detail (S3 key, stored hash) helps and leaks to no tenant.
    print(f"error: {exc}", file=err)
    return 1


def _baseline_first(args: argparse.Namespace, registry: Any, store: Any, out: TextIO | None) -> None:
    """`--reference`: compute baseline.json into the folder (and its manifest) before it is registered. A
    head without --backbone-folder runs on the registered backbone it will be served with."""
    from tenantml.monitoring.reference import (  # noqa: PLC0415 - pulls the serving runtime
        compute_and_write,
        read_manifest,
        registered_backbone,
    )

    folder = Path(args.path)
    backbone_folder = Path(args.backbone_folder) if getattr(args, "backbone_folder", None) else None
    backbone = None
    if backbone_folder is None:
        manifest = read_manifest(folder)
        if manifest.task == "text-classification":
            backbone = registered_backbone(manifest, args.tenant, registry, store)
    compute_and_write(folder, Path(args.reference), label_column=getattr(args, "label", None),
                      backbone_folder=backbone_folder, backbone=backbone, out=out)


def register_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    aliases = tuple(args.alias) if args.alias else (PRODUCTION_ALIAS,)
    reference = getattr(args, "reference", None)
    if reference is None and (getattr(args, "label", None) or getattr(args, "backbone_folder", None)):
        print("error: --label and --backbone-folder go with --reference", file=err or sys.stderr)
        return 2
    try:
        with _target():
            registry, store = _clients()
            if reference is not None:
                _baseline_first(args, registry, store, out)
            registered = register_folder(args.path, args.tenant, registry, store, model=args.model,
                                         version=args.version, aliases=aliases, actor=_actor())
    except (TenantMLError, ValidationError, *_no_platform(), *_aws_errors()) as exc:
        return _fail(exc, err)
    print(f"registered {registered.owner}/{registered.model} version {registered.version} "
          f"(aliases: {', '.join(aliases)})", file=out or sys.stdout)
    return 0


def format_models(models: Sequence[ModelSummary], tenant: str) -> str:
    header = ("MODEL", "OWNER", "TASK", "BACKEND", "PRODUCTION", "LATEST", "VERSIONS", "ALIASES")
    rows = [header]
    for m in models:
        rows.append((m.model, "own" if m.owner == tenant else m.owner, m.task, m.backend,
                     m.aliases.get(PRODUCTION_ALIAS, "-"), m.versions[-1] if m.versions else "-",
                     str(len(m.versions)),
                     ",".join(f"{a}={v}" for a, v in sorted(m.aliases.items())) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def list_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    try:
        with _target():
            registry, _ = _clients()
            models = registry.list_models(args.tenant)
    except (TenantMLError, ValidationError, *_no_platform(), *_aws_errors()) as exc:
        return _fail(exc, err)
    if not models:
        print(f"no models for tenant {args.tenant}", file=out or sys.stdout)
        return 0
    print(format_models(models, args.tenant), file=out or sys.stdout)
    return 0
