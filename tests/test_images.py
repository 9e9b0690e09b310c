"""The one image loader against every kind of file users have."""

import numpy as np
import pytest
from PIL import Image

from petclassifier.data.images import (
    BACKGROUND,
    ImageError,
    check_image,
    decoded_batches,
    is_image_file,
    load_image,
    square_uint8,
)

from .conftest import SAMPLE, SHARED, needs_shared
from .photos import BAD, GOOD, JUNK, MISNAMED, base, write_all


@pytest.mark.parametrize("name", GOOD)
def test_every_good_kind_loads_as_rgb_and_makes_a_square(tmp_path, name):
    [path] = write_all(tmp_path, {name: GOOD[name]})
    check_image(path)
    img = load_image(path, min_size=36)
    assert img.mode == "RGB" and min(img.size) >= 1
    square = square_uint8(img, 36)
    assert square.shape == (3, 36, 36) and square.dtype == np.uint8


def test_exif_orientation_is_applied_before_anything_else(tmp_path):
    [path] = write_all(tmp_path, {"exif.jpg": GOOD["exif.jpg"]})
    assert Image.open(path).size == (40, 20)
    img = load_image(path)
    assert img.size == (20, 40)  # turned upright: portrait
    red, green, blue = img.getpixel((10, 5))
    assert red > 200 and blue < 60  # the red left half is now on top
    assert img.getpixel((10, 35))[2] > 200


@pytest.mark.parametrize("name", ["rgba.png", "la.png", "ptrans.png"])
def test_transparency_becomes_neutral_grey_not_black(tmp_path, name):
    [path] = write_all(tmp_path, {name: GOOD[name]})
    assert load_image(path).getextrema() == tuple((v, v) for v in BACKGROUND)


def test_sixteen_bit_keeps_its_range(tmp_path):
    [path] = write_all(tmp_path, {"sixteen.png": GOOD["sixteen.png"]})
    low, high = load_image(path).convert("L").getextrema()
    assert low < 20 and high > 235  # scaled to 8 bits, not clipped to white


def test_cmyk_jpeg_colours_survive(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (16, 16), (200, 30, 30)).convert("CMYK").save(path, "JPEG", quality=95)
    red, green, blue = load_image(path).getpixel((8, 8))
    assert red > 160 and green < 80 and blue < 80


def test_first_frame_of_an_animated_gif(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert load_image(tmp_path / "anim.gif").getpixel((4, 4))[0] > 200


@pytest.mark.parametrize("name", BAD)
def test_every_bad_kind_raises_image_error_with_a_one_line_reason(tmp_path, name):
    [path] = write_all(tmp_path, {name: BAD[name]})
    with pytest.raises(ImageError) as caught:
        load_image(path)
    assert str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["corrupt.jpg", "empty.jpg", "page.jpg", "notes_named.jpg", "bomb.png"])
def test_header_check_finds_bad_files_without_decoding(tmp_path, name):
    [path] = write_all(tmp_path, {name: BAD[name]})
    with pytest.raises(ImageError):
        check_image(path)


def test_decompression_bomb_is_refused_by_its_header(tmp_path):
    [path] = write_all(tmp_path, {"bomb.png": BAD["bomb.png"]})
    with pytest.raises(ImageError, match="30000x30000|pixel"):
        check_image(path)


def test_a_long_thin_strip_does_not_blow_up_the_resize(tmp_path):
    base((1, 60_000)).save(tmp_path / "strip.png")
    square = square_uint8(load_image(tmp_path / "strip.png"), 256)  # a plain resize would make 256 x 15 million
    assert square.shape == (3, 256, 256)


def test_non_image_files_are_not_images():
    assert not any(is_image_file(name) for name in JUNK)
    assert not is_image_file("._photo.jpg")  # macOS resource fork
    assert is_image_file("Photo.JPG") and is_image_file("x.webp")


@pytest.mark.parametrize("root", [SAMPLE, pytest.param(SHARED, marks=needs_shared)], ids=["sample", "shared"])
def test_the_real_misnamed_files_load(root):
    for name in MISNAMED:
        path = root / "oxford-iiit-pet" / "images" / name
        check_image(path)
        img = load_image(path)
        assert img.mode == "RGB" and min(img.size) > 100


@pytest.mark.parametrize("workers", [0, 2])
def test_the_decoding_pool_keeps_order_gives_reasons_and_ends_its_processes(tmp_path, workers):
    """Each batch comes back in order, an unreadable file as its reason; left early, the pool's processes end."""
    import multiprocessing

    good = write_all(tmp_path, {name: GOOD[name] for name in list(GOOD)[:3]})
    bad = write_all(tmp_path, {name: BAD[name] for name in list(BAD)[:1]})
    photos = [*good, *bad] * 4
    batches = [photos[i : i + 3] for i in range(0, len(photos), 3)]
    decoded = list(decoded_batches(batches, 24, "bilinear", workers))
    assert [len(b) for b in decoded] == [len(b) for b in batches]
    for batch, squares in zip(batches, decoded):
        for path, square in zip(batch, squares):
            if path in bad:
                assert isinstance(square, str) and "\n" not in square
            else:
                assert np.array_equal(square, square_uint8(load_image(path, min_size=24), 24, "bilinear"))
    stream = decoded_batches(batches, 24, "bilinear", workers)
    next(stream)
    stream.close()  # a reader that stops early
    assert multiprocessing.active_children() == []
