"""Cost per 1000 inferences (tenantml.monitoring.cost): the aggregation against figures computed by hand,
the period, the price table, lines that are not cost records, the query text generated from the same
definition, and the handler middleware that writes the records."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from tenantml.monitoring import cost
from tenantml.settings import CostSettings

X86 = cost.Prices.from_settings(CostSettings())          # 0.0000166667 per GB-s, 0.0000002 per request
T0 = 1_790_000_000_000                                   # epoch ms


def line(tenant: str, model: str, version: str, rows: int, billed: int, memory: int, **extra) -> str:
    return json.dumps({"level": "INFO", "message": "inference cost", "service": "tenantml",
                       "function_request_id": "r", **cost.cost_record(tenant, model, version, rows, billed,
                                                                       memory), **extra})


def events(*lines: str, start: int = T0, step: int = 1000) -> list[dict]:
    return [{"timestamp": start + i * step, "message": text} for i, text in enumerate(lines)]


RECORDS = events(
    line("acme", "project-risk", "1", 2, 10, 2048),
    line("globex", "minilm-embed", "1", 1, 5, 2048),
    line("acme", "project-risk", "1", 1, 30, 2048),
    line("acme", "project-risk", "2", 4, 100, 1024),
    line("globex", "minilm-embed", "1", 1, 5, 2048),
    line("globex", "minilm-embed", "1", 1, 5, 2048),
)


def by_key(summary: cost.CostSummary) -> dict[tuple[str, str, str], cost.GroupCost]:
    return {(g.tenant, g.model, g.version): g for g in summary.groups}


def test_cost_per_1000_inferences_per_tenant_model_and_version_by_hand():
    summary = cost.summarize(RECORDS, X86)
    groups = by_key(summary)
    assert summary.records == 6 and (summary.malformed, summary.foreign, summary.outside) == (0, 0, 0)

    # acme/project-risk/1: 10 ms and 30 ms at 2 GB -> 0.02 + 0.06 = 0.08 GB-s
    g = groups[("acme", "project-risk", "1")]
    assert (g["inferences"], g["total_rows"], g["total_billed_ms"]) == (2, 3, 40)
    assert g["total_gb_seconds"] == pytest.approx(0.08)
    assert g["total_cost_usd"] == pytest.approx(0.08 * 0.0000166667 + 2 * 0.0000002)    # 1.733336e-6
    assert g["cost_per_1000_usd"] == pytest.approx(0.000866668)

    # acme/project-risk/2: 100 ms at 1 GB -> 0.1 GB-s
    g = groups[("acme", "project-risk", "2")]
    assert (g["inferences"], g["total_rows"]) == (1, 4)
    assert g["total_gb_seconds"] == pytest.approx(0.1)
    assert g["cost_per_1000_usd"] == pytest.approx((0.1 * 0.0000166667 + 0.0000002) * 1000)   # 0.00186667

    # globex/minilm-embed/1: 3 x 5 ms at 2 GB -> 0.03 GB-s
    g = groups[("globex", "minilm-embed", "1")]
    assert (g["inferences"], g["total_rows"], g["total_billed_ms"]) == (3, 3, 15)
    assert g["total_cost_usd"] == pytest.approx(1.100001e-6)
    assert g["cost_per_1000_usd"] == pytest.approx(1.100001e-6 / 3 * 1000)          # 0.000366667

    # most expensive first, like the query's `sort total_cost_usd desc`
    assert [(g.tenant, g.model, g.version) for g in summary.groups] == [
        ("acme", "project-risk", "2"), ("acme", "project-risk", "1"), ("globex", "minilm-embed", "1")]


def test_the_period_is_start_inclusive_end_exclusive_and_the_rest_is_counted():
    summary = cost.summarize(RECORDS, X86, start_ms=T0 + 1000, end_ms=T0 + 4000)   # events 1, 2, 3
    groups = by_key(summary)
    assert summary.records == 3 and summary.outside == 3
    assert groups[("globex", "minilm-embed", "1")]["inferences"] == 1
    assert groups[("acme", "project-risk", "1")]["total_billed_ms"] == 30
    assert groups[("acme", "project-risk", "2")]["total_rows"] == 4
    assert cost.summarize(RECORDS, X86, start_ms=T0 + 10_000).groups == []


def test_period_from_the_command_line():
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    start, end = cost.period(None, None, 2, now)
    assert (end - start, end) == (2 * 3600 * 1000, int(now.timestamp() * 1000))
    start, end = cost.period("2026-11-30T10:00", "2026-11-30T11:30:00+00:00", 24)
    assert end - start == 90 * 60 * 1000
    assert start == int(datetime(2026, 11, 30, 10, tzinfo=UTC).timestamp() * 1000)   # naive means UTC
    with pytest.raises(ValueError, match="empty"):
        cost.period("2026-11-30T11:00", "2026-11-30T10:00", 1)


def test_the_price_table_defaults_are_the_us_east_1_list_prices_and_settings_override_them():
    assert (X86.architecture, X86.gb_second_usd, X86.request_usd) == ("x86_64", 0.0000166667, 0.0000002)
    arm = cost.Prices.from_settings(CostSettings(), "arm64")
    assert (arm.gb_second_usd, arm.request_usd) == (0.0000133334, 0.0000002)
    assert cost.Prices.from_settings(CostSettings.from_env({"TENANTML_COST_ARCHITECTURE": "arm64"})) == arm
    custom = CostSettings.from_env({"TENANTML_COST_GB_SECOND_USD_X86_64": "0.00001",
                                    "TENANTML_COST_REQUEST_USD": "0"})
    prices = cost.Prices.from_settings(custom)
    assert (prices.gb_second_usd, prices.request_usd) == (0.00001, 0.0)
    g = by_key(cost.summarize(RECORDS, prices))[("acme", "project-risk", "2")]
    assert g["total_cost_usd"] == pytest.approx(0.1 * 0.00001)
    arm_group = by_key(cost.summarize(RECORDS, arm))[("acme", "project-risk", "2")]
    assert arm_group["total_cost_usd"] == pytest.approx(0.1 * 0.0000133334 + 0.0000002)
    with pytest.raises(ValueError):
        CostSettings.from_env({"TENANTML_COST_ARCHITECTURE": "mips"})
    with pytest.raises(ValueError):
        CostSettings.from_env({"TENANTML_COST_REQUEST_USD": "-1"})
    with pytest.raises(ValueError, match="architecture"):
        cost.Prices.from_settings(CostSettings(), "sparc")


def test_malformed_and_foreign_lines_are_ignored_and_counted():
    good = line("acme", "project-risk", "1", 2, 10, 2048)
    record = json.loads(good)
    malformed = [
        json.dumps({k: v for k, v in record.items() if k != "billed_ms"}),       # a field missing
        json.dumps({**record, "rows": "2"}),                                        # a string number
        json.dumps({**record, "memory_mb": True}),                                  # a bool
        json.dumps({**record, "billed_ms": -3}),                                    # negative
        json.dumps({**record, "tenant": ""}),                                       # empty key
        json.dumps({**record, "version": 1}),                                       # a number as version
    ]
    foreign = [
        "START RequestId: 8f5a Version: $LATEST",
        "REPORT RequestId: 8f5a\tDuration: 3.10 ms\tBilled Duration: 4 ms\tMemory Size: 2048 MB",
        json.dumps({"level": "INFO", "message": "model loaded", "tenant": "acme", "rows": 2}),
        '{"_aws":{"CloudWatchMetrics":[]},"Rows":[2.0]}',
        "[1, 2, 3]",
        "{not json",
        "",
    ]
    summary = cost.summarize(events(good, *malformed, *foreign), X86)
    assert (summary.records, summary.malformed, summary.foreign) == (1, len(malformed), len(foreign))
    (g,) = summary.groups
    assert (g["inferences"], g["total_rows"], g["total_billed_ms"]) == (1, 2, 10)
    text = cost.format_summary(summary, "/aws/lambda/x")
    assert f"ignored: {len(malformed)} malformed, {len(foreign)} other log lines, 0 outside" in text


def test_only_filters_groups_and_recounts_records():
    summary = cost.summarize(RECORDS, X86).only(tenant="acme")
    assert {g.tenant for g in summary.groups} == {"acme"} and summary.records == 3
    assert [g.version for g in cost.summarize(RECORDS, X86).only(model="minilm-embed").groups] == ["1"]


def test_the_insights_query_is_generated_from_the_definition():
    query = cost.insights_query(X86)
    lines = query.split("\n| ")
    assert [x.split(" ", 1)[0] for x in lines] == ["fields", "filter", "filter", "stats", "sort"]
    assert lines[1] == 'filter message = "inference cost"'
    assert lines[2] == "filter " + " and ".join(
        f"ispresent({f})" for f in ("tenant", "model", "version", "rows", "billed_ms", "memory_mb"))
    assert lines[3] == ("stats count(*) as inferences, sum(rows) as total_rows, sum(billed_ms) as "
                        "total_billed_ms, sum(gb_seconds) as total_gb_seconds, sum(cost_usd) as "
                        "total_cost_usd, avg(cost_per_1000) as cost_per_1000_usd by tenant, model, version")
    assert lines[4] == "sort total_cost_usd desc"
    assert "* 0.0000166667) + 0.0000002 as cost_usd" in lines[0]            # plain decimals, no 1.6e-05
    assert "0.0000133334" in cost.insights_query(cost.Prices.from_settings(CostSettings(), "arm64"))
    assert "e-" not in query
    assert cost.FILTER_PATTERN == '{ $.message = "inference cost" }'


def test_the_rendered_expressions_compute_what_the_cli_computes():
    """Each derived field as written into the query, evaluated with Python's arithmetic on a record, is
    what `summarize` uses: the two sides cannot drift apart."""
    values = {"rows": 3.0, "billed_ms": 37.0, "memory_mb": 1769.0}
    computed = dict(values)
    for name, expr in cost.DERIVED:
        computed[name] = cost.evaluate(expr, computed, X86)
    fields = cost.query_parts(X86)["fields"]
    for (name, _), text in zip(cost.DERIVED, fields, strict=True):
        expression, alias = text.rsplit(" as ", 1)
        assert alias == name
        python = re.sub(r"[a-z_]+", lambda m: repr(values[m.group(0)]), expression)
        assert eval(python) == pytest.approx(computed[name], rel=1e-12)  # noqa: S307 - digits and operators
    g = cost.summarize(events(json.dumps({"message": "inference cost", "tenant": "t", "model": "m",
                                          "version": "1", **{k: int(v) for k, v in values.items()}})),
                       X86).groups[0]
    assert g["total_gb_seconds"] == pytest.approx(computed["gb_seconds"])
    assert g["cost_per_1000_usd"] == pytest.approx(computed["cost_per_1000"])


def test_read_events_pages_through_filter_log_events():
    class Logs:
        def __init__(self):
            self.calls = []

        def filter_log_events(self, **kw):
            self.calls.append(kw)
            if "nextToken" not in kw:
                return {"events": RECORDS[:4], "nextToken": "page-2"}
            return {"events": RECORDS[4:]}

    logs = Logs()
    got = list(cost.read_events(logs, "/aws/lambda/inf", T0, T0 + 60_000))
    assert got == RECORDS and len(logs.calls) == 2
    assert logs.calls[0] == {"logGroupName": "/aws/lambda/inf", "startTime": T0, "endTime": T0 + 59_999,
                             "filterPattern": cost.FILTER_PATTERN}
    assert logs.calls[1]["nextToken"] == "page-2"


def test_format_summary_prints_one_row_per_group():
    text = cost.format_summary(cost.summarize(RECORDS, X86, T0, T0 + 60_000), "/aws/lambda/inf")
    rows = [x for x in text.splitlines() if x.startswith(("acme", "globex"))]
    assert len(rows) == 3 and rows[0].split()[:4] == ["acme", "project-risk", "2", "1"]
    assert rows[0].split()[-1] == "0.001867"
    assert "x86_64" in text and "0.0000166667 USD per GB-second" in text
    assert "(no inferences in this period)" in cost.format_summary(cost.summarize([], X86, T0, T0 + 1))


# --- the middleware ----------------------------------------------------------------------------------


class Logger:
    def __init__(self):
        self.lines: list[tuple[str, str, dict]] = []

    def info(self, message, extra=None):
        self.lines.append(("INFO", message, extra or {}))

    def warning(self, message, extra=None):
        self.lines.append(("WARNING", message, extra or {}))


class Context:
    memory_limit_in_mb = "2048"         # the Python runtime may hand a string


EVENT = {"requestContext": {"authorizer": {"tenant_id": "acme", "valid_until": "4102444800"}}}


def clock(*readings: float):
    it = iter(readings)
    return lambda: next(it)


def test_metered_logs_one_record_per_inference_with_billed_ms_rounded_up():
    log = Logger()

    @cost.metered(log, clock=clock(10.0, 10.0123))
    def handler(event, context):
        cost.note_inference("project-risk", "1", 2)
        return {"statusCode": 200}

    assert handler(EVENT, Context()) == {"statusCode": 200}
    assert log.lines == [("INFO", "inference cost", {"tenant": "acme", "model": "project-risk",
                                                     "version": "1", "rows": 2, "billed_ms": 13,
                                                     "memory_mb": 2048})]
    assert cost.summarize(events(line("acme", "project-risk", "1", 2, 13, 2048)), X86).records == 1


def test_metered_writes_nothing_without_an_inference_or_when_the_handler_raises():
    log = Logger()

    @cost.metered(log)
    def health(event, context):
        return {"statusCode": 200}

    @cost.metered(log)
    def broken(event, context):
        cost.note_inference("m", "1", 1)
        raise RuntimeError("boom")

    health(EVENT, Context())
    with pytest.raises(RuntimeError):
        broken(EVENT, Context())
    cost.note_inference("m", "1", 1)          # outside a metered invocation: a no-op
    assert log.lines == []


def test_a_record_that_cannot_be_written_never_fails_the_request():
    log = Logger()

    @cost.metered(log, tenant_of=lambda event: (_ for _ in ()).throw(KeyError("tenant")))
    def handler(event, context):
        cost.note_inference("m", "1", 1)
        return "ok"

    assert handler({}, Context()) == "ok"
    assert log.lines == [("WARNING", "cost record not written", {"error": "KeyError"})]


def test_billed_duration_is_rounded_up_to_the_millisecond_at_least_one():
    assert cost.billed_ms(0.0) == 1
    assert cost.billed_ms(0.0001) == 1
    assert cost.billed_ms(0.003) == 3               # 3.0000000000000004 ms in floating point
    assert cost.billed_ms(0.004) == 4
    assert cost.billed_ms(0.0040002) == 5
    assert cost.billed_ms(1.2345) == 1235


# --- GPU endpoint: instance time apportioned by compute time ---------------------------------------------


def _gpu_line(tenant: str, model: str, rows: int, compute_ms: float, version: str = "1") -> str:
    return "INFO " + json.dumps({"message": cost.GPU_MESSAGE, "tenant": tenant, "model": model,
                                 "version": version, "rows": rows, "compute_ms": compute_ms})


def _beat(interval_s: float = 60) -> str:
    return json.dumps({"ts": 1.0, "event": cost.HEARTBEAT_EVENT, "interval_s": interval_s})


def test_gpu_instance_time_is_apportioned_by_each_groups_compute_time_by_hand():
    records = [{"timestamp": 1000, "message": _gpu_line("acme", "mpnet-embed", 2, 30.0)},
               {"timestamp": 2000, "message": _gpu_line("acme", "mpnet-embed", 1, 10.0)},
               {"timestamp": 3000, "message": _gpu_line("globex", "mpnet-embed", 4, 60.0)},
               {"timestamp": 4000, "message": "a line that is not a record"},
               {"timestamp": 9000, "message": _gpu_line("initech", "mpnet-embed", 1, 99.0)}]   # outside
    beats = [{"timestamp": t, "message": _beat()} for t in (1000, 2000, 3000)] + \
            [{"timestamp": 9500, "message": _beat()},
             {"timestamp": 1500, "message": json.dumps({"event": "ready"})}]
    summary = cost.gpu_summary(records, beats, price_per_hour=3.6, start_ms=0, end_ms=5000)
    # 180 instance-seconds at 3.6 USD/h = 0.18 USD; acme used 40 of 100 compute ms, globex 60
    assert summary.instance_seconds == 180 and summary.cost_usd == pytest.approx(0.18)
    by = {g["tenant"]: g for g in summary.groups}
    assert set(by) == {"acme", "globex"}
    assert by["acme"]["inferences"] == 2 and by["acme"]["rows"] == 3 and by["acme"]["compute_ms"] == 40
    assert by["acme"]["cost_usd"] == pytest.approx(0.072) and by["globex"]["cost_usd"] == pytest.approx(0.108)
    assert by["acme"]["cost_per_1000_usd"] == pytest.approx(0.072 / 2 * 1000)
    assert [g["tenant"] for g in summary.groups] == ["globex", "acme"]      # most expensive first
    text = cost.format_gpu(summary)
    assert "180 instance-seconds" in text and "globex" in text.splitlines()[3]


def test_no_compute_means_no_share_and_idle_time_is_still_reported():
    summary = cost.gpu_summary([], [{"timestamp": 1, "message": _beat(10)}], price_per_hour=1.0)
    assert summary.instance_seconds == 10 and summary.groups == []
    assert cost.apportion({("a", "m", "1"): 0.0}, 100, 1.0) == {("a", "m", "1"): 0.0}
    assert "(no GPU inferences in this period)" in cost.format_gpu(summary)
