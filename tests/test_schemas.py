"""schemas.py and jsonfiles.py: the session's file formats, checked without training."""

from __future__ import annotations

import json

import pytest

from mlwidgets import schemas, side_schemas
from mlwidgets.errors import CheckpointError, SessionError
from mlwidgets.parameters import ModelParameters, SessionParameters


def checkpoint_record(**changes) -> dict:
    record = {
        "format": schemas.CHECKPOINT_FORMAT, "session_id": "session-1", "phase": "training",
        "iteration": 1, "step_number": 3, "created_at": 1.7e9,
        "metrics": {"train_loss": 0.5, "valid_loss": None},
        "files": {"model.safetensors": {"sha256": "0" * 64, "size": 5}},
        "model": {"architecture": "small_cnn", "classes": ["a", "b"], "image_size": 16,
                  "mean": [0.5] * 3, "std": [0.25] * 3},
        "optimizer": {"n_params": 2, "scalars": {"0": {"step": 3}}, "hypers": [{"lr": 0.1}]},
        "confusion": [[1, 0], [0, 1]],
    }
    record.update(changes)
    return record


def load(data: bytes) -> dict:
    return schemas.load_checkpoint_record(data, "x/checkpoint.json", CheckpointError)


def test_a_record_round_trips_through_its_digest():
    data = schemas.encode_record(checkpoint_record())
    assert data.endswith(b'"\n}\n') and b'"digest": "sha256:' in data
    assert load(data) == checkpoint_record()


def test_every_single_bit_flip_of_a_record_is_detected():
    data = schemas.encode_record(checkpoint_record())
    for at in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[at] ^= 1 << bit
            with pytest.raises(CheckpointError, match="checkpoint.json"):
                load(bytes(damaged))


def test_a_record_holding_the_zero_digest_is_still_signed_in_its_own_place():
    record = checkpoint_record(metrics={"note": None}, session_id="sha256:" + "0" * 64)
    assert load(schemas.encode_record(record))["session_id"] == "sha256:" + "0" * 64


def test_a_record_without_digest_from_an_older_version_is_read_and_checked():
    old = checkpoint_record()
    del old["confusion"], old["optimizer"]
    assert load(json.dumps(old).encode()) == old
    with pytest.raises(CheckpointError, match="iteration"):
        load(json.dumps({**old, "iteration": -1}).encode())


def test_pause_fields_are_optional_bounded_json():
    resume = {"batch": 3, "order": list(range(10)), "rng": {"torch": [1, 2, 3]}}
    record = checkpoint_record(partial=True, resume=resume)
    assert load(schemas.encode_record(record))["resume"] == resume
    deep: list = []
    for _ in range(schemas.MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(CheckpointError, match="nesting"):
        load(json.dumps(checkpoint_record(resume={"x": deep})).encode())


@pytest.mark.parametrize("text,what", [
    (b"{\"a\": NaN}", "not valid JSON"), (b"{\"a\": 1e400}", "out of range"),
    (b"[" * 10_000, "not valid JSON"), (b"\xff\xfe", "not valid JSON"), (b"", "not valid JSON"),
])
def test_json_is_bounded(text, what):
    with pytest.raises(SessionError, match=what):
        schemas.parse_json(text, "f.json")


def session_record(**changes) -> dict:
    record = {"format": schemas.SESSION_FORMAT, "id": "session-1", "created_at": 1.7e9,
              "parameters": ModelParameters().to_dict(),
              "session_parameters": SessionParameters().to_dict(), "classes": ["a", "b"],
              "state": "paused", "pid": None, "a_later_field": {"kept": True}}
    record.update(changes)
    return record


def test_session_records_keep_later_fields_and_check_parameters():
    record = schemas.load_session_record(schemas.encode_record(session_record()), "s.json")
    assert isinstance(record["parameters"], ModelParameters)
    assert record["a_later_field"] == {"kept": True}
    bad = session_record(parameters={**ModelParameters().to_dict(), "image_size": 2048})
    with pytest.raises(SessionError, match="image_size 2048 is above 1024"):
        schemas.load_session_record(json.dumps(bad).encode(), "s.json")


def test_data_records_name_the_bad_item():
    record = {"classes": ["a"], "train": [["x.png", "a"], ["y.png", "b"]], "valid": []}
    with pytest.raises(SessionError, match=r"train\.1: label 'b'"):
        schemas.load_data_record(json.dumps(record).encode(), "data.json")


@pytest.mark.parametrize("line,kept", [
    (b'{"type": "state", "state": "running", "time": 1.5}', True),
    (b'{"type": "report", "time": 1, "phase": "training", "iteration": 1,'
     b' "total_iterations": 2, "elapsed": 0.5, "metrics": {"train_loss": 0.1}}', True),
    (b'{"type": "a_later_kind", "time": 1}', True),
    (b'{"type": "report", "time": 1}', False), (b'{"type": "state", "state": "x", "time": 1}',
                                                 False),
    (b"[]", False), (b"\0\0\0", False), (b"{\"time\": -1, \"type\": \"x\"}", False),
])
def test_events_lines(line, kept):
    assert (schemas.event_from_line(line) is not None) == kept


def test_export_records():
    record = {"kind": "mlwidgets.export/1", "path": "/x/m.mlpackage", "format": "mlprogram",
              "size_bytes": 10, "precision": "float32", "quantize": None, "sha256": "0" * 64,
              "sha256_of": "Manifest.json", "session_id": "s", "checkpoint_id": "c",
              "iteration": 1, "step_number": 1, "created_at": 1.0, "date": "2026",
              "seconds": 0.5, "metadata": {"author": ""}}
    assert side_schemas.load_export_record(json.dumps(record).encode(), "e.json") == record
    with pytest.raises(SessionError, match="format"):
        side_schemas.load_export_record(json.dumps({**record, "format": "x"}).encode(), "e.json")


def test_a_resume_record_keeps_its_types_and_is_bounded():
    resume = {"version": 1, "iteration": 2, "batch": 3, "batches": 5,
              "totals": {"n": 10, "loss": 1.5}, "rng": {"python_gauss_next": None}}
    loaded = load(schemas.encode_record(checkpoint_record(partial=True, resume=resume)))
    assert loaded["resume"] == resume and isinstance(loaded["resume"]["totals"]["n"], int)
    with pytest.raises(CheckpointError, match="batch"):
        load(json.dumps(checkpoint_record(resume={**resume, "batch": -1})).encode())
