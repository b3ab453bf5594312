"""Ground-truth feedback (tenantml.monitoring.feedback): the request's validation, the frame it is stored
as, the (request id, row) join with captured predictions, and the accuracy verdict; and the service's
feedback operation on the in-memory registry (tenancy, the write, its failure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
import serving_models as sm

from tenantml.errors import BadRequest, ModelNotFound, ModelUnavailable
from tenantml.monitoring import Thresholds
from tenantml.monitoring.baseline import Performance
from tenantml.monitoring.capture import ID_WIDTH, decode_frame, encode_frame
from tenantml.monitoring.feedback import (
    AccuracyAccumulator,
    Feedback,
    FeedbackBatch,
    accuracy_report,
    batch_rows,
    encode_batch,
    feedback_key,
    parse_batch,
)
from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
from tenantml.serving.service import InferenceService
from tenantml.settings import ServingSettings

AT = datetime(2026, 11, 30, 17, 30, tzinfo=UTC)


def labels(*items) -> FeedbackBatch:
    return FeedbackBatch.model_validate({"feedback": [dict(zip(("id", "index", "label"), i, strict=True))
                                                      for i in items]})


def stored(batch: FeedbackBatch, at: datetime = AT, tenant: str = "acme", model: str = "m"):
    return decode_frame(encode_batch(tenant, model, batch, at))


def captured(ids, predictions) -> object:
    kind = "categorical" if isinstance(predictions[0], str) else "numeric"
    return decode_frame(encode_frame("acme", "m", "1", request_ids=ids, **(
        {"numeric": {"x": np.zeros(len(ids))}, "categorical": {"prediction": predictions}}
        if kind == "categorical" else {"numeric": {"x": np.zeros(len(ids)), "prediction": predictions}})))


# --- the request --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("payload", "message"), [
    ({}, "invalid feedback: feedback: Field required"),
    ({"feedback": []}, "invalid feedback: feedback: List should have at least 1 item after validation, "
                       "not 0"),
    ({"feedback": [{"id": "r1"}]}, "invalid feedback: feedback[0]: Value error, give exactly one of label "
                                   "(classification) and value (regression)"),
    ({"feedback": [{"id": "r1", "label": "a", "value": 1.0}]},
     "invalid feedback: feedback[0]: Value error, give exactly one of label (classification) and value "
     "(regression)"),
    ({"feedback": [{"id": "r1", "label": "a"}, {"id": "r2", "value": 1.0}]},
     "invalid feedback: body: Value error, a batch holds labels or values, not both"),
    ({"feedback": [{"id": "has space", "label": "a"}]},
     "invalid feedback: feedback[0].id: String should match pattern '^[\\x21-\\x7e]+$'"),
    ({"feedback": [{"id": "r1", "index": -1, "label": "a"}]},
     "invalid feedback: feedback[0].index: Input should be greater than or equal to 0"),
    ({"feedback": [{"id": "r1", "value": float("inf")}]},
     "invalid feedback: feedback[0].value: Value error, value must be a finite number"),
    ({"feedback": [{"id": "r1", "label": "a", "tenant": "globex"}]},
     "invalid feedback: feedback[0].tenant: Extra inputs are not permitted"),
    ({"feedback": [{"id": f"r{i}", "label": "a"} for i in range(1001)]},
     "invalid feedback: feedback: List should have at most 1000 items after validation, not 1001"),
])
def test_bad_batches_get_a_stable_message(payload, message):
    with pytest.raises(BadRequest) as err:
        parse_batch(payload)
    assert err.value.public_message == message


def test_a_batch_is_stored_as_one_frame_under_the_callers_tenant():
    batch = labels(("r1", 0, "high"), ("r1", 1, "low"), ("r2", 0, "high"))
    key = feedback_key("acme", "project-risk", AT)
    assert key.startswith("feedback/tenant=acme/model=project-risk/date=2026-11-30/hour=17/1796059800000-")
    frame = stored(batch, tenant="acme", model="project-risk")
    assert (frame.tenant, frame.model, frame.rows) == ("acme", "project-risk", 3)
    assert frame.request_ids.tolist() == [b"r1", b"r1", b"r2"]
    assert frame.numeric["__row"].tolist() == [0, 1, 0]
    codes, cats = frame.categorical["label"]
    assert [cats[c] for c in codes] == ["high", "low", "high"]
    assert set(frame.times_ms.tolist()) == {int(AT.timestamp() * 1000)}


# --- the join -----------------------------------------------------------------------------------------------

def test_rows_of_a_request_are_numbered_within_it():
    ids = np.array([b"a", b"a", b"a", b"b", b"c", b"c", b"a"], dtype=f"S{ID_WIDTH}")
    assert batch_rows(ids).tolist() == [0, 1, 2, 0, 0, 1, 0]


def test_the_latest_label_of_a_request_row_wins():
    first = stored(labels(("r1", 0, "low"), ("r2", 0, "low")), at=AT)
    later = stored(labels(("r1", 0, "high")), at=AT.replace(minute=45))
    fb = Feedback.from_frames([later, first])            # listed out of order: time decides, not order
    assert (fb.kind, fb.items, fb.received) == ("label", 2, 3)
    acc = AccuracyAccumulator(fb)
    acc.add(captured(["r1", "r2"], ["high", "high"]))
    assert (acc.matched, acc.correct) == (2, 1)          # r1: high == high; r2: high != low


def test_accuracy_joins_by_request_and_row_and_counts_the_unmatched():
    ids = ["r1", "r1", "r2", "r3"]
    frame = captured(ids, ["a", "b", "a", "c"])          # r1 is a batch of two rows
    fb = Feedback.from_frames([stored(labels(
        ("r1", 1, "b"), ("r2", 0, "b"), ("r3", 0, "c"), ("r1", 5, "a"), ("never-captured", 0, "a")))])
    acc = AccuracyAccumulator(fb)
    acc.add(frame)
    assert (acc.matched, acc.correct, acc.unmatched) == (3, 2, 2)
    assert acc.value() == pytest.approx(2 / 3)


def test_regression_error_matches_numpy():
    rng = np.random.default_rng(3)
    pred, truth = rng.normal(size=50), rng.normal(size=50)
    ids = [f"q{i}" for i in range(50)]
    fb = Feedback.from_frames([decode_frame(encode_batch("acme", "m", FeedbackBatch.model_validate(
        {"feedback": [{"id": i, "value": float(v)} for i, v in zip(ids, truth, strict=True)]}), AT))])
    acc = AccuracyAccumulator(fb)
    acc.add(captured(ids, pred))
    err = pred.astype(np.float32).astype(np.float64) - truth.astype(np.float32)
    assert acc.value() == pytest.approx(np.abs(err).mean(), rel=1e-6)
    assert acc.rmse() == pytest.approx(np.sqrt((err ** 2).mean()), rel=1e-6)


def test_ids_longer_than_the_capture_keeps_join_on_the_same_prefix():
    long_id = "x" * 40
    fb = Feedback.from_frames([stored(labels((long_id, 0, "a")))])
    acc = AccuracyAccumulator(fb)
    acc.add(captured([long_id], ["a"]))
    assert acc.matched == 1


def test_labels_for_a_numeric_prediction_are_counted_not_joined():
    acc = AccuracyAccumulator(Feedback.from_frames([stored(labels(("r1", 0, "a")))]))
    acc.add(captured(["r1"], np.array([0.5])))
    assert (acc.matched, acc.kind_mismatch) == (0, 1)


# --- the verdict --------------------------------------------------------------------------------------------

def accuracy_of(correct: int, total: int) -> AccuracyAccumulator:
    ids = [f"r{i}" for i in range(total)]
    fb = Feedback.from_frames([stored(labels(*[(i, 0, "yes") for i in ids]))])
    acc = AccuracyAccumulator(fb)
    acc.add(captured(ids, ["yes"] * correct + ["no"] * (total - correct)))
    return acc


@pytest.mark.parametrize(("correct", "verdict"), [(76, "ok"), (77, "ok"), (75, "drop"), (60, "drop")])
def test_a_drop_of_three_points_is_accuracy_drift(correct, verdict):
    report = accuracy_report(accuracy_of(correct, 100), Performance(count=500, accuracy=0.78), Thresholds(),
                             [], "2026-11-30T18:00:00Z")
    assert report["verdict"] == verdict
    assert report["value"] == pytest.approx(correct / 100) and report["baseline"] == 0.78
    assert report["trend"] == [{"window_end": "2026-11-30T18:00:00Z", "value": correct / 100,
                                "matched": 100}]


def test_few_labels_are_insufficient_data_and_no_baseline_is_said():
    small = accuracy_report(accuracy_of(0, 29), Performance(count=500, accuracy=0.9), Thresholds(), [], "t")
    assert small["verdict"] == "insufficient_data" and "at least 30" in small["reason"]
    none = accuracy_report(accuracy_of(10, 40), None, Thresholds(), [], "t")
    assert none["verdict"] == "no_baseline"
    custom = accuracy_report(accuracy_of(85, 100), Performance(count=9, accuracy=0.9),
                             Thresholds(accuracy_drop=0.05), [], "t")
    assert custom["verdict"] == "drop"


# --- the service --------------------------------------------------------------------------------------------

class Writes:
    def __init__(self, fail: bool = False) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail = fail

    def __call__(self, key: str, data: bytes) -> None:
        if self.fail:
            raise ConnectionError("s3 is down")
        self.objects[key] = data


def service(writes: Writes) -> InferenceService:
    registry, store = MemoryRegistry(), MemoryArtifactStore()
    sm.register(registry, store, sm.tabular_version())                     # shared
    sm.register(registry, store, sm.classifier_version("acme"))            # acme's own
    sm.register(registry, store, sm.embedding_version())
    return InferenceService(registry=registry, store=store, put_object=writes,
                            settings=ServingSettings(artifact_bucket="b", registry_table="t"))


BODY = json.dumps({"feedback": [{"id": "r1", "label": "bug"}]})


def test_feedback_is_stored_under_the_callers_tenant_and_model():
    writes = Writes()
    reply = service(writes).feedback("globex", "project-risk", BODY)       # a shared model
    assert (reply.status, json.loads(reply.body)) == (202, {"model": "project-risk", "accepted": 1})
    (key,) = writes.objects
    assert key.startswith("feedback/tenant=globex/model=project-risk/")
    assert decode_frame(writes.objects[key]).tenant == "globex"


def test_another_tenants_model_answers_like_a_missing_one():
    svc = service(Writes())
    with pytest.raises(ModelNotFound) as foreign:
        svc.feedback("globex", "work-item-classifier", BODY)
    with pytest.raises(ModelNotFound) as missing:
        svc.feedback("globex", "no-such-model", BODY)
    assert foreign.value.status == missing.value.status == 404
    assert foreign.value.public_message == "model 'work-item-classifier' not found"


def test_a_failed_write_is_a_retryable_error_not_a_silent_loss():
    with pytest.raises(ModelUnavailable) as err:
        service(Writes(fail=True)).feedback("acme", "project-risk", BODY)
    assert err.value.status == 503 and err.value.retry_after == 5
    assert err.value.public_message == "feedback could not be stored"


def test_the_response_id_is_what_feedback_names():
    svc = service(Writes())
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8], "data": [[1] * 8]}]}
    assigned = json.loads(svc.infer("acme", "project-risk", None, json.dumps(body),
                                    request_id="apigw-1").body)
    own = json.loads(svc.infer("acme", "project-risk", None, json.dumps({**body, "id": "mine"}),
                               request_id="apigw-2").body)
    assert (assigned["id"], own["id"]) == ("apigw-1", "mine")
