"""Docker-free bundling of the third-party Lambda layer (layers/runtime/requirements.txt).

`cdk synth` must not need Docker, git or AWS. The layer is built by pip on this machine for the Lambda
platform instead of inside a container: `pip install --platform manylinux_* --only-binary=:all:
--python-version 3.12 --implementation cp --target <out>/python` downloads exactly the cp312 manylinux
wheels Lambda can load, whatever the Python and OS that run the synth.

The result is cached under `.tenantml/bundles/<key>/` where `key` hashes the requirements file, the
platform tags and the strip rules; repeated synths and every test session reuse it (hard links where the
file system allows, copies otherwise). The CDK asset hash is the same key, so a changed requirement or a
changed architecture is a new asset and anything else is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aws_cdk as cdk
import jsii

Architecture = Literal["x86_64", "arm64"]

LAMBDA_PYTHON_VERSION = "3.12"
# Lambda python3.12 runs on Amazon Linux 2023 (glibc 2.34): every manylinux tag up to 2_34 loads there.
# pip only widens the legacy `manylinux2014` alias by itself, so the PEP 600 tags are listed explicitly
# (onnxruntime and numpy publish manylinux_2_27/2_28 wheels only).
GLIBC_MAX_MINOR = 34
GLIBC_MIN_MINOR = 17
MACHINE: dict[str, str] = {"x86_64": "x86_64", "arm64": "aarch64"}

# The AWS SDK: the Lambda Python runtime provides it (with its own dependencies) in /var/runtime.
# aws-xray-sdk declares botocore; a copy in the layer would shadow the runtime's boto3/botocore pairing
# (/opt/python precedes /var/runtime on sys.path) and add ~25 MB. The graph walk stops here, so what only
# botocore needs (python-dateutil, six, urllib3) is left out as well; what a kept package declares itself
# (jmespath, for Powertools) stays.
RUNTIME_PROVIDED: frozenset[str] = frozenset({"boto3", "botocore", "s3transfer"})

# Declared dependencies that the platform never reaches, each with the reason. Everything only they
# pull in goes too (the dependency graph is walked from requirements.txt without these edges).
CUT_EDGES: dict[tuple[str, str], str] = {
    ("tokenizers", "huggingface-hub"):
        "imported only inside Tokenizer.from_pretrained (hub downloads); tenantml reads tokenizer.json "
        "from the verified artifact folder and never downloads from a hub (~20 MB with hf-xet, httpx2)",
}

# Test suites shipped inside wheels, removed per distribution (never imported at run time).
TEST_DIRS: dict[str, tuple[str, ...]] = {"numpy": ("tests",)}

# Bump when the strip rules change: it is part of the cache key and the asset hash.
STRIP_RULES_VERSION = "1"

MARKER = "bundle.json"


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_cache_dir() -> Path:
    return repo_root() / ".tenantml" / "bundles"


def pip_platforms(architecture: Architecture) -> list[str]:
    machine = MACHINE[architecture]
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MAX_MINOR, GLIBC_MIN_MINOR - 1, -1)]
    return [*tags, f"manylinux2014_{machine}"]


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@dataclass(frozen=True)
class BundleInfo:
    """What a finished bundle holds (written to bundle.json next to python/)."""

    key: str
    files: int
    bytes: int
    removed: tuple[str, ...]


@dataclass(frozen=True)
class PipLayerBuild:
    """A requirements file built for one Lambda architecture, cached by content."""

    requirements: Path
    architecture: Architecture
    cache_dir: Path

    @property
    def platforms(self) -> list[str]:
        return pip_platforms(self.architecture)

    @property
    def key(self) -> str:
        h = hashlib.sha256()
        h.update(self.requirements.read_bytes())
        h.update(json.dumps({"python": LAMBDA_PYTHON_VERSION, "implementation": "cp",
                             "platforms": self.platforms, "runtime_provided": sorted(RUNTIME_PROVIDED),
                             "cut_edges": sorted("->".join(e) for e in CUT_EDGES),
                             "test_dirs": TEST_DIRS, "strip": STRIP_RULES_VERSION},
                            sort_keys=True).encode())
        return h.hexdigest()[:32]

    @property
    def path(self) -> Path:
        """The cached bundle folder (holds python/ and bundle.json)."""
        return self.cache_dir / f"{self.architecture}-{self.key}"

    def ensure(self) -> Path:
        """Build the bundle unless a complete, unmodified one is cached; return its folder."""
        if _intact(self.path):
            return self.path
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".build-{self.architecture}-", dir=self.cache_dir))
        try:
            target = work / "python"
            self._pip_install(target)
            removed = strip(target, roots=requirement_names(self.requirements),
                            machine=MACHINE[self.architecture])
            files, size = _tree_size(target)
            info = BundleInfo(key=self.key, files=files, bytes=size, removed=tuple(removed))
            (work / MARKER).write_text(json.dumps(info.__dict__, indent=2))
            if _intact(self.path):          # another synth finished the same bundle meanwhile
                return self.path
            if self.path.exists():          # a stale or damaged copy
                shutil.rmtree(self.path)
            try:
                work.rename(self.path)
            except OSError:
                if not _intact(self.path):  # losing a rename race is fine only if theirs is complete
                    raise
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        return self.path

    def _pip_install(self, target: Path) -> None:
        cmd = [sys.executable, "-m", "pip", "install", "--requirement", str(self.requirements),
               "--target", str(target), "--implementation", "cp",
               "--python-version", LAMBDA_PYTHON_VERSION, "--only-binary=:all:", "--no-compile",
               "--disable-pip-version-check", "--no-input", "--quiet"]
        for platform in self.platforms:
            cmd += ["--platform", platform]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        if proc.returncode != 0:
            raise RuntimeError(
                f"building the runtime layer failed (pip exit {proc.returncode}) for "
                f"{self.architecture}:\n{proc.stderr.strip()[-4000:]}")


def _intact(path: Path) -> bool:
    """A cached bundle is reused only when its marker exists and its file count and size still match."""
    marker = path / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except ValueError:
        return False
    return _tree_size(path / "python") == (info.get("files"), info.get("bytes"))


def _tree_size(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                files += 1
                size += os.path.getsize(p)
    return files, size


def _dist_infos(site: Path) -> Iterable[tuple[str, Path]]:
    for info in site.glob("*.dist-info"):
        name = info.name[: -len(".dist-info")].rsplit("-", 1)[0]
        meta = info / "METADATA"
        if meta.is_file():
            for line in meta.read_text(errors="replace").splitlines():
                if line.startswith("Name:"):
                    name = line.split(":", 1)[1].strip()
                    break
        yield _normalize(name), info


def _record_files(site: Path, info: Path) -> list[Path]:
    record = info / "RECORD"
    out: list[Path] = []
    if not record.is_file():
        return out
    root = site.resolve()
    for line in record.read_text(errors="replace").splitlines():
        rel = line.split(",", 1)[0].strip()
        if not rel:
            continue
        p = (site / rel).resolve()
        if p.is_relative_to(root):
            out.append(p)
    return out


def _prune_empty_dirs(site: Path) -> None:
    for dirpath, _dirs, _names in sorted(os.walk(site), key=lambda t: -len(t[0])):
        p = Path(dirpath)
        if p != site and not any(p.iterdir()):
            p.rmdir()


def requirement_names(requirements: Path) -> dict[str, frozenset[str]]:
    """Top-level requirements (normalized name -> extras) of a requirements file."""
    from packaging.requirements import Requirement  # noqa: PLC0415

    roots: dict[str, frozenset[str]] = {}
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            roots[_normalize(req.name)] = frozenset(req.extras)
    return roots


def _needed(site: Path, roots: dict[str, frozenset[str]], machine: str) -> set[str]:
    """Distributions reachable from `roots` on Lambda, minus cut edges and runtime-provided ones."""
    from packaging.requirements import Requirement  # noqa: PLC0415

    env = {"python_version": LAMBDA_PYTHON_VERSION, "python_full_version": f"{LAMBDA_PYTHON_VERSION}.0",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "platform_machine": machine, "implementation_name": "cpython",
           "platform_python_implementation": "CPython"}
    requires: dict[str, list[Requirement]] = {}
    for name, info in _dist_infos(site):
        lines = (info / "METADATA").read_text(errors="replace").splitlines()
        requires[name] = [Requirement(line.split(":", 1)[1].strip())
                          for line in lines if line.startswith("Requires-Dist:")]
    needed: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(roots.items())
    while todo:
        item = todo.pop()
        name, extras = item
        if name in RUNTIME_PROVIDED or item in seen:
            continue
        seen.add(item)
        needed.add(name)
        for req in requires.get(name, []):
            dep = _normalize(req.name)
            if (name, dep) in CUT_EDGES:
                continue
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in {"", *extras}):
                todo.append((dep, frozenset(req.extras)))
    return needed


def _remove_dist(site: Path, info: Path) -> None:
    for f in _record_files(site, info):
        if f.is_file() or f.is_symlink():
            f.unlink()
    shutil.rmtree(info, ignore_errors=True)


def strip(site: Path, *, roots: dict[str, frozenset[str]], machine: str) -> list[str]:
    """Remove what Lambda never needs, by distribution RECORD, never by guess. Returns what went."""
    removed: list[str] = []
    dists = dict(_dist_infos(site))
    missing = set(roots) - dists.keys()
    if missing:
        raise RuntimeError(f"pip did not install {sorted(missing)}")
    needed = _needed(site, roots, machine)
    for name in sorted(dists.keys() - needed):
        _remove_dist(site, dists[name])
        removed.append(name)
    for name, dirs in TEST_DIRS.items():
        info = dists.get(name)
        if info is None:
            continue
        for f in _record_files(site, info):
            rel = f.relative_to(site.resolve())
            if any(part in dirs for part in rel.parts[1:-1]) and f.is_file():
                f.unlink()
        removed.append(f"{name} test suites")
    for cache in site.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    bin_dir = site / "bin"                      # console scripts: shebangs point at the build machine
    if bin_dir.is_dir():
        shutil.rmtree(bin_dir)
        removed.append("bin/")
    _prune_empty_dirs(site)
    return removed


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def copy_bundle(bundle: Path, output_dir: Path) -> None:
    """Place a cached bundle's python/ folder into CDK's bundling output directory."""
    shutil.copytree(bundle / "python", output_dir / "python", copy_function=_link_or_copy,
                    dirs_exist_ok=True)


@jsii.implements(cdk.ILocalBundling)
class PipLocalBundling:
    """cdk ILocalBundling: runs pip on this machine, so the Docker image below is never pulled."""

    def __init__(self, build: PipLayerBuild) -> None:
        self._build = build

    def try_bundle(self, output_dir: str, *, image: cdk.DockerImage, **_options: object) -> bool:
        copy_bundle(self._build.ensure(), Path(output_dir))
        return True


# Named for the error message it would produce: local bundling always succeeds or raises, so CDK
# never falls back to Docker.
UNUSED_DOCKER_IMAGE = "tenantml/local-bundling-only-never-pulled"


def runtime_layer_code(*, requirements_dir: Path, architecture: Architecture,
                       cache_dir: Path | None = None) -> tuple[cdk.aws_lambda.Code, PipLayerBuild]:
    """Lambda layer code for `requirements_dir/requirements.txt`, bundled locally for `architecture`."""
    from aws_cdk import aws_lambda as lambda_  # noqa: PLC0415

    build = PipLayerBuild(requirements=requirements_dir / "requirements.txt", architecture=architecture,
                          cache_dir=cache_dir or default_cache_dir())
    code = lambda_.Code.from_asset(
        str(requirements_dir),
        asset_hash_type=cdk.AssetHashType.CUSTOM,
        asset_hash=f"{architecture}-{build.key}",
        bundling=cdk.BundlingOptions(
            image=cdk.DockerImage.from_registry(UNUSED_DOCKER_IMAGE),
            local=PipLocalBundling(build),
            output_type=cdk.BundlingOutput.NOT_ARCHIVED,
        ),
    )
    return code, build


def unzipped_size(paths: Sequence[Path]) -> int:
    """Total bytes of the files under `paths` (what Lambda counts against its 250 MB unzipped limit)."""
    return sum(_tree_size(p)[1] for p in paths)
