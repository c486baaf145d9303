"""DataSource, image decoding and the validation split, as a user meets them.

Every folder is built here with PIL in `tmp_path`: a few 8x8 images per class.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mlwidgets.data import DataSource, Item, split_items
from mlwidgets.images import load_array, open_image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def save_image(path: Path, color: tuple[int, int, int] = RED,
               size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def class_folders(root: Path, counts: dict[str, int]) -> Path:
    """`root/<class>/<class>_<k>.png` for each class and count."""
    for label, n in counts.items():
        for k in range(n):
            save_image(root / label / f"{label}_{k}.png", (20 * k % 256, 100, 50))
    return root


def truncated_jpeg(path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def pixel(path: Path, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    image = open_image(path)
    assert image.mode == "RGB"
    return image.getpixel(xy)


# -- constructors ---------------------------------------------------------------------


def test_labeled_directories_one_class_per_folder_with_nested_folders(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "pets", {"cat": 3, "dog": 2})
    save_image(root / "dog" / "puppies" / "small.png")  # sub-folders belong to their class

    data = DataSource.labeled_directories(root)

    assert data.classes == ["cat", "dog"]
    assert len(data) == 6
    assert data.skipped == []
    labels = {i.path.relative_to(root).as_posix(): i.label for i in data.items}
    assert labels["dog/puppies/small.png"] == "dog"
    assert sorted(data.labels) == ["cat"] * 3 + ["dog"] * 3


def test_labeled_directories_ignores_hidden_files_and_system_folders(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "pets", {"cat": 2, "dog": 2})
    # Things Jupyter, macOS and Windows leave behind: none is a class, an image or a skip.
    save_image(root / ".ipynb_checkpoints" / "x.png")
    save_image(root / "__MACOSX" / "cat" / "._cat_0.png")
    save_image(root / "cat" / ".ipynb_checkpoints" / "cat_0-checkpoint.png")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "dog" / "._dog_0.png").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / "dog" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")

    data = DataSource.labeled_directories(root)

    assert data.classes == ["cat", "dog"]
    assert len(data) == 4
    assert data.skipped == []
    assert all(i.path.relative_to(root).parts[0] in ("cat", "dog") for i in data.items)
    assert {i.path.name for i in data.items} == {"cat_0.png", "cat_1.png", "dog_0.png", "dog_1.png"}


@pytest.mark.parametrize(
    ("name", "label"),
    [("cat_001.jpg", "cat"), ("cat-7.png", "cat"), ("cat12.jpg", "cat"), ("cat.3.jpg", "cat"),
     ("cat 2.png", "cat"), ("cat.png", "cat"), ("golden_retriever_1.png", "golden")],
)
def test_labeled_files_label_is_the_start_of_the_name(tmp_path: Path, name: str,
                                                      label: str) -> None:
    save_image(tmp_path / name)
    save_image(tmp_path / "zebra_1.png", BLUE)

    data = DataSource.labeled_files(tmp_path)

    assert data.classes == sorted([label, "zebra"])
    assert {i.path.name: i.label for i in data.items}[name] == label


def test_labeled_files_groups_variants_and_ignores_hidden_files(tmp_path: Path) -> None:
    for name in ("cat_001.jpg", "cat-7.png", "cat12.jpg", "cat.3.jpg", "dog_1.png", "dog2.png"):
        save_image(tmp_path / name)
    save_image(tmp_path / ".hidden_1.png")
    save_image(tmp_path / "subfolder" / "bird_1.png")  # only the folder itself is read

    data = DataSource.labeled_files(tmp_path)

    assert data.classes == ["cat", "dog"]
    assert len(data) == 6
    assert data.summary()["images"].to_dict() == {"cat": 4, "dog": 2}
    assert data.skipped == []


def test_labeled_files_a_stray_readme_is_skipped_not_a_class(tmp_path: Path) -> None:
    for name in ("cat_1.png", "cat_2.png", "dog_1.png", "dog_2.png"):
        save_image(tmp_path / name)
    (tmp_path / "README.md").write_text("photos from the shelter\n")

    data = DataSource.labeled_files(tmp_path)

    assert data.classes == ["cat", "dog"]
    assert [p.name for p, _ in data.skipped] == ["README.md"]
    assert "not an image" in data.skipped[0][1]


def test_files_by_label_takes_an_explicit_mapping(tmp_path: Path) -> None:
    cats = [save_image(tmp_path / "a" / f"{k}.png") for k in range(2)]
    dogs = [str(save_image(tmp_path / "b" / f"{k}.png", BLUE)) for k in range(3)]

    data = DataSource.files_by_label({"cat": cats, "dog": dogs})

    assert data.classes == ["cat", "dog"]
    assert len(data) == 5
    assert {i.path for i in data.items if i.label == "dog"} == {Path(p) for p in dogs}


def test_files_by_label_missing_file_is_named(tmp_path: Path) -> None:
    cat = save_image(tmp_path / "cat.png")
    missing = tmp_path / "nowhere" / "dog.png"

    with pytest.raises(FileNotFoundError, match="dog.png"):
        DataSource.files_by_label({"cat": [cat], "dog": [missing]})


def test_from_dataframe_with_relative_paths_and_root(tmp_path: Path) -> None:
    class_folders(tmp_path, {"cat": 2, "dog": 2})
    df = pd.DataFrame({
        "file": ["cat/cat_0.png", "cat/cat_1.png", "dog/dog_0.png", "dog/dog_1.png"],
        "species": ["feline", "feline", "canine", "canine"],
    })

    data = DataSource.from_dataframe(df, path_col="file", label_col="species", root=tmp_path)

    assert data.classes == ["canine", "feline"]
    assert len(data) == 4
    assert {i.path for i in data.items if i.label == "feline"} == {
        tmp_path / "cat" / "cat_0.png", tmp_path / "cat" / "cat_1.png"}


def test_from_dataframe_absolute_paths_and_default_columns(tmp_path: Path) -> None:
    class_folders(tmp_path, {"cat": 2, "dog": 2})
    paths = sorted(str(p) for p in tmp_path.rglob("*.png"))
    df = pd.DataFrame({"path": paths, "label": [Path(p).parent.name for p in paths]})

    data = DataSource.from_dataframe(df)

    assert data.classes == ["cat", "dog"]
    assert len(data) == 4


def test_from_dataframe_names_a_missing_column_and_a_missing_file(tmp_path: Path) -> None:
    class_folders(tmp_path, {"cat": 1, "dog": 1})
    df = pd.DataFrame({"path": ["cat/cat_0.png", "dog/gone.png"], "label": ["cat", "dog"]})

    with pytest.raises(ValueError, match="'kind'"):
        DataSource.from_dataframe(df, label_col="kind", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        DataSource.from_dataframe(df, root=tmp_path)


# -- what a user looks at ---------------------------------------------------------------


def test_summary_counts_images_and_skipped_per_class(tmp_path: Path) -> None:
    root = class_folders(tmp_path, {"cat": 3, "dog": 2})
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg" * 20)
    (root / "dog" / "notes.txt").write_text("good dogs")

    summary = DataSource.labeled_directories(root).summary()

    assert isinstance(summary, pd.DataFrame)
    assert list(summary.columns) == ["images", "skipped"]
    assert list(summary.index) == ["cat", "dog"]
    assert summary.loc["cat"].tolist() == [3, 1]
    assert summary.loc["dog"].tolist() == [2, 2]


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("make", [DataSource.labeled_directories, DataSource.labeled_files])
def test_missing_folder_is_named(tmp_path: Path, make) -> None:
    missing = tmp_path / "no_such_photos"
    with pytest.raises(FileNotFoundError, match="no_such_photos"):
        make(missing)


def test_a_single_class_is_refused_and_named(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "pets", {"cat": 3})
    with pytest.raises(ValueError, match="2 classes") as error:
        DataSource.labeled_directories(root)
    assert "'cat'" in str(error.value)


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        DataSource.labeled_directories(tmp_path / "empty")


def test_a_class_with_no_usable_image_is_named(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "pets", {"cat": 2, "dog": 2})
    (root / "bird").mkdir()
    (root / "bird" / "empty.jpg").write_bytes(b"")
    (root / "bird" / "broken.png").write_bytes(b"\x89PNG garbage")

    with pytest.raises(ValueError, match="'bird'") as error:
        DataSource.labeled_directories(root)
    message = str(error.value)
    assert "no usable image" in message
    assert "empty.jpg" in message or "broken.png" in message


def test_bad_files_are_skipped_with_a_reason(tmp_path: Path) -> None:
    root = class_folders(tmp_path, {"cat": 2, "dog": 2})
    bad = {
        root / "cat" / "zero.jpg": "empty",
        truncated_jpeg(root / "cat" / "cut.jpg"): "truncated",
        root / "dog" / "corrupt.png": "cannot be decoded",
        root / "dog" / "notes.txt": "not an image",
        root / "dog" / "no_extension": "not an image",
    }
    (root / "cat" / "zero.jpg").write_bytes(b"")
    (root / "dog" / "corrupt.png").write_bytes(os.urandom(300))
    (root / "dog" / "notes.txt").write_text("not a picture")
    (root / "dog" / "no_extension").write_bytes(b"abc")

    data = DataSource.labeled_directories(root)

    assert len(data) == 4
    assert data.classes == ["cat", "dog"]
    reasons = dict(data.skipped)
    assert set(reasons) == set(bad)
    for path, expected in bad.items():
        assert expected in reasons[path], (path, reasons[path])
    assert not set(bad) & {i.path for i in data.items}
    assert "5 skipped" in repr(data)


# -- decoding -------------------------------------------------------------------------


def _palette(path: Path, transparent: bool) -> Path:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    image.putpixel((3, 3), 1)
    image.save(path, **({"transparency": 0} if transparent else {}))
    return path


def test_grayscale_becomes_rgb(tmp_path: Path) -> None:
    Image.new("L", (4, 4), 77).save(tmp_path / "g.png")
    assert pixel(tmp_path / "g.png") == (77, 77, 77)


def test_transparent_areas_become_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # red, but fully transparent
    image.putpixel((3, 3), (0, 0, 255, 255))
    image.save(tmp_path / "sticker.png")
    Image.new("LA", (4, 4), (0, 0)).save(tmp_path / "la.png")

    assert pixel(tmp_path / "sticker.png") == WHITE
    assert pixel(tmp_path / "sticker.png", (3, 3)) == BLUE
    assert pixel(tmp_path / "la.png") == WHITE


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_images_with_and_without_transparency(tmp_path: Path, suffix: str) -> None:
    opaque = _palette(tmp_path / f"opaque{suffix}", transparent=False)
    clear = _palette(tmp_path / f"clear{suffix}", transparent=True)
    assert Image.open(clear).mode == "P"

    assert pixel(opaque) == RED
    assert pixel(clear) == WHITE  # palette index 0 is the transparent one
    assert pixel(opaque, (3, 3)) == pixel(clear, (3, 3)) == BLUE


@pytest.mark.parametrize(("value", "expected"), [(65535, 255), (32768, 128), (0, 0), (257, 1)])
def test_16_bit_grayscale_is_scaled_to_8_bit(tmp_path: Path, value: int, expected: int) -> None:
    path = tmp_path / "depth.png"
    Image.fromarray(np.full((6, 6), value, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")

    array = load_array(path, 6)

    assert array.dtype == np.uint8
    assert np.all(np.abs(array.astype(int) - expected) <= 1), array[0, 0]


def test_a_dark_16_bit_image_stays_dark(tmp_path: Path) -> None:
    # Values all below 256 are still 16-bit: 200/65535 is nearly black, not 200/255.
    path = tmp_path / "dark.png"
    Image.fromarray(np.full((4, 4), 200, dtype=np.uint16)).save(path)
    assert pixel(path) == (1, 1, 1)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=95)  # pure red ink
    assert Image.open(path).mode == "CMYK"

    r, g, b = pixel(path, (4, 4))
    assert r > 230 and g < 25 and b < 25


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize(("orientation", "red_rows", "red_cols"),
                         [(6, slice(0, 8), slice(12, 20)), (8, slice(32, 40), slice(0, 8))])
def test_exif_orientation_is_applied(tmp_path: Path, suffix: str, orientation: int,
                                     red_rows: slice, red_cols: slice) -> None:
    # A 40x20 landscape with a red top-left corner, taken with the phone turned.
    image = Image.new("RGB", (40, 20), WHITE)
    image.paste(RED, (0, 0, 8, 8))
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"turned{suffix}"
    image.save(path, exif=exif)

    upright = open_image(path)
    assert upright.size == (20, 40)
    array = np.asarray(upright).astype(int)
    red = (array[..., 0] > 200) & (array[..., 1] < 80) & (array[..., 2] < 80)
    inner = red[red_rows, red_cols]
    assert inner[1:-1, 1:-1].all()  # the marker's core, away from JPEG's blur
    assert red.sum() <= 8 * 8 + 16  # and nowhere else
    assert load_array(path, 10).shape == (10, 10, 3)


def test_load_array_scales_the_short_side_and_crops_the_centre(tmp_path: Path) -> None:
    wide = np.zeros((40, 160, 3), dtype=np.uint8)
    wide[:, :40] = RED
    wide[:, 40:120] = GREEN
    wide[:, 120:] = BLUE
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(wide.transpose(1, 0, 2)).save(tmp_path / "tall.png")

    for name in ("wide.png", "tall.png"):
        array = load_array(tmp_path / name, 20)
        assert array.shape == (20, 20, 3)
        assert array.dtype == np.uint8
        assert (array == GREEN).all(), f"{name}: the red and blue edges should be cropped away"


def test_load_array_upscales_small_images_and_accepts_pil_images(tmp_path: Path) -> None:
    path = save_image(tmp_path / "tiny.png", BLUE, size=(3, 5))
    from_file = load_array(path, 16)
    from_image = load_array(Image.new("L", (30, 20), 10), 16)

    assert from_file.shape == from_image.shape == (16, 16, 3)
    assert (from_file == BLUE).all()
    assert (from_image == 10).all()
    from_file[0, 0] = 0  # a writable array, ready for torch.from_numpy


def test_open_image_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "holiday.jpg"
    broken.write_bytes(b"definitely not a jpeg" * 10)

    with pytest.raises(ValueError, match="holiday.jpg"):
        open_image(broken)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        open_image(tmp_path / "missing.png")


# -- validation split -----------------------------------------------------------------


def _items(counts: dict[str, int]) -> list[Item]:
    return [Item(Path(f"/data/{label}/{k:03d}.png"), label)
            for label, n in counts.items() for k in range(n)]


COUNTS = {"ant": 10, "bee": 20, "cat": 5, "dog": 2, "eel": 1}


def test_split_is_stratified(tmp_path: Path) -> None:
    train, valid = split_items(_items(COUNTS), 0.2, seed=0)

    in_valid = {label: sum(i.label == label for i in valid) for label in COUNTS}
    assert in_valid == {"ant": 2, "bee": 4, "cat": 1, "dog": 1, "eel": 0}
    assert [i.label for i in train].count("eel") == 1  # a lone image stays in training
    assert {i.label for i in train} == set(COUNTS)  # every class keeps training images


def test_split_keeps_every_item_exactly_once() -> None:
    items = _items(COUNTS)
    train, valid = split_items(items, 0.3, seed=7)

    assert len(train) + len(valid) == len(items)
    assert set(train) | set(valid) == set(items)
    assert not set(train) & set(valid)


def test_split_is_deterministic_for_a_seed_and_differs_for_another() -> None:
    items = _items(COUNTS)
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)

    first = split_items(items, 0.2, seed=1)
    assert split_items(items, 0.2, seed=1) == first
    assert {*split_items(shuffled, 0.2, seed=1)[1]} == {*first[1]}  # input order does not matter
    assert {*split_items(items, 0.2, seed=2)[1]} != {*first[1]}


# -- fingerprint ----------------------------------------------------------------------


def test_fingerprint_is_stable_until_a_file_changes(tmp_path: Path) -> None:
    root = class_folders(tmp_path, {"cat": 3, "dog": 3})
    before = DataSource.labeled_directories(root).fingerprint()
    assert DataSource.labeled_directories(root).fingerprint() == before

    save_image(root / "cat" / "cat_1.png", BLUE, size=(12, 9))  # same name, new content

    after = DataSource.labeled_directories(root).fingerprint()
    assert after != before
    assert DataSource.labeled_directories(root).fingerprint() == after


def test_fingerprint_changes_when_an_image_is_added_or_relabelled(tmp_path: Path) -> None:
    root = class_folders(tmp_path, {"cat": 3, "dog": 3})
    before = DataSource.labeled_directories(root).fingerprint()

    save_image(root / "dog" / "extra.png")
    added = DataSource.labeled_directories(root).fingerprint()
    (root / "dog" / "extra.png").rename(root / "cat" / "extra.png")
    moved = DataSource.labeled_directories(root).fingerprint()

    assert len({before, added, moved}) == 3


def test_a_trusted_source_reads_no_image(tiny_data, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlwidgets import data as data_module

    monkeypatch.setattr(data_module, "_check_all", lambda paths: pytest.fail("decoded"))
    trusted = DataSource(tiny_data.items, origin="a session split", check=False)
    assert trusted.items == tiny_data.items and trusted.classes == tiny_data.classes
