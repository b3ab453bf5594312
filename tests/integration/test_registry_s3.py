"""S3ArtifactStore on moto: the key layout, ModelUnavailable without leaking keys, streaming digests and
no-clobber writes."""

from __future__ import annotations

import hashlib
import io

import pytest
from moto import mock_aws

from tenantml import resources
from tenantml.aws import client
from tenantml.errors import ModelUnavailable
from tenantml.local.provision import create_resources
from tenantml.registry import ArtifactDigest
from tenantml.registry.memory import MemoryArtifactStore
from tenantml.registry.s3 import S3ArtifactStore
from tenantml.settings import AwsSettings

AWS = AwsSettings(region="us-east-1")
NAMES = resources.LocalNames.make("tenantml-test")
BUCKET = NAMES.buckets[resources.ARTIFACT_BUCKET.id]


@pytest.fixture(params=["s3", "memory"])
def store(request):
    if request.param == "memory":
        yield MemoryArtifactStore()
        return
    with mock_aws():
        create_resources(AWS, NAMES)
        yield S3ArtifactStore(BUCKET, AWS, chunk_size=7)   # tiny chunks: the digest really streams


def test_put_get_round_trip_under_the_documented_key(store):
    store.put("acme", "risk", "3", "model.onnx", b"\x00onnx\xff")
    assert store.get("acme", "risk", "3", "model.onnx") == b"\x00onnx\xff"
    if isinstance(store, S3ArtifactStore):
        body = client("s3", AWS).get_object(Bucket=BUCKET, Key="models/acme/risk/3/model.onnx")["Body"].read()
        assert body == b"\x00onnx\xff"


def test_missing_artifact_is_unavailable_and_the_key_stays_in_the_log_detail(store):
    with pytest.raises(ModelUnavailable) as exc:
        store.get("acme", "risk", "3", "model.onnx")
    err = exc.value
    assert (err.status, err.public_message, err.headers) == (503, "model unavailable", {"Retry-After": "30"})
    assert "models/acme/risk/3/model.onnx" in err.detail
    assert "acme" not in err.public_message and "s3://" not in err.public_message


def test_digest_streams_the_object(store):
    data = bytes(range(256)) * 40
    assert store.digest("acme", "risk", "1", "model.onnx") is None
    store.put("acme", "risk", "1", "model.onnx", data)
    assert store.digest("acme", "risk", "1", "model.onnx") == ArtifactDigest(hashlib.sha256(data).hexdigest(),
                                                                             len(data))


def test_download_streams_the_object_into_a_file(store):
    data = bytes(range(256)) * 40
    store.put("acme", "risk", "1", "model.onnx", data)
    chunks: list[bytes] = []

    class Sink(io.RawIOBase):
        def write(self, b):
            chunks.append(bytes(b))
            return len(b)

    store.download("acme", "risk", "1", "model.onnx", Sink())
    assert b"".join(chunks) == data
    if isinstance(store, S3ArtifactStore):
        assert len(chunks) > 1 and max(map(len, chunks)) <= 7   # written chunk by chunk, never whole
    with pytest.raises(ModelUnavailable) as exc:
        store.download("acme", "risk", "2", "model.onnx", Sink())
    assert "models/acme/risk/2/model.onnx" in exc.value.detail and "s3://" not in exc.value.public_message


def test_put_if_absent_never_clobbers(store):
    assert store.put_if_absent("acme", "risk", "1", "model.onnx", b"first") is None
    existing = store.put_if_absent("acme", "risk", "1", "model.onnx", b"second")
    assert existing == ArtifactDigest(hashlib.sha256(b"first").hexdigest(), 5)
    assert store.get("acme", "risk", "1", "model.onnx") == b"first"


@pytest.mark.parametrize("name", ["../other/model.onnx", "", ".hidden", "a/b"])
def test_file_names_cannot_escape_the_version_prefix(store, name):
    from tenantml.errors import BadRequest

    with pytest.raises(BadRequest):
        store.put("acme", "risk", "1", name, b"x")
