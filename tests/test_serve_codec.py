"""The env service's wire codec: PNG images inside JSON, cached by content hash."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from atlasva.serve.codec import ImageDecoder, ImageEncoder, decode_png, digest, encode_png, encode_step


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
    bad = {**a, "sha": "0" * 32, "shape": [4, 4, 3]}
    with pytest.raises(ValueError, match="announced"):
        dec.decode(bad)


def test_digest_ignores_bookkeeping_but_not_content() -> None:
    enc = ImageEncoder()
    obs = {"text": "t", "images": (np.zeros((2, 2, 3), np.uint8),)}
    wire = encode_step((obs, 1.0, False, False, {"a": [1, 2]}), enc)
    same = {**wire, "session_id": "x", "index": 3, "replayed": True}
    assert digest(wire) == digest(same)
    assert digest(wire) != digest({**wire, "reward": 0.5})
    assert digest(wire) != digest({**wire, "info": {"a": [2, 1]}})
