"""The registry's admin API (function `registry`; routes in tenantml.resources.ROUTES).

    GET  /admin/models                          models the caller's tenant can call (own and shared)
    GET  /admin/models/{model}/versions         versions of the model the tenant resolves
    POST /admin/models/{model}/versions         register a version: 201 + Location   [?owner=_shared]
    PUT  /admin/models/{model}/aliases/{alias}  point an alias at a version          [?owner=_shared]
    GET  /admin/audit?limit=&next_token=        the tenant's audit log, newest first
    GET  /admin/models/{model}/drift            the tenant's latest drift report summaries
    POST /admin/models/{model}/rollout          start a rollout: 201                  [?owner=_shared]
    GET  /admin/models/{model}/rollout          its status, signals and A/B analysis  [?owner=_shared]
    POST /admin/models/{model}/rollout/{action} promote, abort, freeze or resume      [?owner=_shared]

Every route needs scope `models:write`; the tenant comes only from the authorizer context. Writes go to
the caller's own tenant. With `?owner=_shared` (the only value `owner` takes; anything else is a 400) a
write goes to the shared models every tenant can call instead, and the caller needs scope `models:admin`
as well (registry.service.check_write_access). The authorizer never accepts `_shared` as a token's
tenant, so this is the only way to write a shared model through the API. A shared write's audit record
(actor: the token's `sub`) goes to the `_shared` audit log, not the caller tenant's, so GET /admin/audit
does not show it; the caller's tenant is in the log line "shared model write" (with owner and actor).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tenantml import SHARED_TENANT
from tenantml.api.body import MAX_ADMIN_BODY_BYTES, read_text
from tenantml.api.context import Caller, caller_from_event
from tenantml.api.errors import JSON, register_error_handlers
from tenantml.api.flavours import BothFlavours
from tenantml.errors import BadRequest, Conflict, Forbidden
from tenantml.manifest import VERSION_RE, Manifest
from tenantml.observability import logger
from tenantml.registry import ALIAS_RE, MAX_AUDIT_PAGE, AuditRecord, ModelSummary, VersionRecord
from tenantml.registry.service import RegistrationService, check_write_access, summarize_validation
from tenantml.resources import WRITE_SCOPE
from tenantml.rollout.service import RolloutAction, RolloutService, StartRollout

OWNER_PARAM = "owner"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegisterVersionBody(_Body):
    version: str | None = Field(default=None, pattern=VERSION_RE.pattern)
    manifest: Manifest
    files: dict[str, str] = Field(default_factory=dict, description="file name -> base64 content")
    aliases: list[str] = Field(default_factory=list, max_length=8)


class SetAliasBody(_Body):
    version: str = Field(pattern=VERSION_RE.pattern)


def _parse(model: type[BaseModel], body: str | None) -> Any:
    if not body:
        raise BadRequest("request body must be a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequest(summarize_validation(exc)) from None


def _decode_files(files: dict[str, str]) -> dict[str, bytes]:
    decoded = {}
    for name, text in files.items():
        try:
            decoded[name] = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"files.{name}: not valid base64") from None
    return decoded


def _model_json(s: ModelSummary) -> dict[str, Any]:
    return {"name": s.model, "owner": "shared" if s.owner == SHARED_TENANT else "own", "task": s.task,
            "backend": s.backend, "versions": list(s.versions),
            "latest": s.versions[-1] if s.versions else None, "aliases": s.aliases}


def _version_json(r: VersionRecord, caller: Caller) -> dict[str, Any]:
    out = {"version": r.version, "status": r.status, "registered_at": r.registered_at, "task": r.task,
           "backend": r.backend, "aliases": list(r.aliases)}
    if r.owner == caller.tenant:   # who registered a shared model is the platform's business
        out["registered_by"] = r.registered_by
    return out


def _audit_json(r: AuditRecord) -> dict[str, Any]:
    return {"id": r.id, "timestamp": r.timestamp, "action": r.action, "actor": r.actor, "model": r.model,
            "version": r.version, "details": r.details}


def _route_template(event: Any) -> str:
    """The matched route's path template: `resource` of a REST (1.0) event, the path of an HTTP API (2.0)
    event's route key ("POST /admin/models/{model}/versions" -> "/admin/models/{model}/versions")."""
    resource = getattr(event, "resource", None)
    if isinstance(resource, str) and resource:
        return resource
    return str(getattr(event, "route_key", None) or "").partition(" ")[2]


def _route_action(event: Any) -> str:
    """A route as an audit action: "POST /admin/models/{model}/rollout/{action}" -> "post_rollout_promote"."""
    resource = _route_template(event)
    action = (event.path_parameters or {}).get("action") if resource.endswith("{action}") else None
    parts = [p for p in resource.split("/") if p and not p.startswith("{") and p not in ("admin", "models")]
    return "_".join([str(event.http_method).lower(), *parts, *([action] if action else [])])[:64]


def _audit_refusals(registry: Any) -> Any:
    """Powertools middleware: an admin attempt refused for its scope (403) or for a conflict (409) is
    appended to the caller tenant's audit log as `refused_<method>_<route>` with the reason, then answered
    as before. A request without a tenant (401) has no log to go to; a failure to audit is logged and
    never changes the answer."""
    def middleware(app: ApiGatewayResolver, next_middleware: Any) -> Response:
        try:
            return next_middleware(app)
        except (Forbidden, Conflict) as exc:
            try:
                who = caller_from_event(app.current_event.raw_event)
                model = (app.current_event.path_parameters or {}).get("model") or "*"
                registry.record_refusal(who.tenant, _route_action(app.current_event), who.sub, model[:128],
                                        f"{exc.status} {exc.public_message}")
            except Exception as audit_exc:  # noqa: BLE001 - the refusal is answered whatever happens here
                logger.warning("refusal not audited", extra={"error": type(audit_exc).__name__})
            raise
    return middleware


def create_app(service: RegistrationService, reports: Any | None = None,
               rollouts: RolloutService | None = None) -> BothFlavours:
    """The resolvers over one RegistrationService, one per API Gateway flavour (built once per execution
    environment, at init)."""
    rollouts = rollouts or RolloutService(service.registry)
    return BothFlavours(lambda resolver: _build(resolver, service, reports, rollouts))


def _build(resolver: type[ApiGatewayResolver], service: RegistrationService, reports: Any | None,
           rollouts: RolloutService) -> ApiGatewayResolver:
    app = resolver()
    register_error_handlers(app)
    app.use(middlewares=[_audit_refusals(service.registry)])

    def caller() -> Caller:
        who = caller_from_event(app.current_event.raw_event)
        logger.append_keys(tenant=who.tenant)
        who.require(WRITE_SCOPE)
        return who

    def body_text() -> str | None:
        """The request body as text: base64 undone, decompressed, strict UTF-8 (400 otherwise; never
        Powertools' `decoded_body`, which raises on a body that is not base64 or not UTF-8)."""
        return read_text(app.current_event.raw_event, max_bytes=MAX_ADMIN_BODY_BYTES)

    def write_owner(who: Caller) -> str:
        """The tenant a write goes to: the caller's own, or `_shared` with `?owner=_shared`; checked
        against the caller's scopes (403) before anything else is read."""
        event = app.current_event
        values = (event.multi_value_query_string_parameters or {}).get(OWNER_PARAM)
        raw = event.get_query_string_value(OWNER_PARAM)
        if raw is None:
            owner = who.tenant
        elif raw != SHARED_TENANT or (values is not None and len(values) != 1):
            raise BadRequest(f"query parameter '{OWNER_PARAM}' may only be '{SHARED_TENANT}' (to write a "
                             "shared model); omit it to write your own tenant's models")
        else:
            owner = SHARED_TENANT
        check_write_access(who, owner)
        if owner != who.tenant:
            logger.info("shared model write", extra={"owner": owner, "actor": who.sub})
        return owner

    @app.get("/admin/models")
    def list_models() -> dict[str, Any]:
        who = caller()
        return {"models": [_model_json(s) for s in service.registry.list_models(who.tenant)]}

    @app.get("/admin/models/<model>/versions")
    def list_versions(model: str) -> dict[str, Any]:
        who = caller()
        records = service.registry.list_versions(who.tenant, model)
        return {"model": model, "owner": "shared" if records and records[0].owner != who.tenant else "own",
                "versions": [_version_json(r, who) for r in records]}

    @app.post("/admin/models/<model>/versions")
    def register_version(model: str) -> Response:
        who = caller()
        owner = write_owner(who)
        body: RegisterVersionBody = _parse(RegisterVersionBody, body_text())
        registered = service.register(owner=owner, model=model, manifest=body.manifest, actor=who.sub,
                                        version=body.version, files=_decode_files(body.files),
                                        aliases=body.aliases)
        out = {"model": registered.model, "version": registered.version, "aliases": body.aliases}
        return Response(201, JSON, json.dumps(out),
                        headers={"Location": f"/v2/models/{registered.model}/versions/{registered.version}"})

    @app.put("/admin/models/<model>/aliases/<alias>")
    def set_alias(model: str, alias: str) -> dict[str, Any]:
        who = caller()
        owner = write_owner(who)
        if not ALIAS_RE.fullmatch(alias):
            raise BadRequest(f"alias must match {ALIAS_RE.pattern}")
        body: SetAliasBody = _parse(SetAliasBody, body_text())
        change = service.set_alias(owner=owner, model=model, alias=alias, version=body.version,
                                     actor=who.sub)
        return {"model": change.model, "alias": change.alias, "version": change.version,
                "previous": change.previous}

    @app.get("/admin/audit")
    def list_audit() -> dict[str, Any]:
        who = caller()
        raw_limit = app.current_event.get_query_string_value("limit", "50")
        if not (raw_limit.isascii() and raw_limit.isdigit()):
            raise BadRequest(f"limit must be an integer between 1 and {MAX_AUDIT_PAGE}")
        page = service.registry.list_audit(who.tenant, int(raw_limit),
                                             app.current_event.get_query_string_value("next_token"))
        return {"records": [_audit_json(r) for r in page.records], "next_token": page.next_token}

    @app.get("/admin/models/<model>/drift")
    def drift_reports(model: str) -> dict[str, Any]:
        """The caller tenant's latest drift report summaries for the model it resolves (its own or the
        shared one it calls); another tenant's model answers like a missing one."""
        who = caller()
        raw_limit = app.current_event.get_query_string_value("limit", "10")
        if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= 50:
            raise BadRequest("limit must be an integer between 1 and 50")
        service.registry.resolve(who.tenant, model)          # ModelNotFound (404) for missing and foreign
        found = reports.latest(who.tenant, model, int(raw_limit)) if reports is not None else []
        return {"model": model, "reports": found}

    @app.post("/admin/models/<model>/rollout")
    def start_rollout(model: str) -> Response:
        who = caller()
        owner = write_owner(who)
        body: StartRollout = _parse(StartRollout, body_text())
        rollouts.start(owner, model, body, actor=who.sub)
        return Response(201, JSON, json.dumps(rollouts.status(owner, model)),
                        headers={"Location": f"/admin/models/{model}/rollout"})

    @app.get("/admin/models/<model>/rollout")
    def rollout_status(model: str) -> dict[str, Any]:
        who = caller()
        return rollouts.status(write_owner(who), model)

    @app.post("/admin/models/<model>/rollout/<action>")
    def rollout_action(model: str, action: str) -> dict[str, Any]:
        who = caller()
        owner = write_owner(who)
        raw = body_text()
        body: RolloutAction = _parse(RolloutAction, raw) if raw else RolloutAction()
        rollouts.act(owner, model, action, actor=who.sub, reason=body.reason)
        return rollouts.status(owner, model)

    return app
