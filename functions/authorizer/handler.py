"""API Gateway Lambda authorizer: verify the bearer JWT. Behind the REST API (REQUEST or TOKEN event) it
answers an IAM policy; behind the HTTP API (payload format 2.0) a simple response.

* valid token            -> Allow on the whole stage / {"isAuthorized": true}, context {tenant_id, sub,
                            scopes, valid_until}
* invalid token          -> explicit Deny / {"isAuthorized": false} (403; cached for that token)
* no bearer token at all -> REST: raise "Unauthorized" (401); HTTP API: API Gateway answers 401 itself when
                            the header is missing, and another scheme is {"isAuthorized": false} (403)
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
