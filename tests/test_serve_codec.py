"""The env service's wire codec: PNG images inside JSON, cached by content hash."""

from __future__ import annotations

import base64
import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from atlasva.serve.codec import (
    FrameError,
    ImageDecoder,
    ImageEncoder,
    _chunk,
    decode_png,
    digest,
    encode_png,
    encode_step,
)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), c=st.sampled_from([1, 3, 4]), seed=st.integers(0, 2**32 - 1))
def test_png_round_trip_and_readable_by_pillow(h: int, w: int, c: int, seed: int) -> None:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)
    data = encode_png(img)
    assert np.array_equal(decode_png(data), img)
    pil = np.asarray(Image.open(io.BytesIO(data)))
    assert np.array_equal(pil.reshape(h, w, c), img)


def test_decodes_pngs_written_by_pillow() -> None:
    img = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=True)  # filtered rows: the Pillow path
    assert np.array_equal(decode_png(buf.getvalue()), img)
    with pytest.raises(ValueError, match="not a PNG"):
        decode_png(b"GIF89a....")


def test_unchanged_frames_are_encoded_once_and_decoded_copies_are_fresh() -> None:
    enc, dec = ImageEncoder(), ImageDecoder()
    frame = np.zeros((8, 8, 3), np.uint8)
    a, b = enc.encode(frame), enc.encode(frame.copy())
    assert a == b and enc.cache.hits == 1 and enc.cache.misses == 1
    other = enc.encode(np.ones((8, 8, 3), np.uint8))
    assert other["sha"] != a["sha"]
    x, y = dec.decode(a), dec.decode(b)
    assert dec.cache.hits == 1 and np.array_equal(x, frame)
    x[0, 0, 0] = 99  # callers may write into what they get
    assert dec.decode(a)[0, 0, 0] == 0 and y[0, 0, 0] == 0
    with pytest.raises(ValueError, match="uint8"):
        enc.encode(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(FrameError, match=r"declared \(4, 4, 3\)"):  # a fresh decoder: the PNG is read
        ImageDecoder().decode({**a, "shape": [4, 4, 3]})


def test_digest_ignores_bookkeeping_but_not_content() -> None:
    enc = ImageEncoder()
    obs = {"text": "t", "images": (np.zeros((2, 2, 3), np.uint8),)}
    wire = encode_step((obs, 1.0, False, False, {"a": [1, 2]}), enc)
    same = {**wire, "session_id": "x", "index": 3, "replayed": True}
    assert digest(wire) == digest(same)
    assert digest(wire) != digest({**wire, "reward": 0.5})
    assert digest(wire) != digest({**wire, "info": {"a": [2, 1]}})


def _bomb(h: int, w: int, inflated: int) -> bytes:
    """A PNG whose header says h×w×3 but whose data inflates to ``inflated`` bytes (zeros compress ~1000:1)."""
    head = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", head) + _chunk(b"IDAT", zlib.compress(bytes(inflated), 9)) + _chunk(b"IEND", b"")


def test_a_frame_is_never_inflated_past_its_declared_shape() -> None:
    bomb = _bomb(4, 4, 16 << 20)  # 16 MiB of zeros behind a 4×4 header: a ~16 KB body
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(FrameError, match="inflates past the 52 bytes"):
            decode_png(bomb, (4, 4, 3))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decoding allocated {peak >> 20} MiB for a 4x4 frame"
    with pytest.raises(FrameError, match="the PNG is 4x4, but the frame was declared"):
        decode_png(encode_png(np.zeros((4, 4, 3), np.uint8)), (8, 8, 3))  # refused before inflating
    dec = ImageDecoder(max_pixels=100)
    wire = ImageEncoder().encode(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(FrameError, match="over the client's limit of 100"):
        dec.decode(wire)
    for shape in ([16, 16], [16, 16, 2], [0, 16, 3], "16x16"):
        with pytest.raises(FrameError):
            ImageDecoder().decode({**wire, "shape": shape})


def test_corrupted_frames_are_detected_and_never_served_from_the_cache() -> None:
    enc, dec = ImageEncoder(), ImageDecoder()
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    good = enc.encode(frame)
    raw = bytearray(base64.b64decode(good["png"]))
    raw[-20] ^= 0x01  # one bit of the compressed data, as a flaky link would flip it
    flipped = {**good, "png": base64.b64encode(bytes(raw)).decode()}
    with pytest.raises(FrameError):
        dec.decode(flipped)
    assert len(dec.cache) == 0, "a frame that failed its check is not cached"
    assert np.array_equal(dec.decode(good), frame)
    # the same PNG announced under another sha: refused even though the PNG is cached
    with pytest.raises(FrameError, match="declared sha"):
        dec.decode({**good, "sha": enc.encode(frame[::-1].copy())["sha"]})
    # a valid PNG of other pixels under this frame's sha (a server mixing frames up): refused
    other = enc.encode(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    with pytest.raises(FrameError, match="hash to"):
        ImageDecoder().decode({**other, "sha": good["sha"]})
