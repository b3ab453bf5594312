"""API Gateway (REST) REQUEST authorizer: verify the bearer JWT, answer an IAM policy.

* valid token            -> Allow on the whole stage, context {tenant_id, sub, scopes}
* invalid token          -> explicit Deny (403; API Gateway caches it for that token)
* no bearer token at all -> raise "Unauthorized" (401: the client has to authenticate)
* signing keys not loadable -> raise (500, nothing cached: it is our outage, not a bad token)

Why each outcome, and the policy shape: tenantml/auth/policy.py. Settings (TENANTML_JWKS_URL or
TENANTML_JWKS_JSON, TENANTML_ISSUER, TENANTML_AUDIENCE, ...) are parsed once, at init, like every
function's; the verifier with its JWKS cache lives as long as the execution environment (keys are fetched
on the first request, not at init). Cold start stays small: no boto3, numpy or onnxruntime on this path.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from tenantml.auth.policy import authorize
from tenantml.auth.verifier import TokenVerifier
from tenantml.settings import get_auth_settings

logger = Logger(service="tenantml")  # the "tenantml" logger: tenantml.auth.* log lines go through it
settings = get_auth_settings()
verifier = TokenVerifier.from_settings(settings)


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return authorize(event, verifier)
