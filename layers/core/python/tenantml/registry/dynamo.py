"""DynamoDB adapter of the registry (single table, see tenantml.resources.REGISTRY_TABLE).

    pk = "T#<tenant>"        sk = "M#<model>"               model item (aliases, task, backend, latest, ...)
    pk = "T#<tenant>"        sk = "M#<model>#V#<version>"   version item (manifest JSON, status, registered_*)
    pk = "T#<tenant>#AUDIT"  sk = "<iso8601>#<uuid>"        audit record (append-only)
    pk = "ROLLOUTS"          sk = "<owner>#<model>"         a live rollout (written and removed with it)

Every change is one TransactWriteItems: the new or changed items, each with a condition, plus the audit
record. The model item is written on the condition that it is still the one that was read (optimistic
concurrency), so two concurrent registrations never lose an update: the loser re-reads and retries.
Model and version names are validated before they reach a key ('#' can never appear in either).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from tenantml.aws import client as aws_client
from tenantml.errors import BadRequest, Conflict, ModelNotFound, PayloadTooLarge, Throttled
from tenantml.manifest import Manifest
from tenantml.observability import logger
from tenantml.registry import (
    ACTION_REFUSED,
    ACTION_REGISTER,
    ACTION_ROLLOUT,
    ACTION_SET_ALIAS,
    AliasChange,
    AuditPage,
    AuditRecord,
    ModelState,
    ModelSummary,
    ModelVersion,
    VersionRecord,
    audit_sort_key,
    check_alias,
    check_model_name,
    check_page_limit,
    check_tenant,
    check_version_id,
    decode_page_token,
    encode_page_token,
    is_valid_lookup,
    iso,
    lookup_owners,
    plan_registration,
    plan_rollout,
    registration_details,
    rollout_details,
    rollout_of,
    select_version,
    utc_now,
)
from tenantml.settings import AwsSettings

_BATCH_ATTEMPTS = 5
_CONDITION_FAILED = frozenset({"ConditionalCheckFailed", "TransactionConflict"})


class RegistryThrottled(Throttled):
    """DynamoDB left the registry's keys unprocessed after every retry: the table's capacity, not the
    caller's request rate, so it answers like any other registry fault (503, Retry-After, the same message
    the serving path gives a throttled GetItem), never a bare 429. Still a Throttled for callers that tell
    throttling apart."""

    status = 503
    default_message = "model unavailable"
    retry_after = 5

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


LIVE_ROLLOUTS_PK = "ROLLOUTS"


def tenant_pk(tenant: str) -> str:
    return f"T#{tenant}"


def audit_pk(tenant: str) -> str:
    return f"T#{tenant}#AUDIT"


def model_sk(model: str) -> str:
    return f"M#{model}"


def version_sk(model: str, version: str) -> str:
    return f"M#{model}#V#{version}"


# --- DynamoDB attribute values (only the types this table uses) ----------------------------------------

def _av(value: Any) -> dict[str, Any]:
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, Mapping):
        return {"M": {str(k): _av(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [_av(v) for v in value]}
    raise TypeError(f"unsupported attribute type {type(value).__name__}")


def _py(av: Mapping[str, Any]) -> Any:
    (kind, value), = av.items()
    if kind == "S" or kind == "BOOL":
        return value
    if kind == "N":
        return int(value)
    if kind == "NULL":
        return None
    if kind == "M":
        return {k: _py(v) for k, v in value.items()}
    if kind == "L":
        return [_py(v) for v in value]
    raise TypeError(f"unsupported attribute kind {kind}")


def _item(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _av(v) for k, v in values.items()}


def _plain(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _py(v) for k, v in item.items()}


def _state(item: Mapping[str, Any]) -> ModelState:
    d = _plain(item)
    return ModelState(owner=d["tenant"], model=d["model"], task=d["task"], backend=d["backend"],
                      latest=d["latest"], max_int=d["max_int"], version_count=d["version_count"],
                      aliases=d.get("aliases") or {}, created_at=d["created_at"], updated_at=d["updated_at"],
                      rollout=d.get("rollout"))


def _model_item(state: ModelState) -> dict[str, Any]:
    return _item({"pk": tenant_pk(state.owner), "sk": model_sk(state.model), "kind": "model",
                  "tenant": state.owner, "model": state.model, "task": state.task, "backend": state.backend,
                  "latest": state.latest, "max_int": state.max_int, "version_count": state.version_count,
                  "aliases": dict(state.aliases), "created_at": state.created_at,
                  "updated_at": state.updated_at, **({"rollout": state.rollout} if state.rollout else {})})


@dataclass(frozen=True)
class _Cancelled:
    """Why a transaction was cancelled: one reason code per item, in TransactItems order."""

    codes: tuple[str, ...]

    def failed(self, index: int) -> bool:
        return index < len(self.codes) and self.codes[index] in _CONDITION_FAILED


def _too_large(exc: Exception) -> bool:
    """DynamoDB's refusal of an item over 400 KB (ValidationException, or a cancelled transaction whose
    reason is one)."""
    response = getattr(exc, "response", None) or {}
    texts = [str(response.get("Error", {}).get("Message", ""))]
    texts += [str(r.get("Message", "")) for r in response.get("CancellationReasons") or []]
    codes = [str(response.get("Error", {}).get("Code", ""))]
    codes += [str(r.get("Code", "")) for r in response.get("CancellationReasons") or []]
    refused = "ValidationError" in codes or "ValidationException" in codes
    return refused and any("size" in t.lower() for t in texts)


def _cancelled(exc: Exception) -> _Cancelled | None:
    response = getattr(exc, "response", None) or {}
    if response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return None
    return _Cancelled(tuple(r.get("Code", "None") for r in response.get("CancellationReasons") or []))


class DynamoRegistry:
    """`Registry` + `ModelRegistry` on one DynamoDB table."""

    def __init__(self, table: str, aws: AwsSettings, *, client: Any | None = None,
                 clock: Callable[[], datetime] = utc_now, max_attempts: int = 4) -> None:
        self._table = table
        self._ddb = client if client is not None else aws_client("dynamodb", aws)
        self._clock = clock
        self._max_attempts = max_attempts

    # --- reads ---------------------------------------------------------------------------------------

    def _read_model(self, owner: str, model: str, *, consistent: bool = True) -> ModelState | None:
        resp = self._ddb.get_item(TableName=self._table, ConsistentRead=consistent,
                                  Key=_item({"pk": tenant_pk(owner), "sk": model_sk(model)}))
        item = resp.get("Item")
        return _state(item) if item else None

    def _read_models(self, owners: Sequence[str], model: str) -> dict[str, ModelState]:
        """The model items of `model` under each owner, in one BatchGetItem."""
        keys = [_item({"pk": tenant_pk(o), "sk": model_sk(model)}) for o in owners]
        found: dict[str, ModelState] = {}
        request: dict[str, Any] = {self._table: {"Keys": keys}}
        for attempt in range(_BATCH_ATTEMPTS):
            if attempt:
                time.sleep(0.025 * 2 ** attempt)   # unprocessed keys mean throttling: back off
            resp = self._ddb.batch_get_item(RequestItems=request)
            for item in resp.get("Responses", {}).get(self._table, []):
                state = _state(item)
                found[state.owner] = state
            request = resp.get("UnprocessedKeys") or {}
            if not request:
                return found
        raise RegistryThrottled(detail=f"registry BatchGetItem left unprocessed keys for {owners}/{model}")

    def _owner_state(self, tenant: str, model: str) -> ModelState | None:
        """The model `tenant` sees under this name: its own, else the shared one."""
        owners = lookup_owners(tenant)
        states = self._read_models(owners, model)
        return next((states[o] for o in owners if o in states), None)

    def _read_version(self, owner: str, model: str, version: str, *,
                      consistent: bool = False) -> ModelVersion:
        resp = self._ddb.get_item(TableName=self._table, ConsistentRead=consistent,
                                  Key=_item({"pk": tenant_pk(owner), "sk": version_sk(model, version)}),
                                  ProjectionExpression="manifest, #st",
                                  ExpressionAttributeNames={"#st": "status"})
        item = resp.get("Item")
        if not item:
            raise ModelNotFound(model, version)
        d = _plain(item)
        return ModelVersion(owner=owner, model=model, version=version,
                            manifest=Manifest.model_validate_json(d["manifest"]), status=d["status"])

    def resolve(self, tenant: str, model: str, version: str | None = None) -> ModelVersion:
        if not is_valid_lookup(model, version):
            raise ModelNotFound(model, version)
        state = self._owner_state(tenant, model)
        if state is None:
            raise ModelNotFound(model, version)
        mv = self._read_version(state.owner, model, select_version(state, version))
        return replace(mv, rollout=rollout_of(state)) if state.rollout else mv

    def get_version(self, owner: str, model: str, version: str) -> ModelVersion:
        if not is_valid_lookup(model, version):
            raise ModelNotFound(model, version)
        return self._read_version(owner, model, version, consistent=True)

    def next_version(self, owner: str, model: str) -> str:
        check_tenant(owner)
        check_model_name(model)
        state = self._read_model(owner, model)
        return str((state.max_int if state else 0) + 1)

    def count_models(self, owner: str) -> int:
        """The model items in `owner`'s own partition (keys only come back; version items are filtered
        out). A check before a write, not a condition of it: concurrent first registrations of new models
        may overshoot the quota by the number in flight."""
        check_tenant(owner)
        return sum(1 for _ in self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :m)",
            FilterExpression="#k = :model", ProjectionExpression="sk",
            ExpressionAttributeNames={"#k": "kind"},
            ExpressionAttributeValues=_item({":pk": tenant_pk(owner), ":m": "M#", ":model": "model"})))

    def count_versions(self, owner: str, model: str) -> int:
        check_tenant(owner)
        check_model_name(model)
        state = self._read_model(owner, model)
        return state.version_count if state else 0

    def _query(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        while True:
            resp = self._ddb.query(TableName=self._table, **kwargs)
            yield from resp.get("Items", [])
            if not resp.get("LastEvaluatedKey"):
                return
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def list_models(self, tenant: str) -> list[ModelSummary]:
        check_tenant(tenant)
        summaries: dict[str, ModelSummary] = {}
        # Shared first, so the tenant's own models overwrite (shadow) shared ones of the same name.
        for owner in reversed(lookup_owners(tenant)):
            states: dict[str, ModelState] = {}
            versions: dict[str, list[tuple[int, str]]] = {}
            for item in self._query(
                    KeyConditionExpression="pk = :pk AND begins_with(sk, :m)",
                    ExpressionAttributeValues=_item({":pk": tenant_pk(owner), ":m": "M#"}),
                    ProjectionExpression="sk, #t, #m, #v, #seq, task, backend, latest, max_int, "
                                         "version_count, aliases, created_at, updated_at",
                    ExpressionAttributeNames={"#t": "tenant", "#m": "model", "#v": "version", "#seq": "seq"}):
                if "#V#" in _py(item["sk"]):
                    d = _plain(item)
                    versions.setdefault(d["model"], []).append((d["seq"], d["version"]))
                else:
                    state = _state(item)
                    states[state.model] = state
            for name, state in states.items():
                summaries[name] = ModelSummary(
                    owner=owner, model=name, versions=tuple(v for _, v in sorted(versions.get(name, []))),
                    aliases=dict(state.aliases), task=state.task, backend=state.backend)
        return [summaries[name] for name in sorted(summaries)]

    def list_versions(self, tenant: str, model: str) -> list[VersionRecord]:
        check_tenant(tenant)
        if not is_valid_lookup(model, None):
            raise ModelNotFound(model)
        state = self._owner_state(tenant, model)
        if state is None:
            raise ModelNotFound(model)
        by_version: dict[str, list[str]] = {}
        for alias, target in sorted(state.aliases.items()):
            by_version.setdefault(target, []).append(alias)
        rows = []
        for item in self._query(
                KeyConditionExpression="pk = :pk AND begins_with(sk, :v)",
                ExpressionAttributeValues=_item({":pk": tenant_pk(state.owner), ":v": version_sk(model, "")}),
                ProjectionExpression="#v, #seq, #st, registered_at, registered_by, task, backend",
                ExpressionAttributeNames={"#v": "version", "#seq": "seq", "#st": "status"}):
            d = _plain(item)
            rows.append((d["seq"], VersionRecord(
                owner=state.owner, model=model, version=d["version"], status=d["status"],
                registered_at=d["registered_at"], registered_by=d["registered_by"], task=d["task"],
                backend=d["backend"], aliases=tuple(by_version.get(d["version"], ())))))
        return [record for _, record in sorted(rows, key=lambda r: r[0])]

    def list_audit(self, tenant: str, limit: int = 50, next_token: str | None = None) -> AuditPage:
        check_tenant(tenant)
        check_page_limit(limit)
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": _item({":pk": audit_pk(tenant)}),
            "ScanIndexForward": False,   # newest first
            "Limit": limit + 1,          # one extra tells whether another page exists
        }
        if next_token is not None:
            kwargs["ExclusiveStartKey"] = _item({"pk": audit_pk(tenant), "sk": decode_page_token(next_token)})
        resp = self._ddb.query(TableName=self._table, **kwargs)
        items = resp.get("Items", [])
        page = items[:limit]
        more = len(items) > limit or (bool(resp.get("LastEvaluatedKey")) and bool(page))
        records = tuple(_audit_record(_plain(i)) for i in page)
        token = encode_page_token(audit_sort_key(records[-1].timestamp, records[-1].id)) if more else None
        return AuditPage(records=records, next_token=token)

    # --- writes --------------------------------------------------------------------------------------

    def _audit_put(self, tenant: str, action: str, actor: str, model: str, version: str | None,
                   details: Mapping[str, Any], now: str) -> dict[str, Any]:
        record_id = str(uuid.uuid4())
        return {"Put": {
            "TableName": self._table,
            "Item": _item({"pk": audit_pk(tenant), "sk": audit_sort_key(now, record_id), "kind": "audit",
                           "id": record_id, "action": action, "actor": actor, "tenant": tenant,
                           "model": model, "version": version, "details": json.dumps(details, sort_keys=True),
                           "timestamp": now}),
            "ConditionExpression": "attribute_not_exists(pk)",
        }}

    def _model_write(self, before: ModelState | None, after: ModelState) -> dict[str, Any]:
        """Create the model item, or replace it only if it is still the one that was read."""
        if before is None:
            return {"Put": {"TableName": self._table, "Item": _model_item(after),
                            "ConditionExpression": "attribute_not_exists(pk)"}}
        return {"Put": {"TableName": self._table, "Item": _model_item(after),
                        "ConditionExpression":
                            "latest = :latest AND version_count = :count AND updated_at = :upd",
                        "ExpressionAttributeValues": _item({":latest": before.latest,
                                                            ":count": before.version_count,
                                                            ":upd": before.updated_at})}}

    def register_version(self, tenant: str, model: str, manifest: Manifest, actor: str,
                         version: str | None = None, aliases: Sequence[str] = ()) -> ModelVersion:
        check_tenant(tenant)
        check_model_name(model)
        aliases = tuple(dict.fromkeys(aliases))
        for attempt in range(1, self._max_attempts + 1):
            before = self._read_model(tenant, model)
            now = iso(self._clock())
            after = plan_registration(before, tenant, model, manifest, version, aliases, now)
            chosen = after.latest
            version_item = _item({
                "pk": tenant_pk(tenant), "sk": version_sk(model, chosen), "kind": "version",
                "tenant": tenant, "model": model, "version": chosen, "seq": after.version_count,
                "manifest": manifest.model_dump_json(), "status": "active", "task": manifest.task,
                "backend": manifest.backend, "registered_at": now, "registered_by": actor})
            try:
                self._ddb.transact_write_items(TransactItems=[
                    {"Put": {"TableName": self._table, "Item": version_item,
                             "ConditionExpression": "attribute_not_exists(pk)"}},
                    self._model_write(before, after),
                    self._audit_put(tenant, ACTION_REGISTER, actor, model, chosen,
                                    registration_details(manifest, aliases), now),
                ])
            except Exception as exc:
                if _too_large(exc):   # a backstop: the service refuses oversized manifests before this
                    raise PayloadTooLarge("the manifest is too large to register",
                                          detail=f"DynamoDB refused the items: {exc}"[:500]) from None
                why = _cancelled(exc)
                if why is None:
                    raise
                if why.failed(1):   # the model item changed since it was read: re-read, re-plan, retry
                    logger.info("registry write raced, retrying",
                                extra={"tenant": tenant, "model": model, "attempt": attempt})
                    continue
                if why.failed(0):
                    raise Conflict(f"version '{chosen}' of model '{model}' already exists") from None
                raise
            logger.info("model version registered",
                        extra={"tenant": tenant, "model": model, "version": chosen, "aliases": list(aliases)})
            return ModelVersion(owner=tenant, model=model, version=chosen, manifest=manifest)
        raise Conflict(f"model '{model}' is being changed concurrently; retry",
                       detail=f"{self._max_attempts} optimistic attempts lost for {tenant}/{model}")

    def set_alias(self, tenant: str, model: str, alias: str, version: str, actor: str) -> AliasChange:
        check_tenant(tenant)
        check_model_name(model)
        check_alias(alias)
        check_version_id(version)
        if alias == version:
            raise BadRequest(f"alias '{alias}' collides with a version name")
        for attempt in range(1, self._max_attempts + 1):
            before = self._read_model(tenant, model)
            if before is None:
                raise ModelNotFound(model)
            previous = before.aliases.get(alias)
            if previous == version:
                return AliasChange(tenant, model, alias, version, previous)
            now = iso(self._clock())
            after = replace(before, aliases={**before.aliases, alias: version}, updated_at=now)
            key = {"pk": tenant_pk(tenant)}
            try:
                self._ddb.transact_write_items(TransactItems=[
                    {"ConditionCheck": {"TableName": self._table,
                                        "Key": _item({**key, "sk": version_sk(model, version)}),
                                        "ConditionExpression": "attribute_exists(pk)"}},
                    {"ConditionCheck": {"TableName": self._table,
                                        "Key": _item({**key, "sk": version_sk(model, alias)}),
                                        "ConditionExpression": "attribute_not_exists(pk)"}},
                    self._model_write(before, after),
                    self._audit_put(tenant, ACTION_SET_ALIAS, actor, model, version,
                                    {"alias": alias, "previous": previous}, now),
                ])
            except Exception as exc:
                why = _cancelled(exc)
                if why is None:
                    raise
                if why.failed(0):
                    raise ModelNotFound(model, version) from None
                if why.failed(1):
                    raise BadRequest(f"alias '{alias}' collides with a version name") from None
                if why.failed(2):
                    logger.info("registry write raced, retrying",
                                extra={"tenant": tenant, "model": model, "attempt": attempt})
                    continue
                raise
            logger.info("alias set", extra={"tenant": tenant, "model": model, "alias": alias,
                                            "version": version, "previous": previous})
            return AliasChange(tenant, model, alias, version, previous)
        raise Conflict(f"model '{model}' is being changed concurrently; retry",
                       detail=f"{self._max_attempts} optimistic attempts lost for {tenant}/{model}")


    def get_rollout(self, owner: str, model: str) -> Any:
        check_tenant(owner)
        check_model_name(model)
        state = self._read_model(owner, model)
        if state is None:
            raise ModelNotFound(model)
        return rollout_of(state)

    def record_refusal(self, tenant: str, action: str, actor: str, model: str, reason: str) -> None:
        check_tenant(tenant)
        put = self._audit_put(tenant, f"{ACTION_REFUSED}_{action}", actor, model, None, {"reason": reason},
                              iso(self._clock()))["Put"]
        self._ddb.put_item(**put)

    def live_rollouts(self) -> list[tuple[str, str]]:
        return [(_py(i["tenant"]), _py(i["model"])) for i in self._query(
            KeyConditionExpression="pk = :pk", ExpressionAttributeValues=_item({":pk": LIVE_ROLLOUTS_PK}),
            ConsistentRead=True)]

    def apply_rollout(self, owner: str, model: str, transition: Any) -> None:
        check_tenant(owner)
        check_model_name(model)
        for attempt in range(1, self._max_attempts + 1):
            before = self._read_model(owner, model)
            now = iso(self._clock())
            after = plan_rollout(before, transition, now)        # Conflict if the rollout moved on
            assert before is not None
            marker = _item({"pk": LIVE_ROLLOUTS_PK, "sk": f"{owner}#{model}"})
            items = [self._model_write(before, after),
                     self._audit_put(owner, f"{ACTION_ROLLOUT}_{transition.action}", transition.actor, model,
                                     transition.after.candidate, rollout_details(transition), now),
                     {"Put": {"TableName": self._table, "Item": {
                         **marker, **_item({"kind": "live_rollout", "tenant": owner, "model": model,
                                           "rollout_id": transition.after.id})}}}
                     if transition.after.live else {"Delete": {"TableName": self._table, "Key": marker}}]
            if transition.action == "start":   # the candidate must exist when the rollout starts
                key = {"pk": tenant_pk(owner), "sk": version_sk(model, transition.after.candidate)}
                items.append({"ConditionCheck": {"TableName": self._table, "Key": _item(key),
                                                 "ConditionExpression": "attribute_exists(pk)"}})
            try:
                self._ddb.transact_write_items(TransactItems=items)
            except Exception as exc:
                why = _cancelled(exc)
                if why is None:
                    raise
                if why.failed(0):          # the model item changed: re-read; plan_rollout decides
                    logger.info("registry write raced, retrying",
                                extra={"tenant": owner, "model": model, "attempt": attempt})
                    continue
                if why.failed(3):
                    raise ModelNotFound(model, transition.after.candidate) from None
                raise
            logger.info("rollout changed", extra={"tenant": owner, "model": model,
                                                  **rollout_details(transition)})
            return
        raise Conflict(f"model '{model}' is being changed concurrently; retry",
                       detail=f"{self._max_attempts} optimistic attempts lost for {owner}/{model}")


def _audit_record(d: Mapping[str, Any]) -> AuditRecord:
    return AuditRecord(tenant=d["tenant"], timestamp=d["timestamp"], id=d["id"], action=d["action"],
                       actor=d["actor"], model=d["model"], version=d.get("version"),
                       details=json.loads(d.get("details") or "{}"))
