"""Local mode's log shipping (tenantml.local.logs): what the functions' logger writes during a local
invocation reaches the function's log group, one stream per execution environment, in batches, without
ever blocking or failing the invocation. A fake CloudWatch Logs client (unit tests have no sockets)."""

from __future__ import annotations

import json
import logging
import textwrap

import pytest

from tenantml import resources
from tenantml.local.context import LocalFunction
from tenantml.local.logs import LogShipper, _batches, ship_function_logs, unship
from tenantml.observability import logger

WORKER = resources.FunctionDef("worker", "test", memory_mb=512, timeout_s=10)  # type: ignore[arg-type]
GROUP = resources.LocalNames.make().log_group("worker")


class Logs:
    """The CloudWatch Logs calls the shipper makes."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.groups: set[str] = set()
        self.streams: set[tuple[str, str]] = set()
        self.puts: list[dict] = []

    def create_log_group(self, logGroupName):  # noqa: N803 - boto3's parameter names
        if logGroupName in self.groups:
            raise _Exists()
        self.groups.add(logGroupName)

    def create_log_stream(self, logGroupName, logStreamName):  # noqa: N803
        assert logGroupName in self.groups
        self.streams.add((logGroupName, logStreamName))

    def put_log_events(self, logGroupName, logStreamName, logEvents):  # noqa: N803
        if self.fail:
            raise ConnectionError("emulator gone")
        assert (logGroupName, logStreamName) in self.streams
        assert [e["timestamp"] for e in logEvents] == sorted(e["timestamp"] for e in logEvents)
        self.puts.append({"group": logGroupName, "stream": logStreamName, "events": logEvents})

    def lines(self) -> list[dict]:
        return [json.loads(e["message"]) for p in self.puts for e in p["events"]]


class _Exists(Exception):
    response = {"Error": {"Code": "ResourceAlreadyExistsException"}}


@pytest.fixture
def worker(tmp_path):
    path = tmp_path / "handler.py"
    path.write_text(textwrap.dedent("""
        from tenantml.observability import logger

        def handler(event, context):
            logger.info("working", extra={"item": event["item"]})
            if event.get("fail"):
                raise RuntimeError("boom")
            return {"done": event["item"]}
    """))
    return LocalFunction(WORKER, path)


@pytest.fixture
def shipping():
    made = []

    def make(client: Logs, **kw) -> LogShipper:
        shipper = LogShipper(client=client, interval_s=0.05, **kw).start()
        made.append((shipper, ship_function_logs(shipper)))
        return shipper

    yield make
    for shipper, handler in made:
        unship(handler)
        shipper.stop()


def test_lines_logged_during_an_invocation_reach_the_functions_log_group(worker, shipping):
    logs = Logs()
    shipper = shipping(logs)
    shipper.prepare([GROUP])
    assert worker.invoke({"item": 1}) == {"done": 1}
    assert worker.invoke({"item": 2}) == {"done": 2}
    logger.info("not in an invocation")                 # the platform's own lines are not the function's
    assert shipper.flush()
    lines = logs.lines()
    assert [(x["message"], x["item"]) for x in lines] == [("working", 1), ("working", 2)]
    assert {p["group"] for p in logs.puts} == {GROUP} == logs.groups
    assert len({p["stream"] for p in logs.puts}) == 1   # one stream per execution environment
    (stream,) = {p["stream"] for p in logs.puts}
    assert stream == worker.log_stream_name and "[$LATEST]" in stream
    assert (shipper.shipped, shipper.failed, shipper.dropped) == (2, 0, 0)


def test_a_failing_emulator_never_fails_the_invocation_and_is_counted(worker, shipping, caplog):
    shipper = shipping(Logs(fail=True))
    with caplog.at_level(logging.WARNING, logger="tenantml-local.logs"):
        assert worker.invoke({"item": 3}) == {"done": 3}
        assert shipper.flush()
        assert worker.invoke({"item": 4}) == {"done": 4}
        assert shipper.flush()
    assert shipper.failed == 2 and shipper.shipped == 0
    warned = [r for r in caplog.records if r.name == "tenantml-local.logs"]
    assert len(warned) == 1 and "ConnectionError" in warned[0].getMessage()    # said once, not per line


def test_lines_of_a_failed_invocation_are_shipped_too(worker, shipping):
    logs = Logs()
    shipper = shipping(logs)
    with pytest.raises(Exception, match="RuntimeError"):
        worker.invoke({"item": 5, "fail": True})
    assert shipper.flush()
    assert [x["item"] for x in logs.lines()] == [5]


def test_a_full_queue_drops_and_counts_instead_of_blocking():
    shipper = LogShipper(client=Logs(), max_queue=2)          # not started: nothing drains the queue
    for i in range(5):
        shipper.put(GROUP, "s", i, "line")
    assert shipper.dropped == 3


def test_batches_respect_put_log_events_limits():
    many = [{"timestamp": i, "message": "x"} for i in range(25_000)]
    assert [len(b) for b in _batches(many)] == [10_000, 10_000, 5_000]
    big = [{"timestamp": i, "message": "y" * 400_000} for i in range(5)]
    assert [len(b) for b in _batches(big)] == [2, 2, 1]
