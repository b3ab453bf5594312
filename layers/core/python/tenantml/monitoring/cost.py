"""Cost per 1000 inferences: ONE definition of the inference cost record and of its aggregation. Both the
CloudWatch Logs Insights query the CDK app saves (`query_parts`, `insights_query`) and the `tenantml cost`
summary (`summarize`) are derived from it (`DERIVED`, `FILTERS`, `AGGREGATES`, `GROUP_BY`, `SORT`), so the
console and the CLI compute the same figure the same way.

The record. The inference handler is wrapped in `metered`: every inference the service answers (prediction
cache hits included; the service hands over its rows with `note_inference`) is logged once, after the
handler returns, by the Powertools logger:

    {"message": "inference cost", "tenant": "acme", "model": "project-risk", "version": "1", "rows": 2,
     "billed_ms": 4, "memory_mb": 2048, ...the logger's own keys (request id, cold_start, ...)}

tenant, model and version are log fields, never metric dimensions. `billed_ms` is the handler's duration
rounded up to the millisecond, as Lambda bills it (at least 1 ms; init is not included), `memory_mb` the
function's memory (`context.memory_limit_in_mb`), `rows` the request's batch size. A request that fails
(4xx, 5xx) is not costed: the service hands over rows only for an answered inference.

The aggregation, per (tenant, model, version):

    gb_seconds    = billed_ms * memory_mb / 1024000
    cost_usd      = gb_seconds * <price per GB-second> + <price per request>
    cost_per_1000 = cost_usd * 1000
    inferences = count(*), total_rows = sum(rows), total_billed_ms = sum(billed_ms),
    total_gb_seconds = sum(gb_seconds), total_cost_usd = sum(cost_usd),
    cost_per_1000_usd = avg(cost_per_1000)  (= total cost / inferences * 1000)

The prices come from `tenantml.settings.CostSettings` (Lambda's list prices for the architecture; the CDK
app bakes its architecture's into the saved query). The definition and the aggregation are pure: no boto3
(`cost_command` imports it when the CLI runs and hands a CloudWatch Logs client in), no environment.
"""

from __future__ import annotations

import contextvars
import functools
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import argparse

MESSAGE = "inference cost"
GROUP_BY = ("tenant", "model", "version")           # log fields, never metric dimensions
NUMBERS = ("rows", "billed_ms", "memory_mb")        # what one inference cost
QUERY_NAME = "cost-per-1000-inferences"             # saved as tenantml-<stage>/<this>
# FilterLogEvents' pattern for the records (CloudWatch Logs JSON pattern syntax). moto does not evaluate
# JSON patterns and returns every event: `summarize` tells the records from other lines either way.
FILTER_PATTERN = f'{{ $.message = "{MESSAGE}" }}'
ARCHITECTURES = ("x86_64", "arm64")


# --- the price table ------------------------------------------------------------------------------------


class Prices(NamedTuple):
    """What one invocation costs: duration per GB-second, and a flat price per request (USD)."""

    architecture: str
    gb_second_usd: float
    request_usd: float

    @classmethod
    def from_settings(cls, settings: Any, architecture: str | None = None) -> Prices:
        """From a `tenantml.settings.CostSettings`: its architecture's price unless `architecture` says."""
        arch = architecture or settings.cost_architecture
        if arch not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
        return cls(arch, float(getattr(settings, f"cost_gb_second_usd_{arch}")),
                   float(settings.cost_request_usd))


# --- the definition: expressions that render as Logs Insights and evaluate in Python -------------------


class Expr:
    """A node of the definition's arithmetic (plain classes: dataclasses cost the function's cold start)."""

    __slots__ = ()

    def __mul__(self, other: Expr) -> Expr:
        return Op("*", self, other)

    def __truediv__(self, other: Expr) -> Expr:
        return Op("/", self, other)

    def __add__(self, other: Expr) -> Expr:
        return Op("+", self, other)


class Field(Expr):
    """A field of the record, or one defined earlier in DERIVED."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Const(Expr):
    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = value


class Price(Expr):
    """A price of the table (an attribute of `Prices`), written into the query as a number."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Op(Expr):
    __slots__ = ("left", "op", "right")

    def __init__(self, op: str, left: Expr, right: Expr) -> None:
        self.op, self.left, self.right = op, left, right


def _number(value: float) -> str:
    """A plain decimal (Logs Insights takes no exponent notation): 1.66667e-05 -> 0.0000166667."""
    text = format(Decimal(repr(float(value))), "f")
    return text[:-2] if text.endswith(".0") else text


DERIVED: tuple[tuple[str, Expr], ...] = (
    ("gb_seconds", Field("billed_ms") * Field("memory_mb") / Const(1024 * 1000)),
    ("cost_usd", Field("gb_seconds") * Price("gb_second_usd") + Price("request_usd")),
    ("cost_per_1000", Field("cost_usd") * Const(1000)),
)
_DERIVED = dict(DERIVED)


def render(expr: Expr, prices: Prices) -> str:
    """`expr` in Logs Insights syntax; derived fields are inlined (one `fields` command defines them all)."""
    if isinstance(expr, Field):
        return f"({render(_DERIVED[expr.name], prices)})" if expr.name in _DERIVED else expr.name
    if isinstance(expr, Const):
        return _number(expr.value)
    if isinstance(expr, Price):
        return _number(getattr(prices, expr.name))
    assert isinstance(expr, Op)
    sides = [render(side, prices) if not isinstance(side, Op) else f"({render(side, prices)})"
             for side in (expr.left, expr.right)]
    return f"{sides[0]} {expr.op} {sides[1]}"


def evaluate(expr: Expr, values: Mapping[str, float], prices: Prices) -> float:
    if isinstance(expr, Field):
        return float(values[expr.name])
    if isinstance(expr, Const):
        return float(expr.value)
    if isinstance(expr, Price):
        return float(getattr(prices, expr.name))
    assert isinstance(expr, Op)
    left, right = evaluate(expr.left, values, prices), evaluate(expr.right, values, prices)
    return left * right if expr.op == "*" else left / right if expr.op == "/" else left + right


class Aggregate(NamedTuple):
    """One column of the result: a Logs Insights stats function over a field (count(*) without one)."""

    name: str
    func: str                    # count | sum | avg
    field: str | None = None
    heading: str = ""
    fmt: str = "{:.0f}"

    def insights(self) -> str:
        return f"{self.func}({self.field or '*'}) as {self.name}"


AGGREGATES: tuple[Aggregate, ...] = (
    Aggregate("inferences", "count", None, "inferences"),
    Aggregate("total_rows", "sum", "rows", "rows"),
    Aggregate("total_billed_ms", "sum", "billed_ms", "billed ms"),
    Aggregate("total_gb_seconds", "sum", "gb_seconds", "GB-seconds", "{:.6f}"),
    Aggregate("total_cost_usd", "sum", "cost_usd", "cost USD", "{:.8f}"),
    Aggregate("cost_per_1000_usd", "avg", "cost_per_1000", "USD per 1000", "{:.6f}"),
)
SORT = ("total_cost_usd", "desc")
# The records: the message, and every field present (the Python side also wants the right types).
FILTERS: tuple[str, ...] = (
    f'message = "{MESSAGE}"',
    " and ".join(f"ispresent({name})" for name in (*GROUP_BY, *NUMBERS)),
)


def query_parts(prices: Prices) -> dict[str, Any]:
    """The saved query as `aws_logs.QueryString` properties (fields, filter_statements, stats, sort)."""
    return {
        "fields": [f"{render(expr, prices)} as {name}" for name, expr in DERIVED],
        "filter_statements": list(FILTERS),
        "stats": f"{', '.join(a.insights() for a in AGGREGATES)} by {', '.join(GROUP_BY)}",
        "sort": f"{SORT[0]} {SORT[1]}",
    }


def insights_query(prices: Prices) -> str:
    """The query text, laid out as `aws_logs.QueryString` writes it (one command per line)."""
    parts = query_parts(prices)
    lines = [f"fields {', '.join(parts['fields'])}", *(f"filter {f}" for f in parts["filter_statements"]),
             f"stats {parts['stats']}", f"sort {parts['sort']}"]
    return "\n| ".join(lines)


# --- the CLI's side: records from log events, aggregated as the query does ----------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
        and value >= 0


def parse_record(message: str) -> dict[str, Any] | None | bool:
    """A cost record from a log line: the record, False when the line is not one (another log line, an
    EMF blob, plain text), None when it says it is one but lacks a field or has a wrong type."""
    try:
        data = json.loads(message)
    except ValueError:
        return False
    if not isinstance(data, dict) or data.get("message") != MESSAGE:
        return False
    if not all(isinstance(data.get(k), str) and data[k] for k in GROUP_BY) or \
            not all(_is_number(data.get(k)) for k in NUMBERS):
        return None
    return data


class GroupCost:
    """One (tenant, model, version): aggregate name -> value."""

    __slots__ = ("model", "tenant", "values", "version")

    def __init__(self, tenant: str, model: str, version: str, values: dict[str, float]) -> None:
        self.tenant, self.model, self.version, self.values = tenant, model, version, values

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    def as_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "model": self.model, "version": self.version, **self.values}


class CostSummary:
    """The groups (most expensive first) and what was read: `records` aggregated; ignored: `malformed`
    (says "inference cost" but lacks a field or has a wrong type), `foreign` (other log lines), `outside`
    (records outside the period)."""

    def __init__(self, prices: Prices, start_ms: int | None, end_ms: int | None, groups: list[GroupCost],
                 records: int = 0, malformed: int = 0, foreign: int = 0, outside: int = 0) -> None:
        self.prices, self.start_ms, self.end_ms, self.groups = prices, start_ms, end_ms, groups
        self.records, self.malformed, self.foreign, self.outside = records, malformed, foreign, outside

    def only(self, tenant: str | None = None, model: str | None = None) -> CostSummary:
        keep = [g for g in self.groups if (tenant is None or g.tenant == tenant)
                and (model is None or g.model == model)]
        records = sum(int(g["inferences"]) for g in keep)
        return CostSummary(self.prices, self.start_ms, self.end_ms, keep, records, self.malformed,
                           self.foreign, self.outside)

    def as_dict(self) -> dict[str, Any]:
        return {"prices": self.prices._asdict(), "start": _iso(self.start_ms), "end": _iso(self.end_ms),
                "records": self.records, "ignored": {"malformed": self.malformed, "other_lines": self.foreign,
                                                     "outside_period": self.outside},
                "groups": [g.as_dict() for g in self.groups]}


def summarize(events: Iterable[Mapping[str, Any]], prices: Prices, start_ms: int | None = None,
              end_ms: int | None = None) -> CostSummary:
    """Aggregate log events ({"timestamp": epoch ms, "message": line}, as FilterLogEvents returns them)
    in [start_ms, end_ms) exactly as the saved query does."""
    states: dict[tuple[str, ...], dict[str, list[float]]] = {}
    summary = CostSummary(prices, start_ms, end_ms, [])
    for event in events:
        record = parse_record(str(event.get("message", "")))
        if record is False:
            summary.foreign += 1
            continue
        if record is None:
            summary.malformed += 1
            continue
        assert isinstance(record, dict)
        ts = int(event.get("timestamp", 0))
        if (start_ms is not None and ts < start_ms) or (end_ms is not None and ts >= end_ms):
            summary.outside += 1
            continue
        summary.records += 1
        values = {k: float(record[k]) for k in NUMBERS}
        for name, expr in DERIVED:
            values[name] = evaluate(expr, values, prices)
        state = states.setdefault(tuple(record[k] for k in GROUP_BY),
                                  {a.name: [0.0, 0.0] for a in AGGREGATES})
        for a in AGGREGATES:
            acc = state[a.name]          # [sum, count]
            acc[0] += 1.0 if a.field is None else values[a.field]
            acc[1] += 1.0
    for key, state in states.items():
        out = {a.name: (acc[0] / acc[1] if a.func == "avg" else acc[0]) for a in AGGREGATES
               for acc in (state[a.name],)}
        summary.groups.append(GroupCost(*key, values=out))
    name, order = SORT
    summary.groups.sort(key=lambda g: (-g[name] if order == "desc" else g[name],
                                       g.tenant, g.model, g.version))
    return summary


def read_events(logs: Any, log_group: str, start_ms: int, end_ms: int,
                pattern: str = FILTER_PATTERN) -> Iterator[dict[str, Any]]:
    """The log group's cost records (events matching `pattern`) in [start_ms, end_ms) with
    FilterLogEvents (every page); `logs` is a CloudWatch Logs client."""
    kwargs: dict[str, Any] = {"logGroupName": log_group, "startTime": start_ms, "endTime": end_ms - 1,
                              "filterPattern": pattern}
    while True:
        page = logs.filter_log_events(**kwargs)
        yield from page.get("events", [])
        token = page.get("nextToken")
        if not token or token == kwargs.get("nextToken"):
            return
        kwargs["nextToken"] = token


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def format_summary(summary: CostSummary, log_group: str = "") -> str:
    p = summary.prices
    lines = [f"cost per 1000 inferences, {_iso(summary.start_ms)} to {_iso(summary.end_ms)}"
             + (f", log group {log_group}" if log_group else ""),
             f"prices ({p.architecture}): {_number(p.gb_second_usd)} USD per GB-second, "
             f"{_number(p.request_usd)} USD per request", ""]
    headings = [*GROUP_BY, *(a.heading for a in AGGREGATES)]
    rows = [[g.tenant, g.model, g.version, *(a.fmt.format(g[a.name]) for a in AGGREGATES)]
            for g in summary.groups]
    widths = [max(len(str(x)) for x in col) for col in zip(headings, *rows, strict=False)]
    n = len(GROUP_BY)
    for row in (headings, *rows):
        lines.append("  ".join(str(x).ljust(w) if i < n else str(x).rjust(w)
                               for i, (x, w) in enumerate(zip(row, widths, strict=True))).rstrip())
    if not rows:
        lines.append("(no inferences in this period)")
    lines += ["", f"{summary.records} cost records; ignored: {summary.malformed} malformed, "
                  f"{summary.foreign} other log lines, {summary.outside} outside the period"]
    return "\n".join(lines)


# --- the function's side: measuring each invocation -------------------------------------------------


class _Meter:
    __slots__ = ("model", "rows", "version")

    def __init__(self) -> None:
        self.model: str | None = None
        self.version: str | None = None
        self.rows = 0


_METER: contextvars.ContextVar[_Meter | None] = contextvars.ContextVar("tenantml_cost_meter", default=None)


def note_inference(model: str, version: str, rows: int) -> None:
    """The service answered an inference (a cache hit too) in the invocation `metered` is measuring; a
    no-op outside one. One inference per invocation (an API Gateway request); a second one adds its rows."""
    meter = _METER.get()
    if meter is not None:
        meter.model, meter.version, meter.rows = model, version, meter.rows + int(rows)


def billed_ms(seconds: float) -> int:
    """Lambda's billed duration: rounded up to the millisecond, at least 1 ms."""
    return max(1, math.ceil(round(seconds * 1000, 6)))


def cost_record(tenant: str, model: str, version: str, rows: int, billed: int,
                memory_mb: int) -> dict[str, Any]:
    """The fields of a cost record (logged with `MESSAGE`)."""
    return {"tenant": tenant, "model": model, "version": version, "rows": int(rows), "billed_ms": int(billed),
            "memory_mb": int(memory_mb)}


def _tenant_of(event: Any) -> str:
    from tenantml.api.context import caller_from_event  # noqa: PLC0415 - the CLI never needs it

    return caller_from_event(event).tenant


def metered(logger: Any, *, tenant_of: Callable[[Any], str] = _tenant_of,
            clock: Callable[[], float] = time.perf_counter) -> Callable:
    """Decorator for the inference handler (put it outermost, to measure what Lambda bills): times each
    invocation and, when the service noted an inference, logs its cost record with `logger` (a Powertools
    Logger: the record also carries the logger's keys). Never fails or changes the response; a handler that
    raises is not costed."""
    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def wrapper(event: Any, context: Any, *args: Any, **kwargs: Any) -> Any:
            meter = _Meter()
            token = _METER.set(meter)
            started = clock()
            try:
                result = handler(event, context, *args, **kwargs)
            finally:
                elapsed = clock() - started
                _METER.reset(token)
            if meter.model is not None:
                try:
                    record = cost_record(tenant_of(event), meter.model, meter.version or "", meter.rows,
                                         billed_ms(elapsed), int(context.memory_limit_in_mb))
                    logger.info(MESSAGE, extra=record)
                except Exception as exc:  # noqa: BLE001 - a cost record never fails an inference
                    logger.warning("cost record not written", extra={"error": type(exc).__name__})
            return result
        return wrapper
    return decorate


# --- GPU inferences ---------------------------------------------------------------------------------------
# The GPU endpoint bills instance time, not requests. Each completed async request logs (gpu_result) the
# compute time the container apportioned to it within its batch; every instance of the endpoint logs a
# heartbeat per interval while it serves (gpu_endpoint.server, in /aws/sagemaker/Endpoints/<endpoint>).
# A tenant's share of the instance time over a period is its share of the compute time (`gpu_summary`):
# idle time (scale-in cooldown, a cold start) is shared the same way, since someone's traffic kept the
# instance up. Cost per 1000 inferences = the share / the group's completed requests * 1000.

GPU_MESSAGE = "gpu inference cost"
GPU_FILTER_PATTERN = f'{{ $.message = "{GPU_MESSAGE}" }}'
HEARTBEAT_EVENT = "instance_heartbeat"           # gpu_endpoint.server.HEARTBEAT
HEARTBEAT_FILTER_PATTERN = f'{{ $.event = "{HEARTBEAT_EVENT}" }}'


def gpu_cost_record(logger: Any) -> Callable[[Any, float | None], None]:
    """gpu_result's hook: log one record per completed request (tenant, model, version, rows, compute_ms)."""
    def record(request: Any, compute_ms: float | None) -> None:
        logger.info(GPU_MESSAGE, extra={"tenant": request.tenant, "model": request.model,
                                        "version": request.version, "rows": int(request.rows),
                                        "compute_ms": float(compute_ms or 0.0)})
    return record


def apportion(compute_ms: Mapping[tuple[str, str, str], float], instance_seconds: float,
              price_per_hour: float) -> dict[tuple[str, str, str], float]:
    """Each (tenant, model, version)'s USD share of `instance_seconds` of GPU time at `price_per_hour`,
    by its share of the compute time."""
    total = sum(compute_ms.values())
    cost = instance_seconds / 3600 * price_per_hour
    if total <= 0:
        return {k: 0.0 for k in compute_ms}
    return {k: cost * v / total for k, v in compute_ms.items()}


def _json_line(message: str) -> dict[str, Any] | None:
    start = message.find("{")
    if start < 0:
        return None
    try:
        value = json.loads(message[start:])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class GpuCost(NamedTuple):
    instance_seconds: float
    price_per_hour: float
    groups: list[dict[str, Any]]        # tenant, model, version, inferences, rows, compute_ms, cost_usd, ...

    @property
    def cost_usd(self) -> float:
        return self.instance_seconds / 3600 * self.price_per_hour


def gpu_summary(records: Iterable[Mapping[str, Any]], heartbeats: Iterable[Mapping[str, Any]],
                price_per_hour: float, start_ms: int | None = None, end_ms: int | None = None) -> GpuCost:
    """The GPU endpoint's instance time in [start_ms, end_ms) apportioned to (tenant, model, version) by
    compute time. `records`: gpu_result's log events; `heartbeats`: the endpoint's."""
    def inside(event: Mapping[str, Any]) -> bool:
        ts = int(event.get("timestamp", 0))
        return (start_ms is None or ts >= start_ms) and (end_ms is None or ts < end_ms)

    seconds = 0.0
    for event in heartbeats:
        line = _json_line(str(event.get("message", "")))
        if line and line.get("event") == HEARTBEAT_EVENT and inside(event) \
                and _is_number(line.get("interval_s")):
            seconds += float(line["interval_s"])
    totals: dict[tuple[str, str, str], list[float]] = {}
    for event in records:
        line = _json_line(str(event.get("message", "")))
        if not line or line.get("message") != GPU_MESSAGE or not inside(event):
            continue
        if not all(isinstance(line.get(k), str) for k in GROUP_BY) or \
                not all(_is_number(line.get(k)) for k in ("rows", "compute_ms")):
            continue
        acc = totals.setdefault(tuple(line[k] for k in GROUP_BY), [0.0, 0.0, 0.0])   # type: ignore[arg-type]
        acc[0] += 1
        acc[1] += float(line["rows"])
        acc[2] += float(line["compute_ms"])
    shares = apportion({k: v[2] for k, v in totals.items()}, seconds, price_per_hour)
    total_ms = sum(v[2] for v in totals.values())
    groups = [{"tenant": k[0], "model": k[1], "version": k[2], "inferences": int(v[0]), "rows": int(v[1]),
               "compute_ms": round(v[2], 3), "share": (v[2] / total_ms) if total_ms else 0.0,
               "cost_usd": shares[k], "cost_per_1000_usd": shares[k] / v[0] * 1000 if v[0] else 0.0}
              for k, v in totals.items()]
    groups.sort(key=lambda g: (-g["cost_usd"], g["tenant"], g["model"], g["version"]))
    return GpuCost(seconds, price_per_hour, groups)


def format_gpu(cost: GpuCost, log_groups: str = "") -> str:
    lines = [f"GPU endpoint: {cost.instance_seconds:.0f} instance-seconds at "
             f"{_number(cost.price_per_hour)} USD per instance-hour = {cost.cost_usd:.6f} USD, "
             "apportioned by compute time"
             + (f" ({log_groups})" if log_groups else ""), ""]
    headings = [*GROUP_BY, "inferences", "rows", "compute ms", "share", "cost USD", "per 1000 USD"]
    rows = [[g["tenant"], g["model"], g["version"], str(g["inferences"]), str(g["rows"]),
             f"{g['compute_ms']:.1f}", f"{g['share']:.1%}", f"{g['cost_usd']:.6f}",
             f"{g['cost_per_1000_usd']:.6f}"] for g in cost.groups]
    widths = [max(len(str(x)) for x in col) for col in zip(headings, *rows, strict=False)]
    for row in (headings, *rows):
        lines.append("  ".join(str(x).ljust(w) if i < len(GROUP_BY) else str(x).rjust(w)
                               for i, (x, w) in enumerate(zip(row, widths, strict=True))).rstrip())
    if not rows:
        lines.append("(no GPU inferences in this period)")
    return "\n".join(lines)


# --- `tenantml cost` -------------------------------------------------------------------------------------


def period(since: str | None, until: str | None, hours: float,
           now: datetime | None = None) -> tuple[int, int]:
    """[start, end) in epoch ms: --since/--until (ISO 8601, UTC unless they say), else the last `hours`."""
    def parse(text: str) -> datetime:
        value = datetime.fromisoformat(text)
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    end = parse(until) if until else (now or datetime.now(UTC))
    start = parse(since) if since else end - timedelta(hours=hours)
    if start >= end:
        raise ValueError("the period is empty: --since must be before --until")
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def cost_command(args: argparse.Namespace) -> int:
    """`tenantml cost`: against the log group in --log-group / TENANTML_COST_LOG_GROUP (a deployed
    platform, with the usual AWS credentials), else the running local platform's inference log group."""
    import contextlib  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    from tenantml import resources  # noqa: PLC0415
    from tenantml.aws import client  # noqa: PLC0415
    from tenantml.local.state import START_HINT, NoPlatform, platform_target  # noqa: PLC0415
    from tenantml.settings import get_aws_settings, get_cost_settings, variable  # noqa: PLC0415

    try:
        start, end = period(args.since, args.until, args.hours)
        settings = get_cost_settings()
        prices = Prices.from_settings(settings, args.architecture)
    except ValueError as exc:
        print(f"tenantml cost: {exc}", file=sys.stderr)
        return 2
    group = args.log_group or settings.cost_log_group
    target = contextlib.nullcontext() if group else \
        platform_target("inference", needs=variable("cost_log_group"))
    gpu_groups = args.gpu_log_groups or (
        [settings.cost_gpu_result_log_group, settings.cost_gpu_endpoint_log_group]
        if settings.cost_gpu_result_log_group and settings.cost_gpu_endpoint_log_group else None)
    gpu: GpuCost | None = None
    try:
        with target:
            names = resources.LocalNames.make()
            group = group or names.log_group("inference")
            logs = client("logs", get_aws_settings())
            summary = summarize(read_events(logs, group, start, end), prices, start, end)
            if gpu_groups is None and not (args.log_group or settings.cost_log_group):
                from tenantml.local.platform import GPU_ENDPOINT  # noqa: PLC0415

                gpu_groups = [names.log_group("gpu_result"), f"/aws/sagemaker/Endpoints/{GPU_ENDPOINT}"]
            if gpu_groups is not None:
                gpu = gpu_summary(_events_or_none(logs, gpu_groups[0], start, end, GPU_FILTER_PATTERN),
                                  _events_or_none(logs, gpu_groups[1], start, end, HEARTBEAT_FILTER_PATTERN),
                                  settings.cost_gpu_instance_usd_per_hour, start, end)
    except NoPlatform:
        print(f"tenantml cost: no log group to read: {START_HINT}, or pass --log-group (or set "
              "TENANTML_COST_LOG_GROUP) with a deployed stack's output InferenceLogGroupName",
              file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError) as exc:
        print(f"tenantml cost: cannot read log group {group}: {exc}", file=sys.stderr)
        return 1
    summary = summary.only(args.tenant, args.model)
    if gpu is not None:
        gpu = gpu._replace(groups=[g for g in gpu.groups
                                   if (args.tenant is None or g["tenant"] == args.tenant)
                                   and (args.model is None or g["model"] == args.model)])
    if args.json:
        out = {"log_group": group, **summary.as_dict()}
        if gpu is not None:
            out["gpu"] = {"log_groups": list(gpu_groups or []), "instance_seconds": gpu.instance_seconds,
                          "price_per_hour": gpu.price_per_hour, "cost_usd": gpu.cost_usd,
                          "groups": gpu.groups}
        print(json.dumps(out, indent=2))
    else:
        print(format_summary(summary, group))
        if gpu is not None and (gpu.groups or gpu.instance_seconds):
            print("\n" + format_gpu(gpu, ", ".join(gpu_groups or [])))
    return 0


def _events_or_none(logs: Any, group: str, start: int, end: int, pattern: str) -> Iterator[dict[str, Any]]:
    """A log group's events; none when the group does not exist (no GPU endpoint deployed or started)."""
    try:
        yield from read_events(logs, group, start, end, pattern)
    except logs.exceptions.ResourceNotFoundException:
        return

