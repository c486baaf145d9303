"""Decoding images the same way for training, evaluation and prediction.

Every image becomes 8-bit RGB with its EXIF orientation applied, then is scaled so
its short side is the model's size and centre-cropped to a square: what Vision's
default `.centerCrop` option does on the device, so an exported model sees what
training saw.

Files are opened only when they are regular files (a FIFO or device is refused, never
waited on), and an image's size is checked from its header before it is decoded: at most
PIL's `Image.MAX_IMAGE_PIXELS` pixels and an aspect ratio of MAX_ASPECT_RATIO, so a few KB
that claim to be a 20,000,000 x 1 picture cannot exhaust memory.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from .errors import DataNotFoundError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
MAX_ASPECT_RATIO = 100  # long side over short side; beyond, the file is refused undecoded
# The decoders tried, whatever a file's extension says. Only these: PIL's EPS plugin, say,
# would run Ghostscript on a file that claims to be a photo.
DECODERS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


class ImageTooLarge(ValueError):
    """An image whose header claims more pixels, or a longer shape, than is decoded safely."""


def open_regular(path: str | os.PathLike) -> IO[bytes]:
    """Open a regular file for reading; a FIFO, device or folder raises ValueError at once
    (opening without blocking, so a FIFO without a writer never hangs)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) \
                else "a device or special file"
            raise ValueError(f"{kind}, not an image file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_dimensions(image: Image.Image) -> None:
    """Refuse, before decoding, an image too large or too long to decode safely."""
    w, h = image.size
    if w < 1 or h < 1:
        raise ImageTooLarge("image has no pixels")
    if w * h > (Image.MAX_IMAGE_PIXELS or float("inf")):
        raise ImageTooLarge(f"image too large to decode safely ({w} x {h} pixels, more than "
                            f"{Image.MAX_IMAGE_PIXELS})")
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise ImageTooLarge(f"image too long to use ({w} x {h} pixels, an aspect ratio over "
                            f"{MAX_ASPECT_RATIO})")


def _decoded(f: IO[bytes]) -> Image.Image:
    try:
        image = Image.open(f, formats=DECODERS)
    except Image.UnidentifiedImageError:
        raise ValueError("not an image in a known format") from None
    with image:
        check_dimensions(image)
        image.load()  # decode now, so a truncated file fails here
        return to_rgb(image)


def is_hidden(path: Path) -> bool:
    return path.name.startswith((".", "__MACOSX")) or path.name in {"Thumbs.db", "desktop.ini"}


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: grayscale, alpha, palette, 16-bit, float, CMYK."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _high_depth_to_l(image)
    elif mode in ("RGBA", "LA", "PA", "P", "La", "RGBa"):
        # Transparent areas become white, the usual background behind an icon or sticker.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if array.max(initial=0) <= 1.0 else 255.0
    elif image.mode.startswith("I;16"):
        # 16-bit by definition: a dark image must stay dark, not be read as 8-bit.
        top = 65535.0
    else:
        top = 65535.0 if array.max(initial=0) > 255 else 255.0
    scaled = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def open_image(source: str | os.PathLike | Image.Image | bytes) -> Image.Image:
    """Open and fully decode an image (a file, a PIL image or encoded bytes) as RGB;
    errors name the file."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        try:
            return _decoded(io.BytesIO(bytes(source)))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ValueError(f"cannot be read as an image ({e})") from None
    path = Path(source)
    try:
        with open_regular(path) as f:
            return _decoded(f)
    except FileNotFoundError:
        raise DataNotFoundError("no such image file", path, "check the path") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path} cannot be read as an image: {e}") from None


def square_resize(image: Image.Image, size: int) -> Image.Image:
    """Scale the short side to `size`, then centre-crop to size x size."""
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_array(source: str | os.PathLike | Image.Image, size: int) -> np.ndarray:
    """An image as a (size, size, 3) uint8 array, ready to batch."""
    return np.array(square_resize(open_image(source), size), dtype=np.uint8)  # writable copy


def check_image(path: Path) -> str | None:
    """Why `path` cannot be used as a training image, or None if it can."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file ({path.suffix or 'no extension'})"
    try:
        f = open_regular(path)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    except ValueError as e:
        return str(e)
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            return "empty file (0 bytes)"
        return _check_decodes(f)


def _check_decodes(f: IO[bytes]) -> str | None:
    try:
        with Image.open(f, formats=DECODERS) as image:
            check_dimensions(image)
            image.load()
    except Image.UnidentifiedImageError:
        return "cannot be decoded (not an image in a known format)"
    except ImageTooLarge as e:
        return str(e)
    except Image.DecompressionBombError:
        return "image too large to decode safely"
    except (OSError, ValueError, SyntaxError) as e:
        reason = str(e) or type(e).__name__
        if "truncated" in reason.lower():
            return "truncated image (the file ends early)"
        return f"cannot be decoded ({reason})"
    return None


def thumbnail_png(source: str | os.PathLike | Image.Image | bytes, size: int = 96) -> bytes:
    """A PNG of the image fitted into size x size (aspect kept), for previews."""
    image = open_image(source).copy()
    image.thumbnail((size, size), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
