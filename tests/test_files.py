"""files.py: durable commits (fsync before rename, the parent after) and confinement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mlwidgets import files
from mlwidgets.checkpoint_store import CheckpointStore
from mlwidgets.errors import LimitError, UnsafeFileError


@pytest.fixture
def syscalls(monkeypatch):
    """Every fsync (by the path of its descriptor) and rename, in order."""
    calls: list[tuple[str, str, str]] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), ""))
        return real_fsync(fd)

    def rename(src, dst, *args, **kwargs):
        calls.append(("rename", os.path.realpath(src), os.path.realpath(dst)))
        return real_rename(src, dst, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        calls.append(("rename", os.path.realpath(src), os.path.realpath(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_a_checkpoint_commit_syncs_every_file_and_its_folder_before_the_rename(
        tmp_path, syscalls):
    shared = tmp_path / "body.safetensors"  # linked in, as transfer learning's frozen body
    from safetensors.torch import save
    data = save({"w": torch.ones(3)})
    shared.write_bytes(data)
    store = CheckpointStore(tmp_path / "session" / "checkpoints", "session-x")
    store.open_for_writing()
    syscalls.clear()
    checkpoint = store.commit(
        phase="training", iteration=1, step_number=3, metrics={"train_loss": 0.5},
        model_state={"w": torch.zeros(4)}, model={},
        optimizer_state={"state": [{"exp_avg": torch.zeros(4), "step": 3}],
                         "hypers": [{"lr": 0.1}]},
        linked_files={"body.safetensors": (shared, {"sha256": files.sha256_bytes(data),
                                                    "size": len(data)})})
    final = os.path.realpath(checkpoint.path)
    renames = [c for c in syscalls if c[0] == "rename" and c[2] == final]
    assert len(renames) == 1, syscalls
    at = syscalls.index(renames[0])
    temporary = renames[0][1]
    synced_before = {path for kind, path, _ in syscalls[:at] if kind == "fsync"}
    for name in sorted(os.listdir(final)):  # every file, the record last written
        assert os.path.join(temporary, name) in synced_before, (name, syscalls)
    assert temporary in synced_before  # the folder's entries
    synced_after = [path for kind, path, _ in syscalls[at + 1:] if kind == "fsync"]
    assert os.path.dirname(final) in synced_after  # the rename itself


def test_an_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(
        tmp_path, syscalls):
    target = tmp_path / "session.json"
    files.write_atomic(target, b"{}")
    kinds = [(kind, Path(path).name if kind == "fsync" else Path(dst).name)
             for kind, path, dst in syscalls]
    rename_at = next(i for i, (kind, _) in enumerate(kinds) if kind == "rename")
    assert any(k == "fsync" and name.startswith(".tmp-session.json")
               for k, name in kinds[:rename_at])
    assert ("fsync", tmp_path.name) in kinds[rename_at + 1:]


def test_a_file_a_library_wrote_is_synced_and_recorded_as_it_is_on_disk(tmp_path, syscalls):
    from safetensors.torch import save, save_file

    path = tmp_path / "body.safetensors"
    save_file({"w": torch.arange(5.0)}, str(path))
    record = files.synced_file_record(path)
    data = save({"w": torch.arange(5.0)})
    assert record == {"sha256": files.sha256_bytes(data), "size": len(data)}
    assert ("fsync", os.path.realpath(path), "") in syscalls
    os.symlink(path, tmp_path / "link.safetensors")  # never through a link
    with pytest.raises(OSError):
        files.synced_file_record(tmp_path / "link.safetensors")


# -- confinement --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "", "a\x00b", "..",
                                  "a/..", "..\\x"])
def test_names_that_leave_their_folder_are_refused(tmp_path, name):
    with pytest.raises(UnsafeFileError):
        files.read_confined(tmp_path, name, max_size=10)


def test_a_symlinked_folder_on_the_way_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f").write_bytes(b"secret")
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "root" / "sub")
    with pytest.raises(UnsafeFileError, match="symlink"):
        files.read_confined(tmp_path / "root", "sub/f", max_size=100)
    with pytest.raises(UnsafeFileError, match="symlink"):
        files.check_confined(tmp_path / "root", "sub/f")
    with pytest.raises(UnsafeFileError, match="symlink"):
        files.mkdir_confined(tmp_path / "root", "sub")


def test_sizes_are_checked_before_reading(tmp_path):
    (tmp_path / "f").write_bytes(b"12345")
    assert files.read_confined(tmp_path, "f", max_size=5, expected_size=5) == b"12345"
    with pytest.raises(LimitError, match="larger than 4 bytes"):
        files.read_confined(tmp_path, "f", max_size=4)
    with pytest.raises(UnsafeFileError, match="not the 6 recorded"):
        files.read_confined(tmp_path, "f", max_size=10, expected_size=6)


def test_appending_into_a_fifo_or_through_a_link_is_refused(tmp_path):
    os.mkfifo(tmp_path / "events.jsonl")
    with pytest.raises(UnsafeFileError, match="FIFO"):
        files.append_json_line(tmp_path / "events.jsonl", {"a": 1})
    os.symlink(tmp_path / "elsewhere.jsonl", tmp_path / "linked.jsonl")
    with pytest.raises(UnsafeFileError, match="symlink"):
        files.append_json_line(tmp_path / "linked.jsonl", {"a": 1})
    assert not (tmp_path / "elsewhere.jsonl").exists()


def test_a_new_file_is_never_written_through_a_link(tmp_path):
    os.symlink(tmp_path / "elsewhere", tmp_path / "model.safetensors")
    with pytest.raises(OSError):
        files.write_bytes_durably(tmp_path / "model.safetensors", b"x")
    assert not (tmp_path / "elsewhere").exists()


def test_json_lines_skip_damage_and_never_hold_an_overlong_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"a": 1}\n[1]\n\0\0\0\n' + b"x" * (files.MAX_JSON_LINE_BYTES + 5)
                     + b'\n{"b": 2}\n{"c": 3')
    found = list(files.read_json_lines(path))
    assert [obj for _, obj in found] == [{"a": 1}, {"b": 2}]
    assert found[-1][0] == path.stat().st_size - len(b'{"c": 3')  # back for the rest
