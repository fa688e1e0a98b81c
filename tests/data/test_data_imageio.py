"""Every PIL mode decodes to the documented uint8 (H, W, C) values; bad files raise DataError naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hdkd.data.imageio import load_image, resize_image
from hdkd.errors import DataError


def saved(tmp_path, img: Image.Image, name: str):
    path = tmp_path / name
    img.save(path)
    return path


def gradient(low, high, dtype, shape=(4, 5)):
    return np.linspace(low, high, num=shape[0] * shape[1]).reshape(shape).astype(dtype)


def test_grey_stays_exact_and_repeats_to_three_channels(tmp_path):
    array = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    path = saved(tmp_path, Image.fromarray(array), "grey.png")
    one = load_image(path, 1)
    three = load_image(path, 3)
    assert one.shape == (4, 5, 1) and one.dtype == np.uint8
    np.testing.assert_array_equal(one[..., 0], array)
    assert three.shape == (4, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(three[..., c], array)


def test_bilevel_mode_maps_to_0_and_255(tmp_path):
    bits = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    path = saved(tmp_path, Image.fromarray(bits), "bits.png")
    assert Image.open(path).mode == "1"
    np.testing.assert_array_equal(load_image(path, 1)[..., 0], bits.astype(np.uint8) * 255)


def test_rgb_exact_and_luma_for_one_channel(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 90]]], dtype=np.uint8)
    path = saved(tmp_path, Image.fromarray(rgb), "rgb.png")
    np.testing.assert_array_equal(load_image(path, 3), rgb)
    grey = load_image(path, 1)[..., 0].astype(int)
    expected = np.rint(rgb.astype(float) @ [0.299, 0.587, 0.114])  # ITU-R 601
    assert np.abs(grey - expected).max() <= 1
    assert list(grey[0, :3]) == [76, 150, 29]


def palette_image(transparent_index=None):
    img = Image.fromarray(np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8), mode="P")
    img.putpalette([255, 0, 0, 0, 255, 0, 20, 40, 250] + [0] * (253 * 3))
    if transparent_index is not None:
        img.info["transparency"] = transparent_index
    return img


def test_palette_maps_to_palette_colours(tmp_path):
    path = saved(tmp_path, palette_image(), "palette.png")
    assert Image.open(path).mode == "P"
    out = load_image(path, 3)
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [0, 255, 0], [20, 40, 250]])
    np.testing.assert_array_equal(out[1], [[20, 40, 250], [0, 255, 0], [255, 0, 0]])


def test_palette_transparency_is_composited_over_black(tmp_path):
    path = saved(tmp_path, palette_image(transparent_index=1), "palette_t.png")
    with Image.open(path) as img:
        assert img.mode == "P" and "transparency" in img.info
    out = load_image(path, 3)
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [0, 0, 0], [20, 40, 250]])


def test_rgba_alpha_composited_over_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], dtype=np.uint8)
    path = saved(tmp_path, Image.fromarray(rgba), "rgba.png")
    out = load_image(path, 3)
    assert out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out[0, 0], [200, 100, 50])  # opaque: colour kept
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])  # transparent: black
    np.testing.assert_array_equal(out[0, 2], [100, 50, 25])  # half: scaled by 128/255


def test_grey_with_alpha(tmp_path):
    la = np.array([[[200, 255], [200, 0], [200, 128]]], dtype=np.uint8)
    path = saved(tmp_path, Image.fromarray(la, mode="LA"), "la.png")
    assert Image.open(path).mode == "LA"
    np.testing.assert_array_equal(load_image(path, 1)[0, :, 0], [200, 0, 100])


def test_cmyk_and_ycbcr_match_pil_rgb(tmp_path):
    cmyk = Image.new("CMYK", (3, 2), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (255, 0, 0, 0))  # cyan
    cmyk.putpixel((2, 0), (0, 0, 0, 255))  # black
    path = saved(tmp_path, cmyk, "cmyk.tif")
    assert Image.open(path).mode == "CMYK"
    out = load_image(path, 3)
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [0, 255, 255], [0, 0, 0]])

    ycbcr = Image.new("YCbCr", (2, 2), (128, 128, 128))
    ycbcr.putpixel((1, 1), (81, 90, 240))  # a red
    path = saved(tmp_path, ycbcr, "ycbcr.tif")
    assert Image.open(path).mode == "YCbCr"
    out = load_image(path, 3)
    np.testing.assert_array_equal(out, np.asarray(ycbcr.convert("RGB")))
    assert out[1, 1, 0] > 200 and out[1, 1, 1] < 50  # really converted, not Y/Cb/Cr copied as R/G/B


@pytest.mark.parametrize("mode, suffix", [("I;16", ".png"), ("I;16B", ".tif"), ("I;16", ".tif")])
def test_16_bit_rescaled_from_own_range(tmp_path, mode, suffix):
    values = gradient(1000, 3000, np.uint16)
    img = Image.fromarray(values.astype(">u2" if mode == "I;16B" else "<u2"))
    path = saved(tmp_path, img, f"img16{suffix}")
    assert Image.open(path).mode == mode
    out = load_image(path, 1)[..., 0]
    expected = np.rint((values.astype(float) - 1000) * 255 / 2000)
    np.testing.assert_array_equal(out, expected)
    assert out.min() == 0 and out.max() == 255  # not clipped at 255 as PIL's convert("L") would


def test_32_bit_integer_and_float_rescaled(tmp_path):
    ints = gradient(-50000, 150000, np.int32)
    path = saved(tmp_path, Image.fromarray(ints), "int32.tif")
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(load_image(path, 1)[..., 0], np.rint((ints.astype(float) + 50000) * 255 / 200000))

    floats = gradient(-1.5, 2.5, np.float32)
    path = saved(tmp_path, Image.fromarray(floats), "float.tif")
    assert Image.open(path).mode == "F"
    out = load_image(path, 3)
    expected = np.rint((floats.astype(float) + 1.5) * 255 / 4.0)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_constant_high_depth_image_becomes_zero(tmp_path):
    path = saved(tmp_path, Image.fromarray(np.full((3, 3), 4000, dtype=np.uint16)), "flat.png")
    assert not load_image(path, 1).any()


def test_truncated_jpeg_raises_naming_file(tmp_path):
    rng = np.random.default_rng(0)
    path = saved(tmp_path, Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "scan.jpg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="scan.jpg") as info:
        load_image(path, 3)
    assert "\n" not in str(info.value)


def test_non_image_and_missing_files_raise_naming_file(tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    with pytest.raises(DataError, match="notes.png.*(corrupt|unreadable)"):
        load_image(fake, 3)
    with pytest.raises(DataError, match="absent.png.*not found"):
        load_image(tmp_path / "absent.png", 3)


def test_resize_is_square_bilinear_and_antialiased():
    image = np.zeros((30, 60, 3), dtype=np.uint8)
    assert resize_image(image, 16).shape == (16, 16, 3)
    grey = np.full((10, 20, 1), 77, dtype=np.uint8)
    out = resize_image(grey, 7)
    assert out.shape == (7, 7, 1) and (out == 77).all()
    same = np.arange(64, dtype=np.uint8).reshape(8, 8, 1)
    assert resize_image(same, 8) is same
    # 1-pixel stripes shrunk 3x: antialiasing averages them (~127); point sampling would keep 0 / 255
    stripes = np.zeros((48, 48, 1), dtype=np.uint8)
    stripes[:, ::2] = 255
    shrunk = resize_image(stripes, 16).astype(float)
    assert abs(shrunk.mean() - 127.5) < 20 and shrunk.std() < 45
