"""The asynchronous (GPU) path: models whose manifest says `backend: gpu` are served by a SageMaker
asynchronous inference endpoint (the container in gpu_endpoint/), fed through SQS.

    POST .../infer  -> `submit`: validate, store the payload (S3) and the request (DynamoDB), enqueue;
                       202 + Location /v2/requests/{id}; Idempotency-Key makes retries return the same id
    gpu_dispatch    -> `dispatch`: SQS -> InvokeEndpointAsync (S3 input); transient faults re-queued with
                       backoff without using the message's receive budget; poison -> DLQ, request failed
    SageMaker       -> success / error SNS topics -> the gpu-results queue
    gpu_result      -> `results`: record the outcome once (conditional write); cost record
    GET /v2/requests/{id} -> `requests`: pending, the OIP result, or a failure reason; only the tenant
                       that submitted it (404 for anyone else, as for an id that does not exist)

`requests` holds the table and object layout every step shares.
"""
