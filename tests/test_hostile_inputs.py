"""Hostile data folders, images and command lines, and hostile sessions under a memory cap.

- Data folders: links that loop or leave, FIFOs, empty class folders, names that are not
  UTF-8, images whose header claims a huge or very long picture.
- The CLI meets every failure with one line `error: <what> (<file or value>): <what to do>`,
  exit status 2 and no traceback (the traceback only with --debug / MLWIDGETS_DEBUG=1).
- Memory: the worst inputs run in a child process whose address space may grow by at most
  2 GiB beyond what importing the engine took; each must be refused, not crash it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import hostile_session
import pytest
from hostile_guard import within
from hostile_session import checkpoint_dirs, rewrite, session_of
from PIL import Image

import mlwidgets as mw
from mlwidgets import schemas
from mlwidgets.cli import main, print_data_summary
from mlwidgets.errors import DataError
from mlwidgets.images import check_image, open_image

made_fixture = pytest.fixture(scope="module", name="made")(hostile_session.make_session)
case_fixture = pytest.fixture(name="case")(hostile_session.make_case)


def png_header_only(width: int, height: int) -> bytes:
    """A few bytes of PNG whose header claims width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """photos/cat and photos/dog with three small images each, and elsewhere/ beside."""
    for label in ("cat", "dog"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (80 * i, 40, 0)).save(
                tmp_path / "photos" / label / f"{i}.png")
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "elsewhere" / "secret.png")
    return tmp_path / "photos"


def scan(photos: Path) -> mw.DataSource:
    source, error = within(10, lambda: mw.DataSource.labeled_directories(photos),
                           forbidden=(str(photos.parent / "elsewhere"),))
    assert error is None, error
    return source


def reasons(source: mw.DataSource) -> dict[str, str]:
    return {p.name: r for p, r in source.skipped}


# -- data folders ----------------------------------------------------------------------


def test_a_link_to_the_data_folder_itself_is_a_loop_not_a_class(photos):
    os.symlink(".", photos / "loop")
    source = scan(photos)
    assert source.classes == ["cat", "dog"] and len(source) == 6
    assert "loop" in reasons(source)["loop"]


def test_a_link_up_from_inside_a_class_is_a_loop(photos):
    os.symlink("..", photos / "cat" / "up")
    source = scan(photos)
    assert len(source) == 6 and "loop" in reasons(source)["up"]


def test_a_folder_link_out_of_the_data_folder_is_not_followed(photos):
    os.symlink(photos.parent / "elsewhere", photos / "outside")
    source = scan(photos)
    assert source.classes == ["cat", "dog"] and "outside" in reasons(source)["outside"]


def test_a_file_link_out_of_the_data_folder_is_not_followed(photos):
    os.symlink(photos.parent / "elsewhere" / "secret.png", photos / "dog" / "secret.png")
    source = scan(photos)
    assert len(source) == 6 and "outside" in reasons(source)["secret.png"]


def test_a_link_inside_the_data_folder_is_followed(photos):
    os.symlink(photos / "cat" / "0.png", photos / "dog" / "also-a-cat.png")
    source = scan(photos)
    assert len(source) == 7 and not source.skipped


def test_a_broken_link_is_skipped_with_its_reason(photos):
    os.symlink(photos / "nowhere.png", photos / "dog" / "broken.png")
    assert "broken" in reasons(scan(photos))["broken.png"]


def test_a_fifo_among_the_images_is_skipped_without_waiting(photos):
    os.mkfifo(photos / "dog" / "fifo.png")
    assert "not a regular file" in reasons(scan(photos))["fifo.png"]


def test_an_empty_class_folder_is_reported(photos):
    (photos / "bird").mkdir()
    source = scan(photos)
    assert source.classes == ["cat", "dog"] and "empty class folder" in reasons(source)["bird"]


def test_a_name_that_is_not_utf8_prints_under_a_strict_terminal(photos, monkeypatch):
    name = os.fsdecode(b"\xff\xfe-broken.png")
    (photos / "dog" / name).write_bytes(b"not an image")
    source = scan(photos)
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    print_data_summary(source)
    out.flush()
    assert b"\\xff\\xfe-broken.png" in out.buffer.getvalue()


@pytest.mark.parametrize("size,why", [((20_000_000, 1), "too long"),
                                      ((1, 5_000), "too long"),
                                      ((12_000, 12_000), "too large")])
def test_an_image_whose_header_claims_too_much_is_refused_undecoded(photos, size, why):
    (photos / "dog" / "bomb.png").write_bytes(png_header_only(*size))
    assert why in reasons(scan(photos))["bomb.png"]
    _, error = within(10, lambda: open_image(photos / "dog" / "bomb.png"))
    assert isinstance(error, ValueError) and "bomb.png" in str(error)


def test_a_postscript_file_named_like_a_photo_is_never_run(photos):
    (photos / "dog" / "eps.png").write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    reason, error = within(10, lambda: check_image(photos / "dog" / "eps.png"))
    assert error is None and "not an image in a known format" in reason


def test_more_classes_than_allowed_are_refused_before_any_file_is_read(tmp_path):
    items = [mw.data.Item(tmp_path / f"{i}.png", f"c{i}") for i in range(10_001)]
    _, error = within(10, lambda: mw.DataSource(items, origin="many", check=False))
    assert isinstance(error, DataError) and "10001 classes" in str(error)


# -- one clean line from the CLI ----------------------------------------------------------


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code, error = within(30, lambda: main(list(argv)))
    if isinstance(error, SystemExit):
        code, error = error.code, None
    assert error is None, error
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code: int, err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and all(w in lines[0] for w in words), err


def damage_latest(case: Path) -> Path:
    ckpt = checkpoint_dirs(case)[-1]
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    return ckpt


def test_cli_lists_damaged_checkpoints_as_damaged(case, capsys):
    first = checkpoint_dirs(case)[0]
    (first / "checkpoint.json").write_text("{")
    code, out, err = cli(capsys, "checkpoints", "--session", str(session_of(case)))
    assert code == 0 and "DAMAGED" in out and f"checkpoint {first.name} is damaged" in out
    assert "1 damaged" in out


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_cli_on_a_damaged_checkpoint_is_one_line(case, capsys, tmp_path, command):
    ckpt = damage_latest(case)
    extra = {"predict": ["x.png"], "evaluate": [str(tmp_path)],
             "export": ["--out", str(tmp_path / "m.mlpackage")]}[command]
    code, _, err = cli(capsys, command, *extra, "--session", str(session_of(case)),
                       "--checkpoint", ckpt.name)
    assert_one_error_line(code, err, f"checkpoint {ckpt.name} is damaged", "model.safetensors",
                          "use another checkpoint")


def test_cli_warns_of_damaged_checkpoints_it_passes_over(case, capsys):
    first = checkpoint_dirs(case)[0]
    (first / "checkpoint.json").write_text("{")
    code, _, err = cli(capsys, "predict", "gone.png", "--session", str(session_of(case)),
                       "--checkpoint", "latest")
    assert code == 2 and f"warning: checkpoint {first.name} is damaged" in err


def test_cli_names_a_damaged_session_json(case, capsys):
    (session_of(case) / "session.json").write_text("[]")
    code, _, err = cli(capsys, "checkpoints", "--session", str(session_of(case)))
    assert_one_error_line(code, err, "session.json")


def test_cli_refuses_a_folder_that_is_not_a_session(tmp_path, capsys):
    code, _, err = cli(capsys, "checkpoints", "--session", str(tmp_path))
    assert_one_error_line(code, err, "not a training session", str(tmp_path))


def test_cli_names_an_unknown_checkpoint(case, capsys):
    code, _, err = cli(capsys, "predict", "x.png", "--session", str(session_of(case)),
                       "--checkpoint", "no-such")
    assert_one_error_line(code, err, "no-such")


def test_cli_names_a_missing_image(case, capsys, tmp_path):
    code, _, err = cli(capsys, "predict", str(tmp_path / "gone.png"), "--session",
                       str(session_of(case)), "--checkpoint", "latest")
    assert_one_error_line(code, err, "gone.png")


@pytest.mark.parametrize("argv,words", [
    (["train", "d", "--session", "s", "--iterations", "1000000000"], ["--iterations"]),
    (["train", "d", "--session", "s", "--image-size", "100000"], ["--image-size"]),
    (["train", "d", "--session", "s", "--learning-rate", "nan"], ["--learning-rate"]),
    (["train", "d", "--session", "s", "--architecture", "evil"], ["invalid choice"]),
    (["resume", "--session", "s", "--iterations", "-5"], ["--iterations"]),
    (["no-such-command"], ["invalid choice"]),
])
def test_cli_refuses_bad_arguments_in_one_short_line(capsys, argv, words):
    code, _, err = cli(capsys, *argv)
    assert_one_error_line(code, err, *words)
    assert len(err) < 300


def test_cli_prints_the_traceback_only_when_asked(case, capsys, monkeypatch):
    (session_of(case) / "session.json").write_text("[]")
    code, _, err = cli(capsys, "checkpoints", "--session", str(session_of(case)), "--debug")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error:")
    monkeypatch.setenv("MLWIDGETS_DEBUG", "1")
    code, _, err = cli(capsys, "checkpoints", "--session", str(session_of(case)))
    assert code == 2 and "Traceback" in err


def test_cli_refuses_images_outside_the_data_roots_and_offers_data_root(case, capsys):
    path = session_of(case) / "data.json"
    record = json.loads(path.read_bytes())
    record.pop("digest")
    record["valid"][0][0] = "/etc/shadow"
    path.write_text(json.dumps(record))
    code, _, err = cli(capsys, "checkpoints", "--session", str(session_of(case)))
    assert_one_error_line(code, err, "/etc/shadow", "data.json", "data_root")


# -- a 2 GiB address-space cap --------------------------------------------------------------

CAPPED = """
import json, resource, sys, time
import mlwidgets as mw
from mlwidgets.checkpoints import Checkpoint
from mlwidgets.images import check_image

def vm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

cap = vm_bytes() + (2 << 30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
cases = json.loads(sys.argv[1])
for name, kind, target in cases:
    started = time.monotonic()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        if kind == "load":
            mw.ImageClassifier.from_checkpoint(Checkpoint.from_directory(target))
        elif kind == "optimizer":
            Checkpoint.from_directory(target).load_optimizer_state()
        elif kind == "restore":
            mw.TrainingSession.restore(target)
        elif kind == "image":
            reason = check_image(__import__("pathlib").Path(target))
            raise ValueError(reason)
        outcome = "accepted"
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
        if grown > (200 << 20):
            outcome = "accepted, but memory grew by %d MiB" % (grown >> 20)
    except MemoryError:
        outcome = "MemoryError"
    except Exception as e:
        outcome = type(e).__name__ + ": " + str(e)
    print(json.dumps([name, outcome, time.monotonic() - started]), flush=True)
"""


def test_the_worst_inputs_are_refused_within_a_2_gib_address_space_cap(made, tmp_path):
    cases = []

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(made / "session", target, symlinks=True)
        return target

    s = copy("dev-zero")
    ckpt = sorted((s / "checkpoints").iterdir())[-1]
    (ckpt / "model.safetensors").unlink()
    os.symlink("/dev/zero", ckpt / "model.safetensors")
    rewrite(ckpt, lambda r: r["files"]["model.safetensors"].__setitem__("size", 8 << 30))
    cases.append(["dev_zero_claiming_8_gib", "load", str(ckpt)])

    s = copy("params")
    ckpt = sorted((s / "checkpoints").iterdir())[-1]
    rewrite(ckpt, lambda r: r["optimizer"].__setitem__("n_params", 10**12))
    cases.append(["optimizer_claiming_1e12_parameters", "optimizer", str(ckpt)])

    s = copy("image-size")
    ckpt = sorted((s / "checkpoints").iterdir())[-1]
    rewrite(ckpt, lambda r: r["model"].__setitem__("image_size", 10**9))
    cases.append(["model_image_size_1e9", "load", str(ckpt)])

    s = copy("session-size")
    record = json.loads((s / "session.json").read_bytes())
    record.pop("digest")
    record["parameters"]["image_size"] = 10**9
    (s / "session.json").write_text(json.dumps(record))
    cases.append(["session_image_size_1e9", "restore", str(s)])

    s = copy("huge-data")
    with open(s / "data.json", "r+b") as f:
        f.truncate(schemas.MAX_DATA_RECORD_BYTES + 1)
    cases.append(["sparse_data_json_over_the_limit", "restore", str(s)])

    s = copy("long-line")
    with open(s / "events.jsonl", "ab") as f:
        f.truncate(os.fstat(f.fileno()).st_size + (600 << 20))  # a 600 MiB line of NULs
    cases.append(["events_line_of_600_mib", "restore", str(s)])

    s = copy("huge-events")
    with open(s / "events.jsonl", "ab") as f:
        f.truncate(os.fstat(f.fileno()).st_size + (64 << 30))  # 64 GiB, sparse
    cases.append(["events_of_64_gib", "restore", str(s)])

    long_png = tmp_path / "long.png"
    long_png.write_bytes(png_header_only(20_000_000, 1))
    cases.append(["png_20000000_by_1", "image", str(long_png)])

    done = subprocess.run([sys.executable, "-c", textwrap.dedent(CAPPED), json.dumps(cases)],
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    results = {name: (outcome, seconds) for name, outcome, seconds in
               map(json.loads, done.stdout.splitlines())}
    assert set(results) == {name for name, _, _ in cases}
    assert "events.jsonl" in results["events_of_64_gib"][0]
    for name, (outcome, seconds) in results.items():
        assert seconds < 10, (name, seconds)
        if name == "events_line_of_600_mib":
            assert outcome == "accepted", outcome  # the line is skipped, never held
        else:
            assert outcome.split(":")[0] in ("CheckpointError", "SessionError", "ValueError",
                                              "LimitError"), (name, outcome)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_weights_file_that_is_no_file_is_refused_without_reading(tmp_path, kind):
    from mlwidgets.errors import UnsafeFileError
    from mlwidgets.features import feature_key

    path = tmp_path / "weights.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    params = mw.ModelParameters(architecture="resnet18", weights_file=str(path))
    _, error = within(10, lambda: feature_key(params, "fingerprint"))
    assert isinstance(error, UnsafeFileError) and "weights.safetensors" in str(error)


def test_cli_prints_names_that_are_not_utf8_under_an_ascii_terminal(case, tmp_path):
    bad = session_of(case) / "checkpoints" / os.fsdecode(b"000009-\xff\xfe")
    shutil.copytree(checkpoint_dirs(case)[-1], bad)
    env = {**os.environ, "PYTHONIOENCODING": "ascii:strict", "LC_ALL": "C"}
    done = subprocess.run([sys.executable, "-m", "mlwidgets", "checkpoints", "--session",
                           str(session_of(case))], capture_output=True, env=env, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"Traceback" not in done.stderr and b"000009-\\xff\\xfe" in done.stdout
