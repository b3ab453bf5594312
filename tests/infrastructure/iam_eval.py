"""A small evaluator of identity-based IAM policies, for the tenant data roles' synthesized policies.

moto enforces IAM only partly: it does not substitute policy variables (`${aws:PrincipalTag/tenant}`) and
does not know condition keys such as `dynamodb:LeadingKeys`. This evaluator does both, for the subset of
IAM the platform's roles use, following the IAM policy evaluation logic (an explicit Deny wins; otherwise
an Allow is needed; otherwise the implicit deny):

- Action (case-insensitive) and Resource (case-sensitive) with `*` and `?` wildcards; a statement with
  NotAction, NotResource or Principal is refused (not used by these roles).
- Policy variables `${aws:PrincipalTag/<key>}` in Resource and in condition values, filled from the
  session's tags; a variable without a value makes that element match nothing (as IAM does).
- Condition operators StringEquals, StringNotEquals, StringLike, StringNotLike and Null; the set
  qualifiers ForAllValues: (true for an absent or empty key, as IAM documents) and ForAnyValue: (false for
  an absent key) over multi-valued keys such as dynamodb:LeadingKeys; conditions of a statement AND
  together, the values of one key OR together.
- Anything else (another operator, IfExists, a multi-valued key without a qualifier) raises: the
  evaluator fails closed instead of guessing.

Not covered: resource-based policies, permission boundaries, SCPs, session policies, ARN, numeric, date,
IP and Bool operators.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

_VARIABLE = re.compile(r"\$\{aws:PrincipalTag/([A-Za-z0-9_.:/=+@-]+)\}")
_OPERATORS = {"StringEquals", "StringNotEquals", "StringLike", "StringNotLike", "Null"}


class Unsupported(ValueError):
    """A policy element this evaluator does not implement."""


@dataclass(frozen=True)
class Request:
    """One authorization: the action, the resource ARN, and the request's condition keys (a list for a
    multi-valued key such as dynamodb:LeadingKeys)."""

    action: str
    resource: str
    context: Mapping[str, str | Sequence[str]] = field(default_factory=dict)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _substitute(text: str, tags: Mapping[str, str]) -> str | None:
    """`text` with its policy variables filled in; None if one has no value."""
    missing = False

    def fill(m: re.Match[str]) -> str:
        nonlocal missing
        if m.group(1) not in tags:
            missing = True
            return ""
        return tags[m.group(1)]

    out = _VARIABLE.sub(fill, text)
    return None if missing else out


def _pattern(text: str) -> str:
    """IAM wildcards as fnmatch's: `*` and `?` only (brackets are literal in IAM)."""
    return text.replace("[", "[[]")


def _matches(patterns: list[str], value: str, tags: Mapping[str, str], *, case: bool) -> bool:
    for p in patterns:
        filled = _substitute(p, tags)
        if filled is None:
            continue
        if case and fnmatchcase(value, _pattern(filled)):
            return True
        if not case and fnmatchcase(value.lower(), _pattern(filled.lower())):
            return True
    return False


def _one(operator: str, actual: str, expected: list[str]) -> bool:
    if operator == "StringEquals":
        return actual in expected
    if operator == "StringNotEquals":
        return actual not in expected
    if operator == "StringLike":
        return any(fnmatchcase(actual, _pattern(e)) for e in expected)
    if operator == "StringNotLike":
        return not any(fnmatchcase(actual, _pattern(e)) for e in expected)
    raise Unsupported(operator)


def _condition(qualified: str, key: str, values: Any, request: Request, tags: Mapping[str, str]) -> bool:
    qualifier, _, operator = qualified.rpartition(":")
    if operator not in _OPERATORS or qualifier not in ("", "ForAllValues", "ForAnyValue"):
        raise Unsupported(qualified)
    expected = [v for v in (_substitute(str(x), tags) for x in _as_list(values)) if v is not None]
    actual = request.context.get(key)
    if operator == "Null":
        if qualifier:
            raise Unsupported(qualified)
        absent = actual is None or (isinstance(actual, list | tuple) and not actual)
        return all((e.lower() == "true") == absent for e in expected)
    if qualifier == "ForAllValues":
        return all(_one(operator, a, expected) for a in _as_list(actual or []))
    if qualifier == "ForAnyValue":
        return any(_one(operator, a, expected) for a in _as_list(actual or []))
    if isinstance(actual, list | tuple):
        raise Unsupported(f"{qualified} on multi-valued key {key} without a set qualifier")
    return actual is not None and _one(operator, actual, expected)


def _applies(statement: Mapping[str, Any], request: Request, tags: Mapping[str, str]) -> bool:
    for element in ("NotAction", "NotResource", "Principal", "NotPrincipal"):
        if element in statement:
            raise Unsupported(element)
    if not _matches(_as_list(statement["Action"]), request.action, tags, case=False):
        return False
    if not _matches(_as_list(statement["Resource"]), request.resource, tags, case=True):
        return False
    for qualified, keys in (statement.get("Condition") or {}).items():
        for key, values in keys.items():
            if not _condition(qualified, key, values, request, tags):
                return False
    return True


def allowed(statements: Sequence[Mapping[str, Any]], request: Request, tags: Mapping[str, str]) -> bool:
    """Whether an identity with these policy statements and session tags may make `request`."""
    applicable = [s for s in statements if _applies(s, request, tags)]
    if any(s["Effect"] == "Deny" for s in applicable):
        return False
    return any(s["Effect"] == "Allow" for s in applicable)


# --- DynamoDB requests as IAM sees them --------------------------------------------------------------

def _pk(key: Mapping[str, Any], name: str) -> str:
    (value,) = key[name].values()     # {"S": "T#acme"}
    return str(value)


def dynamodb_requests(operation: str, params: Mapping[str, Any], table_arn: Mapping[str, str],
                      partition_key: str = "pk") -> list[Request]:
    """The authorizations one DynamoDB API call needs, with dynamodb:LeadingKeys: the partition key
    values of the items it names (GetItem/PutItem/UpdateItem/DeleteItem: one; BatchGetItem: each
    table's keys; Query: the value its key condition binds the partition key to; Scan: none)."""
    action = f"dynamodb:{operation}"
    if operation == "BatchGetItem":
        return [Request(action, table_arn[t], {"dynamodb:LeadingKeys": [_pk(k, partition_key)
                                                                        for k in req["Keys"]]})
                for t, req in params["RequestItems"].items()]
    arn = table_arn[params["TableName"]]
    if operation in ("GetItem", "UpdateItem", "DeleteItem"):
        return [Request(action, arn, {"dynamodb:LeadingKeys": [_pk(params["Key"], partition_key)]})]
    if operation == "PutItem":
        return [Request(action, arn, {"dynamodb:LeadingKeys": [_pk(params["Item"], partition_key)]})]
    if operation == "Query":
        names = {**(params.get("ExpressionAttributeNames") or {}), partition_key: partition_key}
        alias = "|".join(re.escape(n) for n, real in names.items() if real == partition_key)
        m = re.search(rf"(?:^|\s|\()(?:{alias})\s*=\s*(:\w+)", params["KeyConditionExpression"])
        if m is None:
            raise Unsupported(f"no partition key condition in {params['KeyConditionExpression']!r}")
        (value,) = params["ExpressionAttributeValues"][m.group(1)].values()
        return [Request(action, arn, {"dynamodb:LeadingKeys": [str(value)]})]
    return [Request(action, arn)]
