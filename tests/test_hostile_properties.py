"""Property tests: any change to one byte of a committed session, at rest, is harmless or
reported naming the file, and the CLI never prints a traceback.

Files with a digest (checkpoint.json, session.json, data.json) and the tensor files with a
recorded sha256 must load with exactly the same meaning or be refused naming the file.
events.jsonl has no digest (it is appended to while training): a damaged line may be lost
or read differently, but restoring never fails and every other line is kept.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import hostile_session
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlwidgets as mw
from mlwidgets.checkpoints import Checkpoint
from mlwidgets.cli import main
from mlwidgets.errors import MlwidgetsError

made_fixture = pytest.fixture(scope="module", name="made")(hostile_session.make_session)

FAST = settings(max_examples=10, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def mutations(draw):
    """(kind, fraction of the file, byte): flip bits, set a byte, cut, insert, delete."""
    kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
    return kind, draw(st.floats(0, 1, exclude_max=True)), draw(st.integers(0, 255))


def mutate(path: Path, mutation) -> bytes:
    kind, where, value = mutation
    data = bytearray(path.read_bytes())
    at = int(where * len(data))
    if kind == "flip":
        data[at] ^= value or 1
    elif kind == "set":
        data[at] = value
    elif kind == "truncate":
        del data[at:]
    elif kind == "insert":
        data[at:at] = bytes([value])
    else:
        del data[at]
    path.write_bytes(bytes(data))
    return bytes(data)


@contextlib.contextmanager
def copy_of(made: Path):
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "session"
        shutil.copytree(made / "session", target, symlinks=True)
        yield target


def meaning(session_dir: Path) -> dict:
    """What a reader gets from a session: records, split, checkpoints, weights."""
    session = mw.TrainingSession.restore(session_dir)
    latest = session.checkpoints[-1]
    weights = mw.ImageClassifier.from_checkpoint(latest).model.state_dict()
    return {"id": session.id, "classes": session.classes, "parameters": session.parameters,
            "split": session.split, "checkpoints": [
                {k: v for k, v in c.to_dict().items() if k != "url"} for c in session.checkpoints],
            "damaged": sorted(session.store.damaged),
            "weights": {k: v.tolist() for k, v in weights.items()}}


@pytest.fixture(scope="module")
def original(made: Path) -> dict:
    return meaning(made / "session")


def assert_harmless_or_reported(made: Path, original: dict, name: str, mutation) -> None:
    with copy_of(made) as session_dir:
        files = {"session.json": session_dir / "session.json",
                 "data.json": session_dir / "data.json"}
        latest = sorted((session_dir / "checkpoints").iterdir())[-1]
        files.update({f"checkpoint/{p.name}": p for p in latest.iterdir()})
        path = files[name]
        before = path.read_bytes()
        if mutate(path, mutation) == before:
            return
        try:
            got = meaning(session_dir)
        except MlwidgetsError as e:
            assert path.name in str(e) and "\n" not in str(e), str(e)
            return
        if got["damaged"] == [latest.name]:  # listed damaged, others usable
            return
        assert got == original, f"{name} changed by {mutation} and nobody noticed"


NAMES = ["session.json", "data.json", "checkpoint/checkpoint.json",
         "checkpoint/model.safetensors", "checkpoint/optimizer.safetensors"]


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(mutation=mutations())
def test_a_changed_byte_is_harmless_or_reported(made, original, name, mutation):
    if name == "checkpoint/optimizer.safetensors":
        with copy_of(made) as session_dir:  # only training reads it: load it directly
            latest = sorted((session_dir / "checkpoints").iterdir())[-1]
            before = (latest / "optimizer.safetensors").read_bytes()
            if mutate(latest / "optimizer.safetensors", mutation) != before:
                with pytest.raises(MlwidgetsError, match="optimizer.safetensors"):
                    Checkpoint.from_directory(latest).load_optimizer_state()
        return
    assert_harmless_or_reported(made, original, name, mutation)


@FAST
@given(mutation=mutations())
def test_a_damaged_events_line_never_stops_a_restore(made, mutation):
    with copy_of(made) as session_dir:
        good = mw.TrainingSession.restore(session_dir).events
        mutate(session_dir / "events.jsonl", mutation)
        events = mw.TrainingSession.restore(session_dir).events
        assert len([e for e in events if e not in good]) <= 1  # the damaged line, read anew
        if mutation[0] != "truncate":  # a cut newline can join two lines into one
            assert len([e for e in events if e in good]) >= len(good) - 2


@FAST
@given(name=st.sampled_from(["session.json", "data.json", "events.jsonl", "checkpoint"]),
       mutation=mutations())
def test_the_cli_never_prints_a_traceback(made, name, mutation, capsys):
    with copy_of(made) as session_dir:
        latest = sorted((session_dir / "checkpoints").iterdir())[-1]
        mutate(latest / "checkpoint.json" if name == "checkpoint" else session_dir / name,
               mutation)
        for argv in (["checkpoints", "--session", str(session_dir)],
                     ["predict", "nothing.png", "--session", str(session_dir),
                      "--checkpoint", latest.name]):
            code = main(argv)
            err = capsys.readouterr().err
            assert code in (0, 2) and "Traceback" not in err, err
            assert all(line.startswith(("error: ", "warning: ")) for line in err.splitlines())


def test_mutations_are_seen_by_the_reader_at_all(made):
    """A guard on the test itself: flipping a weight byte must change what is read."""
    with copy_of(made) as session_dir:
        latest = sorted((session_dir / "checkpoints").iterdir())[-1]
        mutate(latest / "model.safetensors", ("flip", 0.99, 1))
        with pytest.raises(MlwidgetsError, match="model.safetensors"):
            mw.ImageClassifier.from_checkpoint(Checkpoint.from_directory(latest))
