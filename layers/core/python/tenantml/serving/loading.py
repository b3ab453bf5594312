"""What loading a verified model version needs on both serving paths, the Lambda's (`runtime`) and the GPU
container's (gpu_endpoint/model.py): onnxruntime's session options and the manifest checks. Imports
neither Powertools nor boto3 (the container has neither)."""

from __future__ import annotations

from typing import Any, NamedTuple

import onnxruntime as ort

from tenantml.manifest import Manifest
from tenantml.serving.processing import PROBS_SUFFIX


class Misconfigured(Exception):
    """A verified artifact that does not fit its manifest (wrong outputs, no text input, a bad head)."""


def session_options() -> ort.SessionOptions:
    """Full graph optimization; no CPU memory arena: variable batch/sequence shapes make the arena grow to
    the largest request ever seen and keep it (64 long texts need hundreds of MB of activations), and on
    MiniLM int8 the arena made no measurable latency difference at batch 1 or 32. Thread count and
    spinning stay at onnxruntime's defaults (turning spinning off cost ~25% at batch 1)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = False
    opts.log_severity_level = 3
    return opts


def text_input(manifest: Manifest) -> str:
    """The name of the manifest's text (BYTES) input."""
    for spec in manifest.inputs:
        if spec.datatype == "BYTES":
            return spec.name
    raise Misconfigured("the manifest declares no BYTES input for the text")


def require_outputs(manifest: Manifest, produced: set[str]) -> None:
    missing = [s.name for s in manifest.outputs if s.name not in produced]
    if missing:
        raise Misconfigured(f"the model does not produce the declared outputs {missing}")


class TabularBinding(NamedTuple):
    """How a tabular classifier's graph maps onto its manifest."""

    output: str                  # the manifest's labelled output
    labels: tuple[str, ...]
    onnx_input: str
    label_key: str | None        # the graph's label output, if it has one
    prob_key: str                # the graph's probabilities output


def tabular_binding(manifest: Manifest, session: Any) -> TabularBinding:
    """One input, one labelled output, graph outputs as `build.onnx_outputs` names them (skl2onnx's
    `label`/`probabilities` by default); Misconfigured otherwise."""
    if len(manifest.labels) != 1 or len(manifest.inputs) != 1:
        raise Misconfigured("a tabular classifier has one input and one labelled output")
    output, labels = next(iter(manifest.labels.items()))
    graph_inputs = session.get_inputs()
    if len(graph_inputs) != 1:
        raise Misconfigured("a tabular classifier graph has one input")
    names = [o.name for o in session.get_outputs()]
    mapping: dict[str, Any] = dict(manifest.build.get("onnx_outputs") or {})  # type: ignore[call-overload]
    prob_key = mapping.get("probabilities") or next((n for n in names if "prob" in n), None)
    label_key = mapping.get("label") or ("label" if "label" in names else None)
    if prob_key not in names or (label_key is not None and label_key not in names):
        raise Misconfigured(f"onnx_outputs {mapping} do not match graph outputs {names}")
    require_outputs(manifest, {output, output + PROBS_SUFFIX})
    return TabularBinding(output, tuple(labels), graph_inputs[0].name, label_key, str(prob_key))
