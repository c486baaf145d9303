"""Small datasets that need no network, written out as labelled image folders.

``shapes()`` draws coloured shapes on varied backgrounds; ``digits()`` writes scikit-learn's
bundled handwritten digits. Each writes one sub-folder per class of PNG files and returns a
``DataSource`` over it. With ``root=None`` the folder lives in ``cache_dir()`` and is reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

if TYPE_CHECKING:
    from .data import DataSource

MARKER = "dataset.json"
_FORMAT = 2  # bump when the generated images change, so old caches are not reused
_STALE_SECONDS = 3600  # a partial folder this old belongs to a run that died
_LUMA = np.array([0.299, 0.587, 0.114])
# Light shapes on darker backgrounds, luminance bands apart, so the shape always stands out.
# (Mixing both polarities made a small CNN from scratch need many more epochs.)
_BACKGROUND_LUMA, _SHAPE_LUMA = (0.0, 90.0), (165.0, 255.0)
_UP = -math.pi / 2  # image y grows downwards
# Files are larger than the demo's training size (64 px), as users' photos are: decoding and
# resizing them is real work, which the decoded-image cache then does only once.
SHAPES_FILE_SIZE = 256


def _regular(n: int, start: float = 0.0) -> np.ndarray:
    angles = start + np.arange(n) * (2 * math.pi / n)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _cross(rng: np.random.Generator) -> np.ndarray:
    w = rng.uniform(0.28, 0.38)  # half the arm width
    quarter = [(1, -w), (1, w), (w, w)]
    rot = np.array([[0, -1], [1, 0]])
    pts = np.concatenate([np.array(quarter) @ np.linalg.matrix_power(rot, k).T for k in range(4)])
    return pts / math.hypot(1, w)  # unit circumradius like the other outlines


# Upright outlines of unit circumradius. They are tilted only mildly (see _draw_shape) so that
# a square does not turn into a diamond, and the classes stay learnable from ~100 images each.
_OUTLINES: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "circle": lambda rng: _regular(64),
    "square": lambda rng: _regular(4, math.pi / 4),
    "triangle": lambda rng: _regular(3, _UP),
    "star": lambda rng: _regular(10, _UP) * np.tile([1, rng.uniform(0.4, 0.5)], 5)[:, None],
    "hexagon": lambda rng: _regular(6),
    "cross": _cross,
}
SHAPE_CLASSES = tuple(_OUTLINES)


def cache_dir() -> Path:
    """Where datasets go when ``root`` is None: ``$MLWIDGETS_CACHE`` or the XDG cache."""
    if env := os.environ.get("MLWIDGETS_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mlwidgets"


def shapes(
    root: str | os.PathLike | None = None,
    *,
    images_per_class: int = 200,
    image_size: int = SHAPES_FILE_SIZE,
    classes: Sequence[str] = ("circle", "square", "triangle", "star"),
    seed: int = 0,
) -> DataSource:
    """Generated coloured shapes, one class per shape, as `image_size` px PNG files.

    The same arguments give identical files.
    """
    from .data import DataSource

    folder = _shapes_folder(root, images_per_class=images_per_class, image_size=image_size,
                            classes=classes, seed=seed)
    return DataSource.labeled_directories(folder)


def digits(root: str | os.PathLike | None = None, *, image_size: int = 32) -> DataSource:
    """scikit-learn's 1797 handwritten digits (8x8, upscaled), as grayscale folders ``0``..``9``."""
    from .data import DataSource

    return DataSource.labeled_directories(_digits_folder(root, image_size=image_size))


def _shapes_folder(root: str | os.PathLike | None, *, images_per_class: int, image_size: int,
                   classes: Sequence[str], seed: int) -> Path:
    classes = list(classes)
    if not classes or len(set(classes)) != len(classes) or not set(classes) <= set(_OUTLINES):
        raise ValueError(f"classes must be distinct names from {', '.join(SHAPE_CLASSES)}; "
                         f"got {classes}")
    if images_per_class < 1 or image_size < 16 or seed < 0:
        raise ValueError("need images_per_class >= 1, image_size >= 16 and seed >= 0")
    # Each class has its own random stream, so class order does not change the images.
    arguments = {"classes": sorted(classes), "image_size": image_size,
                 "images_per_class": images_per_class, "seed": seed}
    return _materialize("shapes", arguments, root, _write_shapes)


def _digits_folder(root: str | os.PathLike | None, *, image_size: int) -> Path:
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 (the digits are 8x8); got {image_size}")
    return _materialize("digits", {"image_size": image_size}, root, _write_digits)


def _write_shapes(folder: Path, *, classes: Sequence[str], image_size: int,
                  images_per_class: int, seed: int) -> int:
    for name in classes:
        (folder / name).mkdir()
        for i in range(images_per_class):
            rng = np.random.default_rng([seed, zlib.crc32(name.encode()), i])
            _draw_shape(name, image_size, rng).save(folder / name / f"{name}_{i:04d}.png")
    return len(classes) * images_per_class


def _write_digits(folder: Path, *, image_size: int) -> int:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    for label in range(10):
        (folder / str(label)).mkdir()
    for index, (pixels, label) in enumerate(zip(bunch.images, bunch.target)):
        ink = np.rint(pixels * (255 / 16)).astype(np.uint8)  # values are 0..16
        image = Image.fromarray(255 - ink).resize((image_size,) * 2, Image.Resampling.BILINEAR)
        image.save(folder / str(label) / f"{index:04d}.png")  # dark ink on white, as sklearn shows
    return len(bunch.images)


def _colour(rng: np.random.Generator, band: tuple[float, float]) -> np.ndarray:
    while True:
        rgb = rng.uniform(0, 255, 3)
        if band[0] <= rgb @ _LUMA <= band[1]:
            return rgb


def _background_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A field in [0, 1] that mixes two colours: solid, a linear gradient, or smooth noise."""
    kind = rng.integers(3)
    if kind == 0:
        return np.zeros((size, size))
    if kind == 1:
        angle = rng.uniform(0, 2 * math.pi)
        y, x = np.mgrid[0:size, 0:size] / (size - 1)
        ramp = x * math.cos(angle) + y * math.sin(angle)
        return (ramp - ramp.min()) / (ramp.max() - ramp.min())
    coarse = Image.fromarray(rng.random((int(rng.integers(2, 6)),) * 2).astype(np.float32))
    smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BILINEAR), dtype=float)
    return 0.7 * smooth + 0.3 * rng.random((size, size))


def _draw_shape(name: str, size: int, rng: np.random.Generator) -> Image.Image:
    first, second = _colour(rng, _BACKGROUND_LUMA), _colour(rng, _BACKGROUND_LUMA)
    # Mixing two in-band colours stays in band, because luminance is linear in RGB.
    background = first + (second - first) * _background_field(rng, size)[..., None]
    fill = _colour(rng, _SHAPE_LUMA)

    pts = _OUTLINES[name](rng) * [rng.uniform(0.85, 1.15), 1.0]  # mild stretch
    angle = rng.uniform(-math.pi / 9, math.pi / 9)  # tilt up to 20 degrees
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = pts @ rotation.T * (rng.uniform(0.28, 0.42) * size)  # roughly 45-85% of the image
    low, high = pts.min(axis=0), pts.max(axis=0)
    pts = pts + rng.uniform(-low, size - high)  # anywhere, as long as all of it is inside

    scale = 4  # draw the mask 4x larger and average down, for anti-aliased edges
    mask = Image.new("L", (size * scale, size * scale))
    ImageDraw.Draw(mask).polygon([tuple(p) for p in pts * scale], fill=255)
    alpha = np.asarray(mask.resize((size, size), Image.Resampling.BOX), dtype=float)[..., None]
    pixels = background * (1 - alpha / 255) + fill * (alpha / 255)
    pixels += rng.normal(0, rng.uniform(0, 8), pixels.shape)  # sensor-like grain
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    blur = rng.uniform(0, 0.8)
    return image.filter(ImageFilter.GaussianBlur(blur)) if blur > 0.3 else image


def _materialize(name: str, arguments: dict, root: str | os.PathLike | None,
                 write: Callable[..., int]) -> Path:
    """The folder holding this dataset, written (atomically) unless already complete there."""
    marker = {"name": name, "format": _FORMAT, "arguments": arguments}
    if root is None:
        digest = hashlib.sha256(json.dumps(marker, sort_keys=True).encode()).hexdigest()[:12]
        target = cache_dir() / "datasets" / f"{name}-{digest}"
    else:
        target = Path(root).expanduser()
    if _is_complete(target, marker):
        return target
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        if root is not None:  # never delete a user's files
            raise FileExistsError(f"{target} already holds files that are not this {name} "
                                  "dataset; pass an empty or new folder")
        shutil.rmtree(target)  # our own cache entry, damaged: regenerate it

    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_partials(target)
    partial = Path(tempfile.mkdtemp(".partial", f".{target.name}.", target.parent))
    try:
        files = write(partial, **arguments)
        # Written last: its presence is what makes a folder a complete dataset. No fsync, since
        # a dataset is cheap to regenerate and fsyncing thousands of PNGs is slow.
        (partial / MARKER).write_text(json.dumps({**marker, "files": files}, indent=2) + "\n")
        _commit(partial, target, marker)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already unless something failed
    return target


def _commit(partial: Path, target: Path, marker: dict) -> None:
    with contextlib.suppress(OSError):
        target.rmdir()  # only if empty: Windows will not replace even an empty directory
    try:
        os.replace(partial, target)
    except OSError:
        if not _is_complete(target, marker):  # fine if another process wrote it first
            raise


def _is_complete(folder: Path, marker: dict) -> bool:
    try:
        recorded = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in marker.items())
            and recorded.get("files") == sum(1 for _ in folder.glob("*/*.png")))


def _sweep_stale_partials(target: Path) -> None:
    cutoff = time.time() - _STALE_SECONDS
    for leftover in target.parent.glob(".*.partial"):
        if leftover.name.startswith(f".{target.name}."):
            with contextlib.suppress(OSError):  # class folders' mtimes show a run still writing
                if max(p.stat().st_mtime for p in [leftover, *leftover.iterdir()]) < cutoff:
                    shutil.rmtree(leftover)
