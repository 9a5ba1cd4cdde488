"""The Uploads API through the official SDK against a live server: upload_file_chunked splits a file
into parts, sends them and completes the upload; the File it makes holds the bytes in order."""

from __future__ import annotations

import hashlib

import openai
import pytest

from tools.datasets import short_dataset
from tests.spec_check import assert_matches


def test_upload_file_chunked_makes_a_fine_tune_file(client, tmp_path):
    data = short_dataset(40)
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    part_size = len(data) // 3 + 1  # three parts
    upload = client.uploads.upload_file_chunked(file=path, mime_type="text/jsonl", purpose="fine-tune",
                                                part_size=part_size, md5=hashlib.md5(data).hexdigest())
    assert_matches(upload.model_dump(exclude_unset=True), "Upload")
    assert upload.status == "completed" and upload.bytes == len(data) and upload.filename == "train.jsonl"
    assert upload.file is not None and upload.file.purpose == "fine-tune" and upload.file.bytes == len(data)
    assert client.files.content(upload.file.id).read() == data
    assert client.files.retrieve(upload.file.id).id == upload.file.id


def test_bad_completions_are_4xx_naming_the_field(client):
    upload = client.uploads.create(bytes=4, filename="a.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    part = client.uploads.parts.create(upload_id=upload.id, data=b"abcd")
    with pytest.raises(openai.BadRequestError) as e:
        client.uploads.complete(upload_id=upload.id, part_ids=[part.id, part.id])
    assert e.value.body["param"] == "part_ids"
    with pytest.raises(openai.BadRequestError) as e:
        client.uploads.complete(upload_id=upload.id, part_ids=[part.id], md5=hashlib.md5(b"dcba").hexdigest())
    assert e.value.body["param"] == "md5"
    with pytest.raises(openai.APIStatusError) as e:
        client.uploads.parts.create(upload_id=upload.id, data=b"too long for the upload")
    assert e.value.status_code == 413 and e.value.body["param"] == "data"
    assert client.uploads.cancel(upload.id).status == "cancelled"
    with pytest.raises(openai.ConflictError) as e:
        client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    assert e.value.body["param"] == "upload_id"
