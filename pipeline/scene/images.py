"""Reading and resizing images with one-line errors for unreadable, corrupt or unsupported files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def natural_key(path: Path) -> list:
    """Sort key that orders 'frame2' before 'frame10'."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", path.name)]


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise UserError("file not found", path) from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"not a readable image ({_reason(err)})", path) from None


def read_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image as float32 (H, W, 3) or (H, W, 4) in [0, 1]; resize (area-averaging) to ``size`` = (W, H)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in WIDE_MODES:
                return _wide_to_rgb(im, size)
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
            elif im.mode != "RGB":
                im = im.convert("RGB")
            if size is not None and im.size != tuple(size):
                im = im.resize(tuple(size), Image.Resampling.BOX if size[0] < im.size[0] else Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise UserError("file not found", path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UserError(f"corrupt or unreadable image ({_reason(err)})", path) from None


# Single-channel modes wider than 8 bits, and the value of full white in each: PIL's convert("RGB") clips these at
# 255, so a 16-bit greyscale PNG (mode I;16) would read almost white. (PIL reads 16-bit colour PNGs as 8-bit RGB.)
WIDE_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def _wide_to_rgb(im, size: tuple[int, int] | None) -> np.ndarray:
    """A 16-bit integer or 32-bit float greyscale image as float32 (H, W, 3) in [0, 1]: integers divided by
    65535 (a 32-bit integer image holds 16-bit PNG values in PIL), floats taken as they are; both clipped."""
    from PIL import Image

    grey = np.asarray(im, dtype=np.float32) / WIDE_MODES[im.mode]
    grey = np.clip(np.nan_to_num(grey), 0.0, 1.0)
    if size is not None and (grey.shape[1], grey.shape[0]) != tuple(size):
        shrink = size[0] < grey.shape[1]          # as read_image: area-averaging down, bicubic up
        resized = Image.fromarray(grey, mode="F").resize(tuple(size), Image.Resampling.BOX if shrink
                                                         else Image.Resampling.BICUBIC)
        grey = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return np.repeat(grey[..., None], 3, axis=-1)


def read_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask image as (H, W) bool (any channel > 0.5)."""
    image = read_image(path, size)
    return image[..., :3].max(axis=-1) > 0.5


def resize_array(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) float array to ``size`` = (W, H)."""
    from PIL import Image

    if (array.shape[1], array.shape[0]) == tuple(size):
        return array
    mode = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if array.ndim == 2:
        return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize(size, mode))
    return np.stack([resize_array(array[..., c], size, nearest) for c in range(array.shape[-1])], axis=-1)


def scaled_size(width: int, height: int, factor: float = 1.0, max_size: int = 0) -> tuple[int, int]:
    """Image size after dividing by ``factor`` and capping the longer side at ``max_size`` (0 = no cap)."""
    w, h = width / factor, height / factor
    if max_size and max(w, h) > max_size:
        s = max_size / max(w, h)
        w, h = w * s, h * s
    return max(1, int(round(w))), max(1, int(round(h)))


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160]
