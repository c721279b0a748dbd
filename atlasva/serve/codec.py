"""Wire format of the env service: observations with PNG images inside JSON.

An image travels as ``{"sha": HEX, "shape": [H, W, C], "png": BASE64}``. The PNG is written here
(8-bit, no row filter, zlib level 1: about twice as fast as Pillow's encoder and any PNG reader
opens it); PNGs of that form are read back with zlib alone, anything else through Pillow. zlib
and the hash release the GIL, so a batch is encoded (decoded) on several threads. ``sha`` is a content
hash of the raw pixels (:func:`image_sha`): the server caches the PNG encoding of recent frames
by it (an unchanged frame — an ineffective move, or the same level in a GRPO group — is not encoded
again). The client trusts nothing it receives: a frame must have its declared shape before it is
inflated (a PNG that would inflate past it is refused: no zlib bombs), its pixels must hash to its
``sha``, and decoded frames are cached by a hash of the PNG bytes received together with the verified
``sha``, so a cache hit can never hand back pixels the server did not send. A failed check raises
:class:`FrameError`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import json
import struct
import threading
import zlib
from collections import OrderedDict
from typing import Any

import numpy as np
from PIL import Image


class FrameError(ValueError):
    """A received frame failed a check: not a PNG, another shape than declared, more data than its
    shape holds, or pixels that do not hash to the declared ``sha``."""


#: Largest frame a client accepts (H×W), whatever the server declares.
MAX_FRAME_PIXELS = 16 << 20


class LRU:
    """A small thread-safe LRU map bounded by total size (``sizeof`` per value)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: str, value: Any, size: int) -> None:
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._data[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, s) = self._data.popitem(last=False)
                self._bytes -= s

    def __len__(self) -> int:
        return len(self._data)


def image_sha(img: np.ndarray) -> str:
    """128-bit content hash of a frame (shape, dtype, pixels). SHA-256, truncated: with the CPU's SHA
    instructions it runs about twice as fast as blake2b here, and both ends hash every frame."""
    h = hashlib.sha256(_sha_header(tuple(img.shape), str(img.dtype)))
    h.update(np.ascontiguousarray(img).data)
    return h.hexdigest()[:32]


@functools.lru_cache(maxsize=64)
def _sha_header(shape: tuple[int, ...], dtype: str) -> bytes:
    return json.dumps([list(shape), dtype]).encode()


_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(img: np.ndarray, level: int = 1) -> bytes:
    """uint8 H×W×C (C ∈ {1, 3, 4}) → PNG bytes (no row filter, zlib ``level``)."""
    h, w, c = img.shape
    raw = np.zeros((h, w * c + 1), np.uint8)  # each row: filter byte 0, then the pixels
    raw[:, 1:] = img.reshape(h, w * c)
    header = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPES[c], 0, 0, 0)
    return _PNG_SIG + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + _chunk(b"IEND", b"")


def decode_png(data: bytes, shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """PNG bytes → uint8 H×W×C. Unfiltered 8-bit PNGs (ours) are read with zlib, others with Pillow.

    With ``shape`` given, a PNG whose header declares another size is refused before anything is
    inflated, and no more than ``shape`` holds is ever inflated (:class:`FrameError`)."""
    fast = _decode_unfiltered(data, shape)
    if fast is not None:
        return fast
    with Image.open(io.BytesIO(data)) as im:  # lazy: only the header is read here
        if shape is not None and (im.size[1], im.size[0]) != tuple(shape[:2]):
            raise FrameError(f"the PNG is {im.size[1]}x{im.size[0]}, but the frame was declared {shape}")
        arr = np.asarray(im, dtype=np.uint8)
    arr = arr[..., None] if arr.ndim == 2 else arr
    if shape is not None and arr.shape != tuple(shape):
        raise FrameError(f"decoded image has shape {arr.shape}, but the frame was declared {tuple(shape)}")
    return arr


def _decode_unfiltered(data: bytes, shape: tuple[int, int, int] | None = None) -> np.ndarray | None:
    if not data.startswith(_PNG_SIG):
        raise FrameError("not a PNG image")
    pos, idat, head = 8, [], None
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        elif kind[0] & 0x20 == 0:  # an unknown critical chunk (e.g. a palette): let Pillow read it
            return None
    if head is None or len(head) != 7:
        raise FrameError("PNG without a valid IHDR chunk")
    w, h, depth, color, _, _, interlace = head
    channels = {v: k for k, v in _COLOR_TYPES.items()}.get(color)
    if shape is not None and (h, w) != tuple(shape[:2]):
        raise FrameError(f"the PNG is {h}x{w}, but the frame was declared {tuple(shape)}")
    if depth != 8 or interlace or channels is None:
        return None
    expected = h * (w * channels + 1)
    inflater = zlib.decompressobj()
    raw_bytes = inflater.decompress(b"".join(idat), expected + 1)  # never more than the shape holds
    if len(raw_bytes) > expected or inflater.unconsumed_tail:
        raise FrameError(f"PNG data inflates past the {expected} bytes a {h}x{w}x{channels} image holds")
    raw = np.frombuffer(raw_bytes, np.uint8)
    if raw.size != expected:
        raise FrameError(f"PNG data has {raw.size} bytes, expected {expected}")
    raw = raw.reshape(h, w * channels + 1)
    if raw[:, 0].any():  # filtered rows: not ours
        return None
    return raw[:, 1:].reshape(h, w, channels).copy()


class ImageEncoder:
    """uint8 H×W×C arrays → wire dicts, caching the PNG (base64) of frames seen recently."""

    def __init__(self, cache_bytes: int = 64 << 20, compress_level: int = 1) -> None:
        self.cache = LRU(cache_bytes)
        self.compress_level = int(compress_level)

    def encode(self, img: np.ndarray) -> dict[str, Any]:
        arr = np.ascontiguousarray(img)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in _COLOR_TYPES:
            raise ValueError(f"an observation image must be uint8 H×W×3 (or ×1, ×4), got {arr.dtype} {arr.shape}")
        sha = image_sha(arr)
        png = self.cache.get(sha)
        if png is None:
            png = base64.b64encode(encode_png(arr, self.compress_level)).decode("ascii")
            self.cache.put(sha, png, len(png))
        return {"sha": sha, "shape": [int(x) for x in arr.shape], "png": png}


class ImageDecoder:
    """Wire dicts → fresh uint8 arrays, every frame checked (see the module docstring); decoded frames
    are cached by a hash of the PNG received, with their verified ``sha``; callers get copies."""

    def __init__(self, cache_bytes: int = 64 << 20, max_pixels: int = MAX_FRAME_PIXELS) -> None:
        self.cache = LRU(cache_bytes)
        self.max_pixels = int(max_pixels)

    def decode(self, wire: dict[str, Any]) -> np.ndarray:
        try:
            sha, png = wire["sha"], wire["png"]
            shape = tuple(int(x) for x in wire["shape"])
            if not isinstance(sha, str) or not isinstance(png, str):
                raise FrameError("a frame needs 'sha' and 'png' strings")
        except (KeyError, TypeError, ValueError) as exc:
            raise FrameError(f"malformed frame record: {exc!r}") from exc
        if len(shape) != 3 or shape[2] not in _COLOR_TYPES or min(shape) < 1:
            raise FrameError(f"frame shape {list(shape)} is not H×W×C with C in (1, 3, 4)")
        if shape[0] * shape[1] > self.max_pixels:
            raise FrameError(f"frame of {shape[0]}x{shape[1]} pixels is over the client's limit of {self.max_pixels}")
        key = hashlib.blake2b(png.encode("ascii", "replace"), digest_size=16).hexdigest()
        hit = self.cache.get(key)
        if hit is not None:
            cached_sha, arr = hit
            if cached_sha != sha:
                raise FrameError(f"frame declared sha {sha[:12]}… but its PNG holds pixels with sha {cached_sha[:12]}…")
            return arr.copy()
        try:
            arr = decode_png(base64.b64decode(png), shape)  # type: ignore[arg-type]  # (a bad character fails the hash)
        except (binascii.Error, zlib.error, struct.error, OSError) as exc:
            raise FrameError(f"unreadable PNG: {exc}") from exc
        actual = image_sha(arr)
        if actual != sha:
            raise FrameError(f"frame pixels hash to {actual[:12]}…, not the declared sha {sha[:12]}… (corrupted in transit?)")
        arr.setflags(write=False)
        self.cache.put(key, (sha, arr), arr.nbytes)
        return arr.copy()


def encode_obs(obs: dict[str, Any], encoder: ImageEncoder) -> dict[str, Any]:
    return {"text": str(obs["text"]), "images": [encoder.encode(im) for im in obs.get("images", ())]}


def decode_obs(wire: dict[str, Any], decoder: ImageDecoder) -> dict[str, Any]:
    return {"text": wire["text"], "images": tuple(decoder.decode(im) for im in wire["images"])}


def encode_step(result: tuple[Any, ...], encoder: ImageEncoder) -> dict[str, Any]:
    obs, reward, terminated, truncated, info = result
    return {
        "obs": encode_obs(obs, encoder),
        "reward": float(reward),
        "terminated": bool(terminated),
        "truncated": bool(truncated),
        "info": info,
    }


def decode_step(wire: dict[str, Any], decoder: ImageDecoder) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
    return (
        decode_obs(wire["obs"], decoder),
        float(wire["reward"]),
        bool(wire["terminated"]),
        bool(wire["truncated"]),
        wire["info"],
    )


RESULT_KEYS = ("obs", "reward", "terminated", "truncated", "info")


def digest(wire: dict[str, Any]) -> str:
    """Content hash of a wire reset/step result (what the env returned; images by ``sha``).

    Session ids, indices and episode numbers are left out, so a replay on another server can be
    checked against the original run.
    """
    obs = wire["obs"]
    data = {k: wire[k] for k in RESULT_KEYS if k in wire and k != "obs"}
    data["obs"] = {"text": obs["text"], "images": [im["sha"] for im in obs["images"]]}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
