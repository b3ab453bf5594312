"""Integration fixtures shared across modules: the real mpnet-embed build (a 436 MB model, 20-30 s on
two cores), made once per session by `tenantml models build --only mpnet-embed` and hard-linked into any
other output folder a test builds the full pipeline in, where the cache then finds it up to date."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MPNET_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mpnet_reference.json"


@dataclass
class MpnetBuild:
    out: Path                       # holds mpnet-embed/ and .mpnet-embed.build.json
    seconds: float                  # the build's wall time
    lines: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.out / "mpnet-embed"


@pytest.fixture(scope="session")
def mpnet_build(tmp_path_factory) -> MpnetBuild | None:
    """The mpnet-embed build checked against tests/fixtures/mpnet_reference.json, or None where the
    all-mpnet-base-v2 parts are not installed (tests that need it skip; the pipeline skips the step)."""
    from tenantml.example_models.mpnet import parts_installed
    from tenantml.example_models.pipeline import build_models

    if not parts_installed():
        return None
    out = tmp_path_factory.mktemp("mpnet")
    lines: list[str] = []
    t0 = time.perf_counter()
    build_models(out, only={"mpnet-embed"}, mpnet_reference=MPNET_FIXTURE, progress=lines.append)
    return MpnetBuild(out=out, seconds=time.perf_counter() - t0, lines=lines)


@pytest.fixture(scope="session")
def link_mpnet(mpnet_build: MpnetBuild | None) -> Callable[[Path], bool]:
    """`link(out)`: put the session's mpnet-embed build (hard links, and its cache stamp) into `out`;
    False where there is none."""

    def link(out: Path) -> bool:
        if mpnet_build is None:
            return False
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "mpnet-embed").exists():
            shutil.copytree(mpnet_build.folder, out / "mpnet-embed", copy_function=os.link)
        shutil.copy(mpnet_build.out / ".mpnet-embed.build.json", out / ".mpnet-embed.build.json")
        return True

    return link
