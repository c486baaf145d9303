"""A session folder from anyone is safe to open: hostile checkpoints, records and events.

Each case damages a private copy of one tiny trained session (small_cnn, 16 px, 2
iterations, made once for the module) the way an attacker or an unlucky disk would, then
asserts the exact behaviour: refused with the file named (or, where the damage is
harmless, the same meaning), nothing opened outside the session, no unpickling, no
process started, no hang (each case runs within 10 s; see hostile_guard.py).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import hostile_session
import pytest
from hostile_session import (
    checkpoint_dirs,
    listing,
    load_latest,
    record_of,
    replace_file,
    rewrite,
    run,
    session_of,
)

import mlwidgets as mw
from mlwidgets import schemas
from mlwidgets.checkpoints import Checkpoint, CheckpointError
from mlwidgets.errors import DataError, SessionError, UnsafeFileError
from mlwidgets.files import append_json_line, sha256_bytes
from mlwidgets.follow import SessionFollower

made_fixture = pytest.fixture(scope="module", name="made")(hostile_session.make_session)
case_fixture = pytest.fixture(name="case")(hostile_session.make_case)


def safetensors_bytes(header: dict, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + body


def assert_damaged(error: BaseException | None, directory: Path, name: str) -> None:
    assert isinstance(error, CheckpointError), repr(error)
    text = str(error)
    assert f"checkpoint {directory.name}" in text and name in text, text
    assert "\n" not in text


def assert_listed_damaged(case: Path, directory: Path, name: str) -> None:
    (usable, damaged), error = run(case, lambda: listing(case))
    assert error is None, error
    assert directory.name in damaged and directory.name not in usable
    assert_damaged(damaged[directory.name], directory, name)
    assert len(usable) == len(checkpoint_dirs(case)) - 1  # the others stay usable


# -- 1. reads never leave the session --------------------------------------------------


def test_weights_linked_to_a_valid_copy_elsewhere_are_refused(case):
    ckpt = checkpoint_dirs(case)[-1]
    outside = case / "elsewhere" / "model.safetensors"
    shutil.move(ckpt / "model.safetensors", outside)  # same bytes: size and hash match
    os.symlink(outside, ckpt / "model.safetensors")
    _, error = run(case, lambda: load_latest(case))
    assert_damaged(error, ckpt, "model.safetensors")
    assert "symlink" in str(error)


def test_weights_linked_to_dev_zero_are_refused_without_reading(case):
    ckpt = checkpoint_dirs(case)[-1]
    (ckpt / "model.safetensors").unlink()
    os.symlink("/dev/zero", ckpt / "model.safetensors")
    _, error = run(case, lambda: load_latest(case))
    assert_damaged(error, ckpt, "model.safetensors")


def test_weights_that_are_a_fifo_are_refused_without_waiting(case):
    ckpt = checkpoint_dirs(case)[-1]
    (ckpt / "model.safetensors").unlink()
    os.mkfifo(ckpt / "model.safetensors")
    _, error = run(case, lambda: load_latest(case))
    assert_damaged(error, ckpt, "model.safetensors")
    assert "FIFO" in str(error)


def test_optimizer_file_linked_elsewhere_is_refused(case):
    ckpt = checkpoint_dirs(case)[-1]
    outside = case / "elsewhere" / "optimizer.safetensors"
    shutil.move(ckpt / "optimizer.safetensors", outside)
    os.symlink(outside, ckpt / "optimizer.safetensors")
    _, error = run(case, lambda: Checkpoint.from_directory(ckpt).load_optimizer_state())
    assert_damaged(error, ckpt, "optimizer.safetensors")


def test_record_linked_to_a_copy_elsewhere_lists_the_checkpoint_as_damaged(case):
    ckpt = checkpoint_dirs(case)[-1]
    shutil.move(ckpt / "checkpoint.json", case / "elsewhere" / "checkpoint.json")
    os.symlink(case / "elsewhere" / "checkpoint.json", ckpt / "checkpoint.json")
    assert_listed_damaged(case, ckpt, "checkpoint.json")


def test_record_that_is_a_fifo_lists_the_checkpoint_as_damaged(case):
    ckpt = checkpoint_dirs(case)[-1]
    (ckpt / "checkpoint.json").unlink()
    os.mkfifo(ckpt / "checkpoint.json")
    assert_listed_damaged(case, ckpt, "checkpoint.json")


def test_record_that_is_a_folder_lists_the_checkpoint_as_damaged(case):
    ckpt = checkpoint_dirs(case)[-1]
    (ckpt / "checkpoint.json").unlink()
    (ckpt / "checkpoint.json").mkdir()
    assert_listed_damaged(case, ckpt, "checkpoint.json")


def test_checkpoint_folder_linked_elsewhere_is_listed_damaged_not_loaded(case):
    ckpt = checkpoint_dirs(case)[-1]
    shutil.move(ckpt, case / "elsewhere" / ckpt.name)
    os.symlink(case / "elsewhere" / ckpt.name, ckpt)
    (usable, damaged), error = run(case, lambda: listing(case))
    assert error is None and ckpt.name in damaged and ckpt.name not in usable
    assert "symlink" in str(damaged[ckpt.name]) and ckpt.name in str(damaged[ckpt.name])


def test_checkpoints_folder_linked_elsewhere_is_refused(case):
    folder = session_of(case) / "checkpoints"
    shutil.move(folder, case / "elsewhere" / "checkpoints")
    os.symlink(case / "elsewhere" / "checkpoints", folder)
    _, error = run(case, lambda: listing(case))
    assert isinstance(error, CheckpointError) and "checkpoints" in str(error)
    assert "symlink" in str(error)


@pytest.mark.parametrize("name", ["../../../elsewhere/secret", "/etc/passwd",
                                  "sub/model.safetensors", ".hidden", "checkpoint.json"])
def test_file_names_that_leave_the_checkpoint_are_refused(case, name):
    ckpt = checkpoint_dirs(case)[-1]
    (case / "elsewhere" / "secret").write_bytes(b"secret")
    rewrite(ckpt, lambda r: r["files"].__setitem__(
        name, {"sha256": sha256_bytes(b"secret"), "size": 6}))
    assert_listed_damaged(case, ckpt, "not a plain file name")
    _, error = run(case, lambda: Checkpoint.from_directory(ckpt).verify())
    assert_damaged(error, ckpt, "checkpoint.json")


def test_missing_weights_are_reported_missing(case):
    ckpt = checkpoint_dirs(case)[-1]
    (ckpt / "model.safetensors").unlink()
    _, error = run(case, lambda: load_latest(case))
    assert_damaged(error, ckpt, "model.safetensors")
    assert "missing" in str(error)


def test_truncated_weights_are_refused_by_size_before_reading(case):
    ckpt = checkpoint_dirs(case)[-1]
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[:-10])
    _, error = run(case, lambda: load_latest(case))
    assert_damaged(error, ckpt, "model.safetensors")
    assert "not the" in str(error) and "recorded" in str(error)


def test_a_flipped_bit_in_the_weights_is_refused(case):
    ckpt = checkpoint_dirs(case)[-1]
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-3] ^= 0x10
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    _, error = run(case, lambda: load_latest(case))
    assert_damaged(error, ckpt, "model.safetensors")
    assert "sha256" in str(error)


def test_a_pickle_disguised_as_weights_is_never_unpickled(case):
    ckpt = checkpoint_dirs(case)[-1]
    marker = case / "elsewhere" / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    replace_file(ckpt, "model.safetensors", pickle.dumps(Payload()))
    _, error = run(case, lambda: load_latest(case))
    assert_damaged(error, ckpt, "model.safetensors")
    assert "safetensors" in str(error) and not marker.exists()


def test_an_oversized_record_is_refused_before_it_is_read(case):
    ckpt = checkpoint_dirs(case)[-1]
    with open(ckpt / "checkpoint.json", "r+b") as f:  # sparse: costs no disk
        f.truncate(schemas.MAX_CHECKPOINT_RECORD_BYTES + 1)
    assert_listed_damaged(case, ckpt, "larger than")


# -- 2. checkpoint.json is protected by its digest ---------------------------------------


@pytest.mark.parametrize("where", ["session_id", "n_params", "sha256", "digest", "phase"])
def test_a_flipped_bit_in_the_record_is_detected(case, where):
    ckpt = checkpoint_dirs(case)[-1]
    data = bytearray((ckpt / "checkpoint.json").read_bytes())
    at = data.index(f'"{where}"'.encode()) + len(where) + 6  # inside the value
    data[at] ^= 0x01
    (ckpt / "checkpoint.json").write_bytes(bytes(data))
    assert_listed_damaged(case, ckpt, "checkpoint.json")


@pytest.mark.parametrize("damage", ["truncate", "append", "empty", "space_to_tab", "nul_run"])
def test_a_damaged_record_is_listed_damaged(case, damage):
    ckpt = checkpoint_dirs(case)[-1]
    data = (ckpt / "checkpoint.json").read_bytes()
    data = {"truncate": data[:len(data) // 2], "append": data + b"x",
            "empty": b"", "space_to_tab": data.replace(b"  ", b"\t ", 1),
            "nul_run": data[:40] + b"\0" * 64 + data[104:]}[damage]
    (ckpt / "checkpoint.json").write_bytes(data)
    assert_listed_damaged(case, ckpt, "checkpoint.json")


@pytest.mark.parametrize("value", ["[]", "null", '"a string"', "42"])
def test_a_record_that_is_not_an_object_is_listed_damaged(case, value):
    ckpt = checkpoint_dirs(case)[-1]
    (ckpt / "checkpoint.json").write_text(value)
    assert_listed_damaged(case, ckpt, "not a record")


def test_a_record_written_before_digests_still_loads(case):
    ckpt = checkpoint_dirs(case)[-1]
    rewrite(ckpt, lambda r: None, sign=False)  # as older versions wrote it
    (usable, damaged), error = run(case, lambda: listing(case))
    assert error is None and not damaged and ckpt.name in usable
    classifier, error = run(case, lambda: load_latest(case))
    assert error is None and classifier.classes == ["circle", "square"]


def test_damage_is_reported_by_get_as_damaged_not_as_unknown(case):
    ckpt = checkpoint_dirs(case)[-1]
    (ckpt / "checkpoint.json").write_text("{")
    session = mw.TrainingSession.restore(session_of(case))
    _, error = run(case, lambda: session.checkpoint(ckpt.name))
    assert_damaged(error, ckpt, "checkpoint.json")


# -- 3. one bad value affects only its own checkpoint -------------------------------------

RAW_VALUES = {  # JSON spellings a record of an older version (no digest) might hold
    "iteration": "1e400", "created_at": "1e300", "step_number": "-1",
}


@pytest.mark.parametrize("field,raw", sorted(RAW_VALUES.items()))
def test_an_out_of_range_number_makes_only_its_checkpoint_damaged(case, field, raw):
    ckpt = checkpoint_dirs(case)[-1]
    record = record_of(ckpt)
    text = json.dumps({**record, field: "PLACEHOLDER"}).replace('"PLACEHOLDER"', raw)
    (ckpt / "checkpoint.json").write_text(text)
    assert_listed_damaged(case, ckpt, field if raw != "1e400" else "out of range")


def test_a_nan_metric_makes_only_its_checkpoint_damaged(case):
    ckpt = checkpoint_dirs(case)[-1]
    text = json.dumps(record_of(ckpt)).replace('"train_loss": ', '"train_loss": NaN, "x": ', 1)
    (ckpt / "checkpoint.json").write_text(text)
    assert_listed_damaged(case, ckpt, "checkpoint.json")


def test_deep_nesting_makes_only_its_checkpoint_damaged(case):
    ckpt = checkpoint_dirs(case)[-1]
    text = json.dumps(record_of(ckpt))[:-1] + ', "resume": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (ckpt / "checkpoint.json").write_text(text)
    assert_listed_damaged(case, ckpt, "checkpoint.json")


SIGNED_CHANGES = {  # a sender who recomputes the digest: the schema still refuses these
    "metrics_list": (lambda r: r.__setitem__("metrics", [1, 2]), "metrics"),
    "no_sha256": (lambda r: r["files"]["model.safetensors"].pop("sha256"), "sha256"),
    "image_size_1e9": (lambda r: r["model"].__setitem__("image_size", 10**9), "image_size"),
    "classes_20000": (lambda r: r["model"].__setitem__(
        "classes", [f"c{i}" for i in range(20_000)]), "classes"),
    "n_params_1e12": (lambda r: r["optimizer"].__setitem__("n_params", 10**12), "n_params"),
    "confusion_not_square": (lambda r: r.__setitem__("confusion", [[1, 2, 3], [4]]),
                             "confusion"),
    "unknown_phase": (lambda r: r.__setitem__("phase", "hacking"), "phase"),
    "unknown_field": (lambda r: r.__setitem__("surprise", 1), "surprise"),
    "partial_not_bool": (lambda r: r.__setitem__("partial", {"x": 1}), "partial"),
    "mlp_layers_huge": (lambda r: r["model"].__setitem__("mlp_layers", [10**9]), "mlp_layers"),
    "architecture_not_a_name": (lambda r: r["model"].__setitem__("architecture", "../evil x"),
                                "architecture"),
    "repeated_classes": (lambda r: r["model"].__setitem__("classes", ["a", "a"]), "classes"),
}


@pytest.mark.parametrize("change", sorted(SIGNED_CHANGES))
def test_a_re_signed_record_of_the_wrong_shape_is_refused(case, change):
    ckpt = checkpoint_dirs(case)[-1]
    mutate, field = SIGNED_CHANGES[change]
    rewrite(ckpt, mutate)
    assert_listed_damaged(case, ckpt, field)


def test_weights_of_another_shape_are_refused_in_one_line(case):
    ckpt = checkpoint_dirs(case)[-1]
    rewrite(ckpt, lambda r: (r["model"].__setitem__("classes", ["a", "b", "c"]),
                             r.__setitem__("confusion", None)))
    _, error = run(case, lambda: load_latest(case))
    assert isinstance(error, CheckpointError), repr(error)
    assert "does not match its architecture" in str(error) and "\n" not in str(error)
    assert "model.safetensors" in str(error)


@pytest.mark.parametrize("header,body", [
    ({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 16]}}, b"\0" * 16),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 10**12]}}, b"\0" * 16),
    ({"w": {"dtype": "F32", "shape": "big", "data_offsets": [0, 16]}}, b"\0" * 16),
    ([1, 2, 3], b""),
])
def test_safetensors_headers_that_lie_are_refused(case, header, body):
    ckpt = checkpoint_dirs(case)[-1]
    replace_file(ckpt, "model.safetensors", safetensors_bytes(header, body))
    _, error = run(case, lambda: load_latest(case))
    assert_damaged(error, ckpt, "model.safetensors")


def test_a_safetensors_header_size_beyond_the_file_is_refused(case):
    ckpt = checkpoint_dirs(case)[-1]
    replace_file(ckpt, "model.safetensors", (10**15).to_bytes(8, "little") + b"{}")
    _, error = run(case, lambda: load_latest(case))
    assert_damaged(error, ckpt, "model.safetensors")


def test_optimizer_tensors_naming_no_parameter_are_refused(case):
    ckpt = checkpoint_dirs(case)[-1]
    import torch
    from safetensors.torch import save

    replace_file(ckpt, "optimizer.safetensors", save({"99999.exp_avg": torch.zeros(1)}))
    _, error = run(case, lambda: Checkpoint.from_directory(ckpt).load_optimizer_state())
    assert_damaged(error, ckpt, "optimizer.safetensors")


def test_an_optimizer_for_another_network_is_refused(case):
    ckpt = checkpoint_dirs(case)[-1]
    _, error = run(case, lambda: Checkpoint.from_directory(ckpt).load_optimizer_state(
        n_params=3))
    assert_damaged(error, ckpt, "parameters")


# -- 4. session.json, data.json, events.jsonl ----------------------------------------------


def restore(case: Path, **kwargs):
    return mw.TrainingSession.restore(session_of(case), **kwargs)


def write_record(path: Path, record, sign: bool = False) -> None:
    data = schemas.encode_record(record) if sign else json.dumps(record).encode()
    path.write_bytes(data)


def loaded(path: Path) -> dict:
    record = json.loads(path.read_bytes())
    record.pop("digest", None)
    return record


def assert_session_error(case: Path, name: str, kind=SessionError, **kwargs) -> None:
    _, error = run(case, lambda: restore(case, **kwargs))
    assert isinstance(error, kind), repr(error)
    assert name in str(error) and "\n" not in str(error), str(error)


SESSION_DAMAGE = {
    "a_list": lambda r: [r],
    "null": lambda r: None,
    "parameters_int": lambda r: {**r, "parameters": 5},
    "no_id": lambda r: {k: v for k, v in r.items() if k != "id"},
    "image_size_1e9": lambda r: {**r, "parameters": {**r["parameters"], "image_size": 10**9}},
    "iterations_1e9": lambda r: {**r, "session_parameters": {**r["session_parameters"],
                                                             "iterations": 10**9}},
    "unknown_parameter": lambda r: {**r, "parameters": {**r["parameters"], "evil": 1}},
    "classes_not_list": lambda r: {**r, "classes": {"a": 1}},
    "unknown_state": lambda r: {**r, "state": "owned"},
}


@pytest.mark.parametrize("damage", sorted(SESSION_DAMAGE))
def test_session_json_of_the_wrong_shape_is_refused_naming_it(case, damage):
    path = session_of(case) / "session.json"
    write_record(path, SESSION_DAMAGE[damage](loaded(path)))
    assert_session_error(case, "session.json")


def test_a_flipped_bit_in_session_json_is_detected(case):
    path = session_of(case) / "session.json"
    data = bytearray(path.read_bytes())
    data[data.index(b'"image_size": ') + 14] ^= 0x01
    path.write_bytes(bytes(data))
    assert_session_error(case, "session.json")


def test_session_json_linked_elsewhere_is_refused(case):
    path = session_of(case) / "session.json"
    shutil.move(path, case / "elsewhere" / "session.json")
    os.symlink(case / "elsewhere" / "session.json", path)
    assert_session_error(case, "session.json")


def test_session_json_that_is_a_fifo_is_refused_without_waiting(case):
    path = session_of(case) / "session.json"
    path.unlink()
    os.mkfifo(path)
    assert_session_error(case, "session.json")


def test_an_oversized_session_json_is_refused_before_reading(case):
    with open(session_of(case) / "session.json", "r+b") as f:
        f.truncate(schemas.MAX_SESSION_RECORD_BYTES + 1)
    assert_session_error(case, "session.json")


def test_a_session_json_without_digest_from_an_older_version_loads(case):
    path = session_of(case) / "session.json"
    write_record(path, loaded(path))
    session, error = run(case, lambda: restore(case))
    assert error is None and len(session.checkpoints) == 2


DATA_DAMAGE = {
    "null_paths": lambda r: {**r, "train": [[None, "circle"]]},
    "train_dict": lambda r: {**r, "train": {"a": 1}},
    "unknown_label": lambda r: {**r, "train": [[r["train"][0][0], "dragon"]]},
    "three_items": lambda r: {**r, "train": [[r["train"][0][0], "circle", "x"]]},
    "no_classes": lambda r: {k: v for k, v in r.items() if k != "classes"},
    "other_classes": lambda r: {**r, "classes": [*r["classes"], "dragon"]},
}


@pytest.mark.parametrize("damage", sorted(DATA_DAMAGE))
def test_data_json_of_the_wrong_shape_is_refused_naming_it(case, damage):
    path = session_of(case) / "data.json"
    write_record(path, DATA_DAMAGE[damage](loaded(path)))
    assert_session_error(case, "data.json")


@pytest.mark.parametrize("bad_path", ["/etc/shadow", "{root}/../elsewhere/x.png",
                                      "{root}/../../../../etc/passwd"])
def test_image_paths_outside_the_data_roots_are_refused(case, bad_path):
    path = session_of(case) / "data.json"
    record = loaded(path)
    root = record["roots"][0]
    record["train"][0][0] = bad_path.format(root=root)
    write_record(path, record)
    assert_session_error(case, "data.json", kind=DataError)
    _, error = run(case, lambda: restore(case))
    assert "data_root" in str(error)


def test_a_root_that_is_the_whole_file_system_is_refused(case):
    path = session_of(case) / "data.json"
    write_record(path, {**loaded(path), "roots": ["/"]})
    assert_session_error(case, "data.json", kind=DataError)


def test_data_root_rebases_the_images_of_a_session_someone_sent(case, made):
    moved = case / "my-photos"
    record = loaded(session_of(case) / "data.json")
    shutil.copytree(record["roots"][0], moved)
    session, error = run(case, lambda: restore(case, data_root=moved))
    assert error is None
    train, valid = session.split
    assert all(str(i.path).startswith(str(moved)) and i.path.is_file() for i in train + valid)


@pytest.mark.parametrize("line", [b"[1, 2]", b'"text"', b"42", b"null", b"\0" * 300,
                                  b"[" * 100_000, b'{"type": "report", "time": "soon"}',
                                  b'{"type": "report", "time": 1, "metrics": NaN}',
                                  b"{" + b" " * (2 << 20) + b"}"])
def test_events_lines_that_are_not_events_are_skipped_alone(case, line):
    path = session_of(case) / "events.jsonl"
    good = mw.TrainingSession.restore(session_of(case)).events
    with open(path, "ab") as f:
        f.write(line + b"\n")
    session, error = run(case, lambda: restore(case))
    assert error is None
    assert session.events == good  # the bad line is skipped, every good one kept
    follower, error = run(case, lambda: SessionFollower(session).poll())
    assert error is None and len(follower) >= 1


def test_events_linked_elsewhere_are_neither_read_nor_appended(case):
    path = session_of(case) / "events.jsonl"
    outside = case / "elsewhere" / "events.jsonl"
    shutil.move(path, outside)
    os.symlink(outside, path)
    before = outside.read_bytes()
    _, error = run(case, lambda: restore(case))
    assert isinstance(error, UnsafeFileError) and "events.jsonl" in str(error)
    _, error = run(case, lambda: append_json_line(path, {"type": "x"}))
    assert isinstance(error, UnsafeFileError) and outside.read_bytes() == before


def test_events_that_are_a_fifo_are_refused_without_waiting(case):
    path = session_of(case) / "events.jsonl"
    path.unlink()
    os.mkfifo(path)
    _, error = run(case, lambda: restore(case))
    assert isinstance(error, UnsafeFileError) and "events.jsonl" in str(error)


def test_a_lock_file_linked_elsewhere_is_refused_and_nothing_is_created(case):
    from mlwidgets.record import SessionLock

    target = case / "elsewhere" / "created-by-lock"
    (session_of(case) / ".lock").unlink(missing_ok=True)
    os.symlink(target, session_of(case) / ".lock")
    _, error = run(case, lambda: SessionLock(session_of(case)).acquire())
    assert isinstance(error, OSError | UnsafeFileError) and not target.exists()


def test_a_lock_file_that_is_a_fifo_is_refused_without_waiting(case):
    from mlwidgets.record import SessionLock

    (session_of(case) / ".lock").unlink(missing_ok=True)
    os.mkfifo(session_of(case) / ".lock")
    _, error = run(case, lambda: SessionLock(session_of(case)).acquire())
    assert isinstance(error, UnsafeFileError) and ".lock" in str(error)


def test_exports_linked_elsewhere_receive_no_record(case):
    from mlwidgets.coreml.metadata import exports_of
    from mlwidgets.files import mkdir_confined

    os.symlink(case / "elsewhere", session_of(case) / "exports")
    (case / "elsewhere" / "20260101T000000000000Z-x.json").write_text("{}")
    _, error = run(case, lambda: mkdir_confined(session_of(case), "exports"))
    assert isinstance(error, UnsafeFileError) and "exports" in str(error)
    records, error = run(case, lambda: exports_of(session_of(case)))
    assert error is None and records == []


def test_a_damaged_export_record_is_skipped(case):
    from mlwidgets.coreml.metadata import exports_of

    (session_of(case) / "exports").mkdir()
    (session_of(case) / "exports" / "a.json").write_text('{"kind": 5}')
    records, error = run(case, lambda: exports_of(session_of(case)))
    assert error is None and records == []


def test_a_control_file_that_is_a_fifo_is_ignored_without_waiting(case):
    os.mkfifo(session_of(case) / "control.json")
    session = restore(case)
    request, error = run(case, lambda: session.record.read_request())
    assert error is None and request is None


def test_a_model_is_never_exported_through_a_link_out_of_its_session(case, tmp_path):
    from mlwidgets.coreml.export import refuse_links_in_session

    os.symlink(case / "elsewhere", session_of(case) / "exports")
    classifier = load_latest(case)
    _, error = run(case, lambda: refuse_links_in_session(
        classifier, session_of(case) / "exports" / "m.mlpackage"))
    assert isinstance(error, UnsafeFileError) and "exports" in str(error)
    _, error = run(case, lambda: refuse_links_in_session(classifier, tmp_path / "m.mlpackage"))
    assert error is None  # anywhere outside the session is the user's choice


def test_a_session_names_its_damaged_checkpoints_for_viewers(case):
    ckpt = checkpoint_dirs(case)[0]
    (ckpt / "checkpoint.json").write_text("{")
    session = mw.TrainingSession.restore(session_of(case))
    damaged = session.damaged_checkpoints
    assert list(damaged) == [ckpt.name] and "checkpoint.json" in damaged[ckpt.name]
    assert [c.id for c in session.checkpoints] == [checkpoint_dirs(case)[1].name]
    usable, listed_damaged = session.checkpoint_listing()  # what the timeline shows
    assert usable == session.checkpoints and listed_damaged == damaged


def test_commits_never_go_through_a_linked_checkpoints_folder(case):
    from mlwidgets.checkpoint_store import CheckpointStore

    folder = session_of(case) / "checkpoints"
    shutil.move(folder, case / "elsewhere" / "checkpoints")
    os.symlink(case / "elsewhere" / "checkpoints", folder)
    store = CheckpointStore(folder, "session-x")
    _, error = run(case, store.open_for_writing)
    assert isinstance(error, CheckpointError) and "symlink" in str(error)


def test_the_features_cache_is_never_written_through_a_link(case):
    from mlwidgets import features

    os.symlink(case / "elsewhere", session_of(case) / "features")
    _, error = run(case, lambda: features.save(session_of(case) / "features", {"k": 1}, {}, {}))
    assert isinstance(error, UnsafeFileError) and "features" in str(error)
    assert not any((case / "elsewhere").iterdir())
