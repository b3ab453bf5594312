"""tenantml's SageMaker container for models that need a GPU (`backend: gpu` in the manifest).

- `model`: a verified model version folder -> an onnxruntime session (CUDA when present, fp16 where it
  helps) and the per-request / per-batch code around it, using `tenantml.serving.processing` and `oip`:
  the very pre- and post-processing of the Lambda (CPU) path
- `batching`: the dynamic batcher (grouping, max wait, length buckets, failure isolation, bounded queue)
- `server`: the HTTP server SageMaker talks to (`GET /ping`, `POST /invocations`) and its CLI
- `bench`: throughput and latency with dynamic batching on and off, raw onnxruntime baselines, fp16 accuracy

Nothing here imports aws_lambda_powertools or boto3 (tests/integration/test_gpu_container.py checks it):
the image carries numpy, tokenizers, pydantic, onnx and onnxruntime-gpu, plus the few tenantml modules
listed in gpu_endpoint/Dockerfile.
"""

__version__ = "0.1.0"
