import io

import numpy as np
import pytest
from shape_library.images import InputRejected
from PIL import Image

from service.uploads import decode_image, parse_bbox, parse_ids


def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _status(fn, *a) -> tuple[int, str]:
    with pytest.raises(InputRejected) as exc:
        fn(*a)
    return exc.value.status, exc.value.detail


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_accepted_formats_by_content(fmt):
    img = decode_image(_enc(RGB, fmt), 10**7)
    assert img.mode == "RGB" and img.size == (60, 40)


def test_rejections_are_clear():
    assert _status(decode_image, b"", 10**7)[0] in (415, 422)
    code, msg = _status(decode_image, b"GIF89a not really", 10**7)
    assert code == 415 and "JPEG, PNG or WebP" in msg
    code, msg = _status(decode_image, _enc(RGB, "GIF"), 10**7)
    assert code == 415 and "GIF" in msg
    code, msg = _status(decode_image, _enc(RGB, "JPEG")[:300], 10**7)
    assert code == 422 and "broken" in msg
    code, msg = _status(decode_image, _enc(Image.new("RGB", (1, 1)), "PNG"), 10**7)
    assert code == 422 and "too small" in msg
    code, msg = _status(decode_image, _enc(Image.new("L", (3000, 3000)), "PNG"), 10**6)
    assert code == 413 and "pixels" in msg


def test_modes_are_converted_and_exif_applied():
    assert decode_image(_enc(RGB.convert("CMYK"), "JPEG"), 10**7).mode == "RGB"
    rgba = RGB.convert("RGBA")
    assert decode_image(_enc(rgba, "PNG"), 10**7).mode == "RGB"
    assert decode_image(_enc(Image.new("I;16", (20, 20)), "PNG"), 10**7).mode == "RGB"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    rotated = decode_image(_enc(RGB, "JPEG", exif=exif), 10**7)
    assert rotated.size == (40, 60)


def test_bbox_and_ids_parsing():
    img = Image.new("RGB", (100, 50))
    assert parse_bbox("10,5,60,45", img) == (10, 5, 60, 45)
    assert parse_bbox(None, img) is None
    for bad, word in [("1,2,3", "four numbers"), ("10,5,5,45", "x1 > x0"), ("0,0,101,50", "outside"), ("nan,0,5,5", "finite"),
                      ("0,0,2,2", "smaller")]:
        code, msg = _status(parse_bbox, bad, img)
        assert code == 422 and word in msg, (bad, msg)
    assert parse_ids("3, 4,5") == [3, 4, 5]
    assert _status(parse_ids, "3,x")[0] == 422


def _png_with_header_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims another size: a decompression bomb as far as a decoder can tell."""
    import struct
    import zlib

    data = bytearray(_enc(Image.new("L", (8, 8)), "PNG"))
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr: ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4: ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13: ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_decompression_bomb_is_refused_before_decoding():
    code, msg = _status(decode_image, _png_with_header_size(60000, 60000), 40_000_000)
    assert code == 413 and "pixels" in msg


def test_extreme_aspect_ratios_are_handled():
    from shape_library.search import photo_crop

    wide = decode_image(_enc(Image.new("RGB", (100_000, 10), (200, 0, 0)), "PNG"), 40_000_000)
    assert wide.size == (100_000, 10)
    crop, box = photo_crop(wide, None, 64, 0.08)
    assert crop.size == (64, 64)
    code, msg = _status(decode_image, _enc(Image.new("RGB", (100_000, 5)), "PNG"), 40_000_000)
    assert code == 422 and "too small" in msg


def test_animated_images_use_their_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:])
    img = decode_image(buf.getvalue(), 10**7)
    assert img.size == (32, 32) and img.getpixel((5, 5))[0] > 200


from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

_SEEDS = [_enc(RGB, "PNG"), _enc(RGB, "JPEG"), _enc(RGB, "WEBP")]


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_SEEDS), st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
       st.integers(0, 5000), st.binary(max_size=64))
def test_decoder_fuzz_never_fails_with_anything_but_a_clear_rejection(seed, flips, cut, junk):
    """Mutated, truncated and extended images: an RGB image or InputRejected (a 4xx), nothing else."""
    data = bytearray(seed)
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    data = bytes(data[: max(1, len(data) - cut)]) + junk
    try:
        img = decode_image(data, 10**7)
    except InputRejected as exc:
        assert exc.status in (413, 415, 422) and exc.detail
    else:
        assert img.mode == "RGB" and min(img.size) >= 8
