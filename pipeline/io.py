"""Atomic file writes and small readers shared by all stages.

Every artifact is written to a temporary name in the same folder and renamed into place, so an interrupted run
never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.errors import UserError


def current_umask() -> int:
    """The process's file-mode creation mask: Linux's /proc/self/status line, else by setting it and setting it back
    (which, between the two calls, another thread could see)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def with_default_mode(path: Path) -> Path:
    """Give ``path``, made by :mod:`tempfile` (0600 for a file, 0700 for a folder), the mode that ``open`` or
    ``mkdir`` would have given it (0666 / 0777 less the umask), so that outputs renamed into place are as readable
    as any other file the user writes. Best effort: a file system without modes (FAT, some network shares) keeps
    its own."""
    try:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~current_umask())
    except OSError:
        pass
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on failure delete it. The file
    gets the user's default mode (:func:`with_default_mode`), not tempfile's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = with_default_mode(Path(tmp))
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing, empty or malformed file is a :class:`UserError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", path)
    raw = path.read_bytes()
    # Byte-order marks: UTF-32's little-endian one begins with UTF-16's, so it is tested first.
    encoding = ("UTF-32" if raw[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff") else
                "UTF-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else None)
    if encoding:
        raise UserError(f"is {encoding} text; JSON files must be UTF-8 (save it again as UTF-8)", path)
    text = raw.decode("utf-8-sig", errors="replace")      # -sig: a byte-order mark, as Windows editors write, is fine
    if not text.strip():
        raise UserError("file is empty", path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"malformed JSON (line {err.lineno}, column {err.colno}: {err.msg})", path) from None


def write_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an 8-bit PNG. ``image``: (H, W), (H, W, 3) or (H, W, 4), uint8, or float in [0, 1] (rounded)."""
    import imageio.v3 as iio

    if image.dtype != np.uint8:
        image = np.clip(np.round(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=".png")


PICKLED = "it holds pickled Python objects"     # why a .npy/.npz that numpy would only load with allow_pickle fails


def numpy_load_reason(err: BaseException) -> str:
    """Why ``np.load(..., allow_pickle=False)`` failed, for a one-line error: numpy's "Object arrays cannot be loaded
    when allow_pickle=False" (and its advice to allow pickles) becomes "it holds pickled Python objects"; other
    errors their own text, cut at 120 characters, or their type's name."""
    if "pickle" in str(err):
        return PICKLED
    return str(err)[:120] or type(err).__name__


def _check_npy_magic(f, path: str | Path, what: str) -> None:
    """Refuse a file ``f`` (opened binary, at its start) that does not begin as a ``.npy`` file; rewinds it."""
    magic = f.read(6)
    if magic != b"\x93NUMPY":
        kind = "is empty" if not magic else "is a .npz archive" if magic[:2] == b"PK" else "is not a .npy file"
        raise UserError(f"unreadable {what}: the file {kind}", path)
    f.seek(0)


def _check_real_numbers(dtype: np.dtype, path: str | Path, what: str) -> None:
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise UserError(f"{what} must hold real numbers, got an array of {dtype}", path)


def read_npy_numbers(path: str | Path, what: str) -> np.ndarray:
    """The real-valued array of a ``.npy`` file, or a one-line :class:`UserError` naming the file and ``what`` it
    should hold: missing, empty, truncated, not a ``.npy`` file (random bytes, text, an ``.npz`` archive), pickled
    objects (refused, never loaded), or values that are not real numbers (text, complex)."""
    try:
        with open(path, "rb") as f:
            _check_npy_magic(f, path, what)
            array = np.load(f, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{what} not found", path) from None
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"unreadable {what} ({numpy_load_reason(err)})", path) from None
    _check_real_numbers(array.dtype, path, what)
    return array


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_npy_shape(path: str | Path, what: str) -> tuple[int, ...] | None:
    """The shape of a ``.npy`` file's array from its header alone (no data is read: cheap enough to check every
    ground-truth map when a scene loads), or a one-line :class:`UserError` naming the file as
    :func:`read_npy_numbers` would: missing, empty, not a ``.npy`` file, pickled objects, not real numbers, or
    shorter than its header says (truncated). None for a format version without a public header reader (3.0: the
    full read checks it)."""
    try:
        with open(path, "rb") as f:
            _check_npy_magic(f, path, what)
            reader = _NPY_HEADER_READERS.get(np.lib.format.read_magic(f))
            if reader is None:
                return None
            shape, _, dtype = reader(f)
            needed = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise UserError(f"{what} not found", path) from None
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"unreadable {what} ({numpy_load_reason(err)})", path) from None
    if dtype.hasobject:
        raise UserError(f"unreadable {what} ({PICKLED})", path)
    _check_real_numbers(dtype, path, what)
    if size < needed:
        raise UserError(f"unreadable {what}: the file is truncated ({size} of {needed} bytes)", path)
    return tuple(shape)


def read_npy_map(path: str | Path, what: str) -> np.ndarray:
    """An (H, W) float32 map from a ``.npy`` file ((H, W, 1) squeezed), or a one-line :class:`UserError` naming the
    file: unreadable, empty, truncated, not numbers or of another shape (:func:`read_npy_numbers`). ``what`` names the
    map in the message ("depth map", "confidence map"). Non-finite values are kept; the caller decides what they
    mean."""
    array = read_npy_numbers(path, what)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise UserError(f"{what} must be (H, W) numbers, got {array.dtype} of shape {array.shape}", path)
    return array.astype(np.float32)


def read_npy_map_size(path: str | Path, what: str) -> tuple[int, int] | None:
    """(W, H) of the (H, W) or (H, W, 1) map in a ``.npy`` file from its header alone (:func:`read_npy_shape`), with
    :func:`read_npy_map`'s errors: a scene checks every ground-truth map this way when it loads, so that a damaged
    one is named before hours of work rather than when the evaluation reads it. None where the header cannot be
    read alone."""
    shape = read_npy_shape(path, what)
    if shape is None:
        return None
    if len(shape) == 3 and shape[-1] == 1:
        shape = shape[:2]
    if len(shape) != 2:
        raise UserError(f"{what} must be (H, W) numbers, got an array of shape {shape}", path)
    return shape[1], shape[0]


def require_ffmpeg(what: str, fallback: str = ""):
    """The ``imageio_ffmpeg`` module (the ffmpeg binary that video input and MP4 output use), or a one-line
    :class:`UserError` naming ``what`` needed it, how to install it and ``fallback`` (another way round), if any."""
    try:
        import imageio_ffmpeg
    except ImportError:
        hint = f", or {fallback}" if fallback else ""
        raise UserError(f"{what} needs imageio-ffmpeg, which is not installed: "
                        f"pip install imageio-ffmpeg{hint}") from None
    return imageio_ffmpeg


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()
