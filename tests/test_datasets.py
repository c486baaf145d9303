"""Built-in datasets: the folders a user gets, determinism, caching and safe writing."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from mlwidgets import datasets

SMALL = {"images_per_class": 3, "image_size": 32, "seed": 0}
DEFAULT_CLASSES = ["circle", "square", "star", "triangle"]


def shapes_folder(root: str | Path | None, **overrides: object) -> Path:
    arguments = {**SMALL, "classes": ("circle", "square", "triangle", "star"), **overrides}
    return datasets._shapes_folder(root, **arguments)


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def backdate(folder: Path) -> dict[str, int]:
    """Set every file's mtime an hour back, so that any rewrite changes it; return them."""
    for p in folder.rglob("*"):
        if p.is_file():
            st = p.stat()
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - 3_600_000_000_000))
    return mtimes(folder)


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def test_shapes_writes_one_folder_of_pngs_per_class(tmp_path: Path) -> None:
    folder = shapes_folder(tmp_path / "shapes")
    assert folder == tmp_path / "shapes"
    assert class_folders(folder) == DEFAULT_CLASSES
    for name in DEFAULT_CLASSES:
        files = sorted((folder / name).iterdir())
        assert len(files) == 3
        for f in files:
            with Image.open(f) as image:
                assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))


def test_shapes_returns_a_data_source(tmp_path: Path) -> None:
    data = datasets.shapes(tmp_path / "shapes", **SMALL, classes=("star", "cross", "hexagon"))
    assert data.classes == ["cross", "hexagon", "star"]
    assert len(data) == 9


def test_shapes_are_deterministic_and_seeded(tmp_path: Path) -> None:
    first = contents(shapes_folder(tmp_path / "a"))
    assert first == contents(shapes_folder(tmp_path / "b"))
    other_seed = contents(shapes_folder(tmp_path / "c", seed=1))
    assert other_seed.keys() == first.keys()
    assert all(other_seed[k] != first[k] for k in first)
    # Each class draws from its own stream: listing classes differently gives the same images.
    assert contents(shapes_folder(tmp_path / "d", classes=["triangle", "circle"])) == {
        k: v for k, v in first.items() if k.split(os.sep)[0] in ("circle", "triangle")
    }


def test_unknown_shape_is_refused_with_the_supported_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="blob") as error:
        shapes_folder(tmp_path / "x", classes=("circle", "blob"))
    for name in ("circle", "square", "triangle", "star", "hexagon", "cross"):
        assert name in str(error.value)
    assert not (tmp_path / "x").exists()


def test_cache_is_used_when_root_is_none_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLWIDGETS_CACHE", str(tmp_path / "cache"))
    assert datasets.cache_dir() == tmp_path / "cache"
    folder = shapes_folder(None)
    assert folder.parent == tmp_path / "cache" / "datasets"
    assert folder.name.startswith("shapes-")
    before = backdate(folder)  # a rewrite now would show as a new mtime
    assert shapes_folder(None) == folder
    assert mtimes(folder) == before
    assert shapes_folder(None, seed=1) != folder  # other arguments, other folder
    assert [p.name for p in folder.parent.iterdir() if p.name.endswith(".partial")] == []


def test_cache_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLWIDGETS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert datasets.cache_dir() == tmp_path / "mlwidgets"


def test_explicit_root_is_reused_not_rewritten(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()  # an existing empty folder is fine
    shapes_folder(root)
    before = backdate(root)
    shapes_folder(root)
    assert mtimes(root) == before


def test_folder_with_other_files_is_refused_and_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    (root / "holiday.jpg").write_bytes(b"not mine to delete")
    with pytest.raises(FileExistsError, match=str(root)):
        shapes_folder(root)
    assert [p.name for p in root.iterdir()] == ["holiday.jpg"]
    # A complete dataset made with other arguments counts as other files too.
    shapes_folder(tmp_path / "made")
    with pytest.raises(FileExistsError, match="made"):
        shapes_folder(tmp_path / "made", seed=1)


def test_interrupted_run_leaves_nothing_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLWIDGETS_CACHE", str(tmp_path / "cache"))
    draw, calls = datasets._draw_shape, []

    def draw_then_interrupt(*args: object) -> Image.Image:
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return draw(*args)

    monkeypatch.setattr(datasets, "_draw_shape", draw_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        shapes_folder(tmp_path / "explicit")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary folder

    # A process killed outright leaves its temporary sibling behind; it is never reused.
    monkeypatch.setattr(datasets, "_draw_shape", draw)
    complete = shapes_folder(None)
    leftover = complete.with_name(f".{complete.name}.killed.partial")
    complete.rename(leftover)
    (leftover / datasets.MARKER).unlink()  # a killed run never got as far as its marker
    folder = shapes_folder(None)
    assert folder == complete and (folder / datasets.MARKER).exists()
    assert len(list(folder.glob("*/*.png"))) == 12
    old = time.time() - 2 * datasets._STALE_SECONDS
    for path in [leftover, *leftover.iterdir()]:
        os.utime(path, (old, old))
    shutil.rmtree(folder)
    shapes_folder(None)  # the next write of this dataset sweeps a leftover that old
    assert not leftover.exists()


def test_damaged_cache_entry_is_regenerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLWIDGETS_CACHE", str(tmp_path))
    folder = shapes_folder(None)
    original = contents(folder)
    next(folder.glob("star/*.png")).unlink()
    assert contents(shapes_folder(None)) == original


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return datasets._digits_folder(tmp_path_factory.mktemp("digits") / "d", image_size=20)


def test_digits_are_ten_grayscale_folders_of_1797_images(digits_folder: Path) -> None:
    assert class_folders(digits_folder) == [str(d) for d in range(10)]
    files = list(digits_folder.glob("*/*.png"))
    assert len(files) == 1797
    for f in files[::300]:
        with Image.open(f) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (20, 20))


def test_digits_returns_a_data_source(digits_folder: Path) -> None:
    data = datasets.digits(digits_folder, image_size=20)  # reuses the folder made above
    assert data.classes == [str(d) for d in range(10)]
    assert len(data) == 1797


def test_digits_refuses_a_size_below_8(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        datasets.digits(tmp_path, image_size=4)
