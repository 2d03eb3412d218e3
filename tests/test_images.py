import io

import numpy as np
import pytest
from PIL import Image

from retriever.images import ImageLimits, ImageRejected, admit_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_rgb_roundtrip():
    out = admit_image(encode(Image.new("RGB", (20, 10), (10, 200, 30)), "PNG"))
    assert out.mode == "RGB" and out.size == (20, 10) and out.getpixel((0, 0)) == (10, 200, 30)


@pytest.mark.parametrize("data, reason", [(b"", "empty"), (b"hello world, not a picture", "not_image")])
def test_refused(data, reason):
    with pytest.raises(ImageRejected) as err:
        admit_image(data)
    assert err.value.reason == reason


def test_truncated():
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(ImageRejected) as err:
        admit_image(data[: len(data) // 2])
    assert err.value.reason == "corrupt"


def test_pixel_limit():
    data = encode(Image.new("L", (2000, 2000)), "PNG")
    with pytest.raises(ImageRejected) as err:
        admit_image(data, ImageLimits(max_pixels=1_000_000))
    assert err.value.reason == "too_many_pixels" and "4000000" in str(err.value)


def test_cmyk_is_converted():
    out = admit_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    r, g, b = out.getpixel((4, 4))
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_sixteen_bit_is_scaled_not_clipped():
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    out = admit_image(encode(Image.fromarray(arr), "PNG"))
    assert out.mode == "RGB" and 120 <= out.getpixel((0, 0))[0] <= 135


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    out = admit_image(encode(img, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_animated_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = admit_image(buf.getvalue())
    r, g, b = out.getpixel((0, 0))
    assert r > 200 and b < 50


@pytest.mark.parametrize("size, expected", [((2000, 1000), (512, 1024)), ((200, 100), (100, 200))])
def test_exif_rotation_survives_the_working_size(size, expected):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    out = admit_image(encode(Image.new("RGB", size, (200, 0, 0)), "JPEG", exif=exif))
    assert out.size == expected


@pytest.mark.parametrize("orientation", [None, 1, 3, 6, 8])
def test_exif_orientation_turns_the_pixels_as_pillow_does(orientation):
    from PIL import ImageOps

    rng = np.random.default_rng(orientation or 0)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    data = encode(Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)), "PNG", exif=exif)
    want = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    out = admit_image(data)
    assert out.size == want.size and np.array_equal(np.asarray(out), np.asarray(want))
    assert out.size == ((30, 50) if orientation in (6, 8) else (50, 30))
