"""gpu_endpoint.batching and the batch path of gpu_endpoint.model / server, without sockets: grouping, the
max wait, length buckets, failure isolation, the bounded queue (503), compute attribution, settings."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import serving_models as sm

from gpu_endpoint import model as gm
from gpu_endpoint import server as gs
from gpu_endpoint.batching import (
    DEFAULT_MAX_BATCH,
    BatchConfig,
    Batcher,
    BatcherClosed,
    QueueFull,
    padded_tokens,
    plan_buckets,
)
from tenantml.serving import oip, processing

WAIT = 10.0   # generous: the machine's 2 cores are shared


class Gate:
    """A run function that records its batches and blocks on the first one until `release()`."""

    def __init__(self, fail_on: object = None) -> None:
        self.batches: list[list[object]] = []
        self.entered = threading.Event()
        self._open = threading.Event()
        self.fail_on = fail_on

    def release(self) -> None:
        self._open.set()

    def __call__(self, items: list[object]) -> list[object]:
        self.batches.append(list(items))
        self.entered.set()
        assert self._open.wait(WAIT)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError("poisoned batch")
        return [f"done:{i}" for i in items]


def blocked(gate: Gate, config: BatchConfig) -> Batcher:
    """A started batcher whose worker is inside a first batch (item "gate"), so later submits queue up."""
    batcher = Batcher(gate, config).start()
    batcher.submit("gate")
    assert gate.entered.wait(WAIT)
    return batcher


# --- grouping and waiting ---------------------------------------------------------------------------


def test_requests_that_queue_while_a_batch_runs_form_the_next_batch_up_to_max_batch():
    gate = Gate()
    batcher = blocked(gate, BatchConfig(max_batch=4, max_wait_s=0, max_queue=64))
    jobs = [batcher.submit(f"r{i}") for i in range(6)]
    gate.release()
    assert [j.wait(WAIT) for j in jobs] == [f"done:r{i}" for i in range(6)]
    batcher.close()
    assert gate.batches == [["gate"], ["r0", "r1", "r2", "r3"], ["r4", "r5"]]
    stats = batcher.stats()
    assert stats["batches"] == 3 and stats["requests"] == 7 and stats["max_batch_rows"] == 4


def test_rows_not_requests_fill_a_batch_and_a_large_request_runs_alone():
    gate = Gate()
    batcher = blocked(gate, BatchConfig(max_batch=8, max_wait_s=0, max_queue=64))
    a, b, c, d = (batcher.submit("a", rows=5), batcher.submit("b", rows=3), batcher.submit("c", rows=20),
                  batcher.submit("d", rows=1))
    gate.release()
    for job in (a, b, c, d):
        job.wait(WAIT)
    batcher.close()
    assert gate.batches[1:] == [["a", "b"], ["c"], ["d"]]
    assert batcher.stats()["rows"] == 1 + 5 + 3 + 20 + 1


def recording_batcher(config: BatchConfig) -> tuple[Batcher, list[tuple[float, list[object]]]]:
    runs: list[tuple[float, list[object]]] = []

    def run(items: list[object]) -> list[object]:
        runs.append((time.monotonic(), list(items)))
        return items

    return Batcher(run, config).start(), runs


def test_a_request_waits_for_announced_requests_to_join_its_batch():
    batcher, runs = recording_batcher(BatchConfig(max_batch=8, max_wait_s=5, max_queue=8))
    batcher.expect()
    batcher.expect()                                   # two requests are being read
    t0 = time.monotonic()
    first = batcher.submit("x", expected=True)
    time.sleep(0.1)
    second = batcher.submit("y", expected=True)        # the last announced one arrives: no more waiting
    assert first.wait(WAIT) == "x" and second.wait(WAIT) == "y"
    batcher.close()
    assert [items for _, items in runs] == [["x", "y"]]
    assert 0.05 <= runs[0][0] - t0 < 4


def test_a_lone_request_does_not_wait_for_company_that_is_not_coming():
    batcher, runs = recording_batcher(BatchConfig(max_batch=8, max_wait_s=30, max_queue=8))
    t0 = time.monotonic()
    assert batcher.submit("x").wait(WAIT) == "x"
    assert time.monotonic() - t0 < 5                   # nowhere near the 30 s window
    batcher.close()


def test_an_announced_request_holds_a_batch_at_most_max_wait():
    batcher, runs = recording_batcher(BatchConfig(max_batch=8, max_wait_s=0.3, max_queue=8))
    batcher.expect()                                   # announced, never submitted (a slow client, say)
    t0 = time.monotonic()
    assert batcher.submit("x").wait(WAIT) == "x"
    assert runs[0][0] - t0 >= 0.25                     # held for the oldest request's max wait, no longer
    batcher.close()


def test_a_withdrawn_request_ends_the_wait_at_once():
    batcher, runs = recording_batcher(BatchConfig(max_batch=8, max_wait_s=30, max_queue=8))
    batcher.expect()
    job = batcher.submit("x")
    time.sleep(0.05)
    t0 = time.monotonic()
    batcher.withdraw()                                 # it failed validation: nothing more is coming
    assert job.wait(WAIT) == "x" and time.monotonic() - t0 < 5
    batcher.close()


def test_a_full_batch_does_not_wait():
    batcher = Batcher(lambda items: items, BatchConfig(max_batch=2, max_wait_s=30, max_queue=8)).start()
    t0 = time.monotonic()
    jobs = [batcher.submit(i) for i in range(2)]
    assert [j.wait(WAIT) for j in jobs] == [0, 1]
    assert time.monotonic() - t0 < 5                   # nowhere near the 30 s window
    batcher.close()


def test_batching_off_runs_one_request_per_run_in_arrival_order():
    gate = Gate()
    batcher = blocked(gate, BatchConfig.off())
    jobs = [batcher.submit(i, rows=3) for i in range(4)]
    gate.release()
    assert [j.wait(WAIT) for j in jobs] == [f"done:{i}" for i in range(4)]
    batcher.close()
    assert gate.batches == [["gate"], [0], [1], [2], [3]]


# --- failures, overload, timeouts, shutdown -----------------------------------------------------------


def test_a_failing_batch_is_rerun_one_by_one_so_only_the_culprit_fails():
    gate = Gate(fail_on="bad")
    batcher = blocked(gate, BatchConfig(max_batch=8, max_wait_s=0, max_queue=64))
    good1, bad, good2 = batcher.submit("a"), batcher.submit("bad"), batcher.submit("c")
    gate.release()
    assert good1.wait(WAIT) == "done:a" and good2.wait(WAIT) == "done:c"
    with pytest.raises(ValueError, match="poisoned"):
        bad.wait(WAIT)
    batcher.close()
    assert gate.batches[1] == ["a", "bad", "c"] and gate.batches[2:] == [["a"], ["bad"], ["c"]]
    stats = batcher.stats()
    assert (stats["failed_batches"], stats["retried_requests"], stats["failed_requests"]) == (1, 3, 1)


def test_a_run_that_returns_the_wrong_number_of_results_fails_its_requests():
    batcher = Batcher(lambda items: [], BatchConfig(max_batch=1, max_queue=4)).start()
    with pytest.raises(RuntimeError, match="0 results for 1"):
        batcher.submit("x").wait(WAIT)
    batcher.close()


def test_a_full_queue_refuses_at_once_instead_of_growing():
    gate = Gate()
    batcher = blocked(gate, BatchConfig(max_batch=4, max_wait_s=0, max_queue=2))
    queued = [batcher.submit("a"), batcher.submit("b")]
    t0 = time.monotonic()
    with pytest.raises(QueueFull, match=r"queue is full \(2 requests waiting\)"):
        batcher.submit("c")
    assert time.monotonic() - t0 < 1
    gate.release()
    assert [j.wait(WAIT) for j in queued] == ["done:a", "done:b"]
    assert batcher.submit("d").wait(WAIT) == "done:d"  # room again once the queue drained
    batcher.close()
    assert batcher.stats()["rejected"] == 1


def test_a_request_that_times_out_is_dropped_before_it_runs():
    gate = Gate()
    batcher = blocked(gate, BatchConfig(max_batch=4, max_wait_s=0, max_queue=8))
    late, kept = batcher.submit("late"), None
    with pytest.raises(TimeoutError):
        late.wait(0.05)
    kept = batcher.submit("kept")
    gate.release()
    assert kept.wait(WAIT) == "done:kept"
    batcher.close()
    assert ["late"] not in gate.batches and all("late" not in b for b in gate.batches)
    assert batcher.stats()["timed_out"] == 1


def test_close_runs_what_is_queued_and_refuses_new_work():
    gate = Gate()
    batcher = blocked(gate, BatchConfig(max_batch=1, max_wait_s=0, max_queue=8))
    jobs = [batcher.submit(i) for i in range(3)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(BatcherClosed):
        batcher.submit("after")
    gate.release()
    closer.join(WAIT)
    assert [j.wait(WAIT) for j in jobs] == ["done:0", "done:1", "done:2"]


# --- configuration ------------------------------------------------------------------------------------


def test_batch_config_from_the_environment():
    assert BatchConfig.from_env({}) == BatchConfig()
    assert BatchConfig().max_batch == DEFAULT_MAX_BATCH and BatchConfig().enabled
    cfg = BatchConfig.from_env({"TENANTML_GPU_MAX_BATCH": "64", "TENANTML_GPU_MAX_WAIT_MS": "0.5",
                                "TENANTML_GPU_MAX_QUEUE": "10"})
    assert (cfg.max_batch, cfg.max_wait_s, cfg.max_queue) == (64, 0.0005, 10)
    off = BatchConfig.from_env({"TENANTML_GPU_BATCHING": "off", "TENANTML_GPU_MAX_BATCH": "64"})
    assert (off.max_batch, off.max_wait_s, off.enabled) == (1, 0.0, False)
    assert not BatchConfig.from_env({"TENANTML_GPU_MAX_BATCH": "1"}).enabled
    for bad in ({"TENANTML_GPU_MAX_BATCH": "0"}, {"TENANTML_GPU_MAX_WAIT_MS": "-1"},
                {"TENANTML_GPU_MAX_QUEUE": "lots"}, {"TENANTML_GPU_BATCHING": "maybe"}):
        with pytest.raises(ValueError, match="TENANTML_GPU_"):
            BatchConfig.from_env(bad)


# --- length buckets -------------------------------------------------------------------------------------


def _cost(lengths, runs, overhead):
    return len(runs) * overhead + padded_tokens(lengths, runs)


def _brute_force(lengths, *, max_rows, max_tokens, overhead):
    """The cheapest split of the rows sorted by length into contiguous runs (every cut set tried)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = None
    for cuts in itertools.product([False, True], repeat=len(order) - 1):
        runs, run = [], [order[0]]
        for i, cut in zip(order[1:], cuts, strict=True):
            if cut:
                runs.append(run)
                run = []
            run.append(i)
        runs.append(run)
        if any(len(r) > max_rows or (len(r) > 1 and len(r) * max(lengths[i] for i in r) > max_tokens)
               for r in runs):
            continue
        cost = _cost(lengths, runs, overhead)
        best = cost if best is None else min(best, cost)
    return best


def test_plan_buckets_is_the_cheapest_split_within_the_limits():
    rng = random.Random(7)
    for _ in range(150):
        n = rng.randint(1, 8)
        lengths = [rng.randint(1, 80) for _ in range(n)]
        kw = {"max_rows": rng.randint(1, 6), "max_tokens": rng.choice([64, 160, 4096]),
              "overhead": rng.choice([0, 16, 2048])}
        runs = plan_buckets(lengths, max_rows=kw["max_rows"], max_tokens=kw["max_tokens"],
                            overhead_tokens=kw["overhead"])
        assert sorted(i for r in runs for i in r) == list(range(n))           # every row exactly once
        for r in runs:
            assert r == sorted(r)                                            # original order inside a run
            assert len(r) <= kw["max_rows"]
            assert len(r) == 1 or len(r) * max(lengths[i] for i in r) <= kw["max_tokens"]
        assert _cost(lengths, runs, kw["overhead"]) == _brute_force(lengths, **kw), (lengths, kw)


def test_plan_buckets_trades_runs_for_padding_by_the_devices_overhead():
    lengths = [5, 60, 6, 7, 58]
    # CPU-like overhead: a short run is cheap, so the long rows do not pad the short ones
    assert plan_buckets(lengths, max_rows=32, max_tokens=4096, overhead_tokens=16) == [[0, 2, 3], [1, 4]]
    # GPU-like overhead: one run, padding and all
    assert plan_buckets(lengths, max_rows=32, max_tokens=4096, overhead_tokens=2048) == [[0, 1, 2, 3, 4]]
    # the token budget still cuts: 4 rows of 60 tokens do not fit 200
    assert all(len(r) * max(lengths[i] for i in r) <= 200 or len(r) == 1
               for r in plan_buckets(lengths, max_rows=32, max_tokens=200, overhead_tokens=2048))
    assert plan_buckets([], max_rows=4, max_tokens=10, overhead_tokens=1) == []
    assert plan_buckets([300], max_rows=4, max_tokens=10, overhead_tokens=1) == [[0]]   # a lone long row


# --- the text model's batch path (a fake session) --------------------------------------------------------


class FakeSession:
    """Per row, [sum of real token ids, real tokens, first id]: depends on the row's real tokens only, so a
    row's output is the same in any batch. Records each run's shape; advances `clock` by 1 ms per padded
    token."""

    def __init__(self, clock: list[float] | None = None, poison: int | None = None) -> None:
        self.shapes: list[tuple[int, int]] = []
        self.clock, self.poison = clock, poison

    def run(self, names, feeds):
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        self.shapes.append(ids.shape)
        if self.clock is not None:
            self.clock[0] += ids.size / 1000
        if self.poison is not None and (ids == self.poison).any():
            raise RuntimeError("kernel failure")
        first = np.where(mask.argmax(axis=1) >= 0, ids[np.arange(len(ids)), mask.argmax(axis=1)], 0)
        return [np.stack([(ids * mask).sum(axis=1), mask.sum(axis=1), first], axis=1).astype(np.float32)]


def text_model(session, *, max_batch_rows=32, overhead=16.0, max_tokens=4096, pad_left=False):
    from tokenizers import Tokenizer

    v = sm.embedding_version(max_length=64)
    tokenizer = processing.configure_tokenizer(Tokenizer.from_str(sm.tokenizer_json().decode()), 64)
    if pad_left:
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", direction="left")
    info = gm.ModelInfo(name=v.manifest.name, version="1", task="embedding",
                        model_sha256=v.manifest.files["model.onnx"].sha256, provider=gm.CPU, precision="fp32",
                        load_ms=0.0)
    return gm.EmbeddingModel(manifest=v.manifest, info=info, session=session, tokenizer=tokenizer,
                             input_names=("input_ids", "attention_mask", "token_type_ids"),
                             onnx_output="embedding", text_input="text", output="embedding",
                             max_tokens_per_run=max_tokens, run_overhead_tokens=overhead,
                             max_batch_rows=max_batch_rows, pad_values={"input_ids": 0, "token_type_ids": 0},
                             pad_left=pad_left)


def work(model, texts):
    return model.prepare({"text": oip.Tensor("text", "BYTES", (len(texts),), list(texts))})


REQUESTS = [["the login page fails"], ["add dark mode", "bug"],
            [" ".join(sm.WORDS * 2)], ["please export csv report", "the app crash"]]


@pytest.mark.parametrize("pad_left", [False, True])
def test_batched_requests_get_the_rows_they_would_get_alone(pad_left):
    alone = text_model(FakeSession(), pad_left=pad_left)
    expected = [alone.run_batch([work(alone, texts)])[0].values["embedding"] for texts in REQUESTS]
    session = FakeSession()
    model = text_model(session, pad_left=pad_left)
    results = model.run_batch([work(model, texts) for texts in REQUESTS])
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got.values["embedding"], want)
    # length-bucketed: the 38-token text did not pad the short ones
    assert len(session.shapes) == 2 and sorted(w for _, w in session.shapes)[0] < 10
    assert sum(n for n, _ in session.shapes) == sum(len(t) for t in REQUESTS)


def test_a_lone_request_runs_exactly_like_the_cpu_path():
    session = FakeSession()
    model = text_model(session)
    texts = ["add dark mode", " ".join(sm.WORDS), "bug"]
    got = model.run_batch([work(model, texts)])[0].values["embedding"]
    feeds, mask = processing.encode_texts(model.tokenizer, texts, model.input_names)
    want = processing.embed_feeds(FakeSession(), feeds, mask, output_name="embedding")
    np.testing.assert_array_equal(got, want)
    assert session.shapes == [mask.shape]          # one run, the request's own padding and row order


def test_compute_time_is_apportioned_by_padded_tokens(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(gm, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    session = FakeSession(clock)
    model = text_model(session)
    works = [work(model, texts) for texts in REQUESTS]
    results = model.run_batch(works)
    runs = plan_buckets([int(x) for w in works for x in w.lengths], max_rows=32, max_tokens=4096,
                        overhead_tokens=16)
    width_of_row = {}
    for run in runs:
        width = max(int(np.concatenate([w.lengths for w in works])[i]) for i in run)
        width_of_row.update(dict.fromkeys(run, width))
    offsets = np.cumsum([0] + [w.rows for w in works])
    for j, result in enumerate(results):
        want = sum(width_of_row[i] for i in range(offsets[j], offsets[j + 1]))   # 1 ms per padded token
        assert result.compute_ms == pytest.approx(want)
    assert sum(r.compute_ms for r in results) == pytest.approx(sum(n * w for n, w in session.shapes))
    # alone: the whole run is the request's
    alone = model.run_batch([works[1]])[0]
    assert alone.compute_ms == pytest.approx(works[1].rows * int(works[1].lengths.max()))


# --- the server's application object (no sockets) ------------------------------------------------------


@pytest.fixture
def tiny_dir(tmp_path):
    v = sm.embedding_version(max_length=16)
    for name, data in v.artifacts.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "manifest.json").write_text(v.manifest.model_dump_json())
    return tmp_path


def body(texts):
    return json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)],
                                   "data": texts}]}).encode()


def test_a_full_queue_answers_503_json_with_retry_after(tiny_dir):
    settings = gs.Settings.from_env({"TENANTML_GPU_MAX_QUEUE": "1", "TENANTML_GPU_MAX_BATCH": "1"},
                                    model_dir=tiny_dir)
    model = gm.load_model(tiny_dir, settings.model)
    gate, real = threading.Event(), model.run_batch
    started = threading.Event()

    def slow(works):
        started.set()
        assert gate.wait(WAIT)
        return real(works)

    model.run_batch = slow  # type: ignore[method-assign]
    app = gs.App(settings)
    app.attach(model)
    answers: list[gs.Reply] = []
    first = threading.Thread(target=lambda: answers.append(app.invocations(body(["bug"]), {})))
    first.start()
    assert started.wait(WAIT)                                   # running
    second = threading.Thread(target=lambda: answers.append(app.invocations(body(["app"]), {})))
    second.start()
    deadline = time.monotonic() + WAIT
    while app.batcher.queued < 1 and time.monotonic() < deadline:   # queued
        time.sleep(0.01)
    refused = app.invocations(body(["crash"]), {})
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"
    assert json.loads(refused.body) == {"error": "server overloaded: the request queue is full (1 requests "
                                                 "waiting); retry later"}
    gate.set()
    first.join(WAIT)
    second.join(WAIT)
    app.close()
    assert [a.status for a in answers] == [200, 200]


def test_ping_is_503_until_the_model_is_attached(tiny_dir):
    app = gs.App(gs.Settings.from_env({}, model_dir=tiny_dir))
    assert app.ping().status == 503 and json.loads(app.ping().body) == {"error": "model is loading"}
    assert app.invocations(body(["bug"]), {}).status == 503
    app.attach(gm.load_model(tiny_dir, gm.ModelOptions(device="cpu")))
    assert (app.ping().status, app.ping().body) == (200, b'{"ready":true}')
    app.close()


def test_an_unexpected_failure_is_a_500_without_details(tiny_dir):
    model = gm.load_model(tiny_dir, gm.ModelOptions(device="cpu"))
    model.session = FakeSession(poison=sm.VOCAB["bug"])       # the run raises
    app = gs.App(gs.Settings.from_env({}, model_dir=tiny_dir))
    app.attach(model)
    reply = app.invocations(body(["bug"]), {})
    assert reply.status == 500 and json.loads(reply.body) == {"error": "internal error"}
    app.close()


def test_compute_ms_is_appended_to_the_oip_response():
    out, length = gs.with_parameters('{"model_name":"m","outputs":[]}', None, {"compute_ms": 1.5})
    assert out == b'{"model_name":"m","outputs":[],"parameters":{"compute_ms":1.5}}' and length is None
    head = b'{"model_name":"m","outputs":[{"name":"e","parameters":{"binary_data_size":4}}]}'
    out, length = gs.with_parameters(head + b"\x00\x01\x02\x03", len(head), {"compute_ms": 2.0})
    assert json.loads(out[:length]) == {**json.loads(head), "parameters": {"compute_ms": 2.0}}
    assert out[length:] == b"\x00\x01\x02\x03"


def test_custom_attributes_are_parsed_leniently():
    assert gs.parse_custom_attributes("model_sha256=abc;request_id=r-1") == {"model_sha256": "abc",
                                                                             "request_id": "r-1"}
    assert gs.parse_custom_attributes(" Model_SHA256 = abc , other , x=1") == {"model_sha256": "abc",
                                                                                "x": "1"}
    assert gs.parse_custom_attributes(None) == {}


def test_serve_mode_is_sagemakers_contract():
    s = gs.settings_from_args(gs.parse_args(["serve"]), env={})
    assert (s.host, s.port, str(s.model_dir)) == ("0.0.0.0", 8080, "/opt/ml/model")
    s = gs.settings_from_args(gs.parse_args(["serve"]), env={"SAGEMAKER_BIND_TO_PORT": "9000",
                                                             "TENANTML_MODEL_DIR": "/models/x"})
    assert (s.port, str(s.model_dir)) == (9000, "/models/x")
    local = gs.settings_from_args(gs.parse_args(["--model-dir", "/m", "--port", "0", "--no-batching",
                                                 "--precision", "fp16", "--model-version", "7"]), env={})
    assert (local.host, local.port, str(local.model_dir)) == ("127.0.0.1", 0, "/m")
    assert not local.batch.enabled and local.model.precision == "fp16" and local.model.version == "7"
    assert local.model.max_batch_rows == 1


def test_every_request_withdraws_its_announcement(tiny_dir):
    app = gs.App(gs.Settings.from_env({"TENANTML_GPU_DEVICE": "cpu"}, model_dir=tiny_dir))
    app.attach(gm.load_model(tiny_dir, gm.ModelOptions(device="cpu")))
    assert app.invocations(b"not json", {}).status == 400
    assert app.invocations(body(["bug"]), {gs.CUSTOM_ATTRIBUTES: "model_sha256=" + "0" * 64}).status == 400
    assert app.invocations(body(["bug"]), {}).status == 200
    assert app.batcher._expected == 0                   # nothing left for the worker to wait for
    app.close()
