"""Tests for anynet.images: reading pictures, and MNIST's own preprocessing recipe.

The resampling is checked against matrices worked out by hand; the preprocessing against the
properties MNIST has (longer side 20, centre of mass at (14, 14), white ink on black) and against
genuine MNIST digits redrawn off-centre, at another scale, dark on light, in a 200x200 PNG.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anynet.errors import MissingExtraError, UserError
from anynet.images import (
    centre_of_mass,
    load_digits,
    preprocess_digit,
    read_image,
    resample,
    resample_matrix,
)

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

# ----------------------------------------------------------------------------- helpers


def draw_strokes(size: int, strokes, width: float, *, ink=1.0, paper=0.0) -> np.ndarray:
    """A (size, size) float image with thick line segments; strokes are ((r0, c0), (r1, c1)) in
    units of the image side (0..1), so the same digit can be drawn at any scale and place."""
    rows, cols = np.mgrid[0:size, 0:size].astype(float) + 0.5
    image = np.full((size, size), paper)
    for (r0, c0), (r1, c1) in strokes:
        a = np.array([r0, c0]) * size
        b = np.array([r1, c1]) * size
        d = b - a
        t = np.clip(((rows - a[0]) * d[0] + (cols - a[1]) * d[1]) / max(d @ d, 1e-12), 0, 1)
        dist = np.hypot(rows - (a[0] + t * d[0]), cols - (a[1] + t * d[1]))
        image[dist <= width / 2] = ink
    return image


# A "7": a top bar and a diagonal down to the left, in a unit square.
SEVEN = [((0.1, 0.2), (0.1, 0.8)), ((0.1, 0.8), (0.9, 0.35))]


def place(digit: np.ndarray, canvas: int, top: int, left: int, paper: float) -> np.ndarray:
    """`digit` (white ink on black, values in [0, 1]) pasted as dark ink on paper of level
    `paper` into a (canvas, canvas) image at (top, left)."""
    image = np.full((canvas, canvas), paper)
    h, w = digit.shape
    image[top : top + h, left : left + w] = paper * (1 - digit)
    return image


def ink_box(row: np.ndarray) -> tuple[int, int]:
    """(height, width) of the bounding box of the non-zero pixels of a (784,) image."""
    image = row.reshape(28, 28)
    r = np.flatnonzero(image.any(axis=1))
    c = np.flatnonzero(image.any(axis=0))
    return r[-1] - r[0] + 1, c[-1] - c[0] + 1


def aligned_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two (784,) images, best over shifts of at most one pixel.

    MNIST centres by whole pixels, so a centre of mass that lies near a half pixel may round
    either way: two good preprocessings of one digit can differ by a one-pixel shift."""
    a = a.reshape(28, 28).astype(float)
    b = b.reshape(28, 28).astype(float)
    return max(
        np.corrcoef(a.ravel(), np.roll(b, (i, j), axis=(0, 1)).ravel())[0, 1]
        for i in (-1, 0, 1)
        for j in (-1, 0, 1)
    )


def read_idx_gz(path: Path, count: int) -> np.ndarray:
    """The first `count` records of a gzip'd IDX file of uint8 (images or labels).

    Read here with gzip and NumPy, not with anynet.data, so these tests stand on their own.
    `path` names the .gz; the raw file beside it (as the cache holds it) is read if it is not
    there."""
    raw = path.with_suffix("") if path.suffix == ".gz" else path
    opener = gzip.open if path.exists() else open
    with opener(path if path.exists() else raw, "rb") as f:
        magic = int.from_bytes(f.read(4), "big")
        assert magic >> 8 == 0x08, f"{path}: not a uint8 IDX file (magic {magic:#x})"
        dims = [int.from_bytes(f.read(4), "big") for _ in range(magic & 0xFF)]
        per_record = int(np.prod(dims[1:], dtype=np.int64))
        data = np.frombuffer(f.read(count * per_record), dtype=np.uint8)
    return data.reshape(count, *dims[1:])


# ----------------------------------------------------------------------------- resampling


def test_resample_matrix_worked_examples():
    # Shrinking 4 -> 2: each output pixel is the mean of two inputs.
    np.testing.assert_allclose(resample_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    # Shrinking 3 -> 2: output 0 covers [0, 1.5): all of pixel 0 and half of pixel 1.
    np.testing.assert_allclose(resample_matrix(3, 2), [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]])
    # Same size: the identity.
    np.testing.assert_allclose(resample_matrix(5, 5), np.eye(5))
    # Growing 2 -> 4: centres at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped) in input pixels.
    np.testing.assert_allclose(
        resample_matrix(2, 4), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]]
    )


@settings(max_examples=60, deadline=None)
@given(n_in=st.integers(1, 300), n_out=st.integers(1, 300))
def test_resample_matrix_rows_are_averages_and_shrinking_keeps_the_mean(n_in, n_out):
    matrix = resample_matrix(n_in, n_out)
    assert matrix.shape == (n_out, n_in)
    assert (matrix >= 0).all()
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    if n_out <= n_in:  # area averaging: every input pixel gives away exactly its share
        np.testing.assert_allclose(matrix.sum(axis=0), n_out / n_in)


@settings(max_examples=60, deadline=None)
@given(shape=st.tuples(st.integers(1, 60), st.integers(1, 60)),
       out=st.tuples(st.integers(1, 40), st.integers(1, 40)), seed=st.integers(0, 2**32 - 1))
def test_resample_equals_the_dense_matrices(shape, out, seed):
    # resample shrinks through cumulative sums; the dense matrices are the definition
    image = np.random.default_rng(seed).random(shape)
    expected = resample_matrix(shape[0], out[0]) @ image @ resample_matrix(shape[1], out[1]).T
    np.testing.assert_allclose(resample(image, *out), expected, atol=1e-12)


def test_resample_of_a_thin_line_costs_one_copy():
    # 1 x 4,000,000 to 1 x 20: the dense (20, W) matrix alone would be 640 MB
    import tracemalloc

    line = np.zeros((1, 4_000_000))
    line[0, 1_000_000:3_000_000] = 1.0
    tracemalloc.start()
    try:
        small = resample(line, 1, 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(small, [[0] * 5 + [1] * 10 + [0] * 5], atol=1e-9)
    assert peak < 4 * line.nbytes, f"{peak:,} bytes for a {line.nbytes:,}-byte picture"


def test_resample_image_block_means():
    image = np.arange(36, dtype=float).reshape(6, 6)
    small = resample(image, 2, 3)  # 3x2 blocks
    expected = image.reshape(2, 3, 3, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(small, expected)


def test_centre_of_mass():
    image = np.zeros((5, 7))
    image[1, 2] = 1.0
    image[3, 6] = 3.0
    assert centre_of_mass(image) == pytest.approx((2.5, 5.0))
    assert centre_of_mass(np.zeros((4, 6))) == (1.5, 2.5)


# ----------------------------------------------------------------------------- preprocessing


def test_preprocessing_gives_an_mnist_shaped_digit():
    seven = draw_strokes(90, SEVEN, width=9)  # white on black, 90x90
    row = preprocess_digit(seven)
    assert row.shape == (784,) and row.dtype == np.uint8
    assert row.max() == 255
    assert max(ink_box(row)) == 20  # longer side scaled to 20 pixels
    com = centre_of_mass(row.reshape(28, 28))
    # Whole-pixel shifts put the centre within half a pixel (plus uint8 rounding) of (14, 14).
    assert abs(com[0] - 14) <= 0.52 and abs(com[1] - 14) <= 0.52


def test_aspect_ratio_is_kept():
    tall = np.zeros((120, 120))
    tall[10:100, 40:70] = 1.0  # a 90 x 30 block
    height, width = ink_box(preprocess_digit(tall))
    assert (height, width) == (20, 7)  # 30 * 20 / 90 = 6.67 -> 7


def test_dark_ink_on_light_paper_is_inverted():
    seven = draw_strokes(60, SEVEN, width=6)
    white_on_black = preprocess_digit(seven)
    black_on_white = preprocess_digit(1.0 - seven)
    np.testing.assert_array_equal(white_on_black, black_on_white)


def test_grey_paper_and_grey_ink_are_stretched_to_black_and_white():
    seven = draw_strokes(60, SEVEN, width=6)
    photo = 0.8 - 0.6 * seven  # ink at 0.2 on paper at 0.8
    np.testing.assert_array_equal(preprocess_digit(photo), preprocess_digit(seven))


def test_uint8_and_float_input_agree():
    seven = draw_strokes(50, SEVEN, width=5)
    as_uint8 = np.round(seven * 255).astype(np.uint8)
    np.testing.assert_array_equal(preprocess_digit(as_uint8), preprocess_digit(seven))


def test_position_does_not_matter():
    seven = draw_strokes(60, SEVEN, width=6)
    near_corner = place(seven, 200, 5, 10, paper=1.0)
    far_corner = place(seven, 200, 130, 139, paper=1.0)
    np.testing.assert_array_equal(preprocess_digit(near_corner), preprocess_digit(far_corner))


def test_drawn_digit_off_centre_at_another_scale_matches_the_original():
    # The same "7" drawn at 28 pixels and at 150 pixels, off-centre in a light 200x200 page.
    original = preprocess_digit(draw_strokes(28, SEVEN, width=3))
    big = draw_strokes(150, SEVEN, width=16)
    redrawn = preprocess_digit(place(big, 200, 40, 3, paper=0.9))
    assert aligned_correlation(original, redrawn) > 0.9
    com = centre_of_mass(redrawn.reshape(28, 28))
    assert abs(com[0] - 14) <= 0.52 and abs(com[1] - 14) <= 0.52


def test_faint_noise_does_not_widen_the_crop():
    seven = draw_strokes(60, SEVEN, width=6)
    clean = preprocess_digit(place(seven, 200, 70, 70, paper=1.0))
    page = place(seven, 200, 70, 70, paper=1.0)
    page[5, 5] = 0.95  # a speck of dust far away, 5% of the ink's strength
    np.testing.assert_array_equal(preprocess_digit(page), clean)


def test_a_digit_touching_the_edge_is_still_found():
    bar = np.zeros((40, 40))
    bar[:, 18:24] = 1.0  # a "1" from top to bottom edge
    row = preprocess_digit(bar)
    assert ink_box(row) == (20, 3)


@pytest.mark.parametrize("blank", [np.zeros((30, 30)), np.full((30, 30), 0.7), np.ones((5, 9))])
def test_blank_image_is_a_user_error_naming_the_source(blank):
    with pytest.raises(UserError, match=r"^empty\.png: no digit found"):
        preprocess_digit(blank, source="empty.png")


def test_very_low_contrast_counts_as_blank():
    page = np.full((50, 50), 0.5)
    page[20:30, 20:30] = 0.47  # 3% contrast: paper texture, not ink
    with pytest.raises(UserError, match="no digit found"):
        preprocess_digit(page)


def test_preprocess_rejects_arrays_that_are_not_images():
    with pytest.raises(ValueError, match="2-D"):
        preprocess_digit(np.zeros(784))


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(3, 120), width=st.integers(3, 120),
    seed=st.integers(0, 2**32 - 1), light=st.booleans(),
)
def test_any_blob_becomes_a_valid_mnist_row(height, width, seed, light):
    rng = np.random.default_rng(seed)
    image = np.zeros((height + 10, width + 10))
    image[5 : 5 + height, 5 : 5 + width] = rng.uniform(0.3, 1.0, (height, width))
    if light:
        image = 1.0 - image
    row = preprocess_digit(image)
    assert row.shape == (784,) and row.dtype == np.uint8 and row.max() == 255
    box = ink_box(row)
    assert max(box) <= 20 and max(box) >= 19


@pytest.mark.realdata
def test_preprocessing_keeps_mnist_digits_nearly_as_they_are(mnist_dir):
    images = read_idx_gz(mnist_dir / "t10k-images-idx3-ubyte.gz", 300)
    again = np.stack([preprocess_digit(image) for image in images])
    correlations = [
        aligned_correlation(a, b) for a, b in zip(images.reshape(-1, 784), again, strict=True)
    ]
    # MNIST is already made by this recipe; only faint pixels (< 10%) and rounding differ.
    assert np.median(correlations) > 0.99
    assert min(correlations) > 0.9


# ----------------------------------------------------------------------------- reading files


def test_read_png_grey(tmp_path):
    pixels = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    gray = read_image(tmp_path / "a.png")
    assert gray.dtype == np.float64 and gray.shape == (2, 2)
    np.testing.assert_allclose(gray, pixels / 255)


def test_read_rgb_png_uses_luminance(tmp_path):
    pixels = np.zeros((1, 3, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)
    pixels[0, 1] = (0, 255, 0)
    pixels[0, 2] = (0, 0, 255)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    # Pillow's weights: 0.299 R + 0.587 G + 0.114 B (rounded to whole grey levels).
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png")[0], [76 / 255, 150 / 255, 29 / 255])


def test_transparent_background_with_black_ink(tmp_path):
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)  # fully transparent
    rgba[5:15, 9:11] = (0, 0, 0, 255)  # opaque black stroke
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ink.png")
    gray = read_image(tmp_path / "ink.png")
    assert gray[0, 0] == 1.0 and gray[10, 10] == 0.0  # laid over white paper
    assert ink_box(preprocess_digit(gray)) == (20, 4)


def test_transparent_background_with_white_ink(tmp_path):
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[5:15, 9:11] = (255, 255, 255, 255)  # opaque white stroke
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ink.png")
    gray = read_image(tmp_path / "ink.png")
    assert gray[0, 0] == 0.0 and gray[10, 10] == pytest.approx(1.0)  # laid over black


def test_read_16_bit_png(tmp_path):
    pixels = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    np.testing.assert_allclose(read_image(tmp_path / "deep.png"), pixels / 65535)


@pytest.mark.parametrize("suffix", [".jpg", ".bmp"])
def test_read_jpeg_and_bmp(tmp_path, suffix):
    seven = np.round(255 * (1 - draw_strokes(64, SEVEN, width=7))).astype(np.uint8)
    Image.fromarray(seven).convert("RGB").save(tmp_path / f"seven{suffix}")
    gray = read_image(tmp_path / f"seven{suffix}")
    assert gray.shape == (64, 64)
    assert np.abs(gray - seven / 255).mean() < 0.02  # JPEG is lossy, BMP exact
    expected = preprocess_digit(seven)
    assert aligned_correlation(preprocess_digit(gray), expected) > 0.97


def test_exif_rotation_is_applied(tmp_path):
    pixels = np.zeros((10, 30), dtype=np.uint8)  # wide
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert read_image(tmp_path / "phone.jpg").shape == (30, 10)


def test_read_npy_variants(tmp_path):
    grey = np.array([[0, 51], [255, 102]], dtype=np.uint8)
    cases = {
        "uint8.npy": grey,
        "unit_float.npy": grey / 255.0,
        "float255.npy": grey.astype(np.float32),
        "rgb.npy": np.repeat(grey[..., None], 3, axis=2),
        "rgba.npy": np.concatenate(
            [np.repeat(grey[..., None], 3, axis=2), np.full((2, 2, 1), 255, np.uint8)], axis=2
        ),
        "int64.npy": grey.astype(np.int64),
    }
    for name, array in cases.items():
        np.save(tmp_path / name, array)
        np.testing.assert_allclose(read_image(tmp_path / name), grey / 255, err_msg=name)


def test_read_flat_mnist_row_and_bool(tmp_path):
    row = np.arange(784) % 256
    np.save(tmp_path / "row.npy", row.astype(np.uint8))
    np.testing.assert_allclose(read_image(tmp_path / "row.npy"), row.reshape(28, 28) / 255)
    np.save(tmp_path / "mask.npy", np.eye(3, dtype=bool))
    np.testing.assert_array_equal(read_image(tmp_path / "mask.npy"), np.eye(3))


def test_npy_is_recognised_by_its_header_whatever_the_name(tmp_path):
    with open(tmp_path / "digit.dat", "wb") as f:
        np.save(f, np.eye(4))
    np.testing.assert_array_equal(read_image(tmp_path / "digit.dat"), np.eye(4))


def test_npy_needs_no_pillow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    np.save(tmp_path / "d.npy", np.eye(5))
    np.testing.assert_array_equal(read_image(tmp_path / "d.npy"), np.eye(5))


def test_png_without_pillow_names_the_extra(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "d.png")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(MissingExtraError, match=r"anynet\[image\]") as info:
        read_image(tmp_path / "d.png")
    assert "Pillow" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((2, 3, 5)), "must be"),
        (np.zeros(100), "must be"),
        (np.zeros((0, 4)), "empty"),
        (np.array([[0.0, np.nan]]), "NaN"),
        (np.array([[-1.0, 0.5]]), "pixel values"),
        (np.array([[0.0, 300.0]]), "pixel values"),
        (np.array([["a", "b"]]), "numbers"),
    ],
)
def test_bad_npy_arrays_are_user_errors(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(UserError, match=message) as info:
        read_image(tmp_path / "bad.npy")
    assert str(info.value).startswith(str(tmp_path / "bad.npy"))


def test_object_npy_is_refused_without_unpickling(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match=r"not a usable \.npy"):
        read_image(tmp_path / "obj.npy")


def test_truncated_npy(tmp_path):
    np.save(tmp_path / "full.npy", np.zeros((28, 28)))
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.npy"):
        read_image(tmp_path / "cut.npy")


def test_npz_and_fake_npy(tmp_path):
    np.savez(tmp_path / "arch.npz", a=np.eye(3))
    with pytest.raises(UserError, match="npz"):
        read_image(tmp_path / "arch.npz")
    (tmp_path / "fake.npy").write_text("hello")
    with pytest.raises(UserError, match=r"not a NumPy \.npy file"):
        read_image(tmp_path / "fake.npy")


def test_file_errors_are_one_line_naming_the_file(tmp_path):
    (tmp_path / "notes.png").write_text("this is not a picture\n")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:60])
    cases = {
        tmp_path / "missing.png": "no such file",
        tmp_path: "is a folder",
        tmp_path / "notes.png": "not an image file",
        tmp_path / "cut.png": "damaged image file",
    }
    for path, message in cases.items():
        with pytest.raises(UserError, match=message) as info:
            read_image(path)
        text = str(info.value)
        assert text.startswith(str(path)) and "\n" not in text


def test_load_digits(tmp_path):
    seven = draw_strokes(40, SEVEN, width=4)
    np.save(tmp_path / "a.npy", seven)
    Image.fromarray(np.round(255 * (1 - seven)).astype(np.uint8)).save(tmp_path / "b.png")
    rows = load_digits([tmp_path / "a.npy", str(tmp_path / "b.png")])
    assert rows.shape == (2, 784) and rows.dtype == np.uint8
    np.testing.assert_array_equal(rows[0], rows[1])
    assert load_digits([]).shape == (0, 784)
    np.save(tmp_path / "blank.npy", np.zeros((9, 9)))
    with pytest.raises(UserError, match=r"blank\.npy: no digit found"):
        load_digits([tmp_path / "a.npy", tmp_path / "blank.npy"])


# ----------------------------------------------------------------------------- with a model


@pytest.mark.realdata
def test_mnist_digits_redrawn_in_a_big_png_are_centred_and_predicted_alike(tmp_path, mnist_dir):
    """Genuine test digits, enlarged, dark on light, off-centre in a 200x200 PNG."""
    folder = mnist_dir
    from anynet.backend import to_numpy
    from anynet.network import TwoLayerNet
    from anynet.optim import SGD

    train_x = read_idx_gz(folder / "train-images-idx3-ubyte.gz", 10_000).reshape(-1, 784)
    train_y = read_idx_gz(folder / "train-labels-idx1-ubyte.gz", 10_000)
    test_x = read_idx_gz(folder / "t10k-images-idx3-ubyte.gz", 12)
    net = TwoLayerNet(n_hidden=64, seed=0)
    opt = SGD(lr=0.5)
    state = opt.init(net.params)
    rng = np.random.default_rng(0)
    for _ in range(400):  # about 4 epochs of 10,000 images: some 96% on the test set
        batch = rng.integers(0, len(train_x), 100)
        _, grads = net.loss_and_grads(train_x[batch], train_y[batch])
        net.params, state = opt.step(net.params, grads, state)

    placements = [(70, 3, 120), (100, 90, 0), (150, 20, 45), (90, 105, 101)]  # size, top, left
    originals, redrawn = [], []
    for k, digit in enumerate(test_x):
        size, top, left = placements[k % len(placements)]
        big = Image.fromarray(255 - digit).resize((size, size), Image.BILINEAR)
        page = Image.new("L", (200, 200), 230)  # light grey paper
        page.paste(big.point(lambda v: 230 * v // 255), (left, top))  # dark ink on it
        page.save(tmp_path / f"digit{k}.png")
        originals.append(preprocess_digit(digit))
        redrawn.append(preprocess_digit(read_image(tmp_path / f"digit{k}.png")))

    for k, (a, b) in enumerate(zip(originals, redrawn, strict=True)):
        assert aligned_correlation(a, b) > 0.9, f"digit {k}"
        com = centre_of_mass(b.reshape(28, 28))
        assert abs(com[0] - 14) <= 0.52 and abs(com[1] - 14) <= 0.52, f"digit {k}: {com}"
    same = to_numpy(net.predict(np.stack(originals))) == to_numpy(net.predict(np.stack(redrawn)))
    assert same.all(), f"predictions differ for digits {np.flatnonzero(~same)}"


# --- hostile pictures: refused from their headers, one line, no hang -----------------------------


def _npy_with_header(header: str, data: bytes = b"") -> bytes:
    """A version 1.0 .npy file with this header text (padded as np.save pads it) and data."""
    raw = header.encode("latin1")
    raw += b" " * (63 - (10 + len(raw)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw + data


def test_a_png_promising_too_many_pixels_is_refused_before_decoding(tmp_path):
    """A 12000 x 12000 PNG is about 200 kB on disk and took 5.7 GB to read. Over Pillow's own
    warning level Pillow's check speaks first; below it (7000 x 7000), anynet's."""
    huge, big = tmp_path / "huge.png", tmp_path / "big.png"
    Image.new("L", (12_000, 12_000)).save(huge)
    Image.new("L", (7_000, 7_000)).save(big)
    with pytest.raises(UserError, match=r"huge\.png: image too large to read safely \(Image "
                       r"size \(144000000 pixels\) exceeds limit") as info:
        read_image(huge)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"big\.png: the picture is 7000 x 7000 = 49,000,000 "
                       r"pixels, more than the 40,000,000 anynet reads; scale it down"):
        read_image(big)


def test_pillow_decompression_bomb_warning_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "d.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 64 x 64 = 4096: warned, not refused
    with pytest.raises(UserError, match=r"d\.png: image too large to read safely"):
        read_image(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_float_tiff_with_nan_or_inf_is_one_line(tmp_path, bad):
    values = np.zeros((16, 16), np.float32)
    values[4:12, 7:9] = 1.0
    values[0, 0] = bad
    path = tmp_path / "f.tiff"
    Image.fromarray(values, mode="F").save(path)
    with pytest.raises(UserError, match=r"f\.tiff: the image holds NaN or infinite values"):
        read_image(path)


def test_npy_header_promising_too_many_pixels_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.npy"
    path.write_bytes(_npy_with_header(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000), }"))
    with pytest.raises(UserError, match=r"promises 100000 x 100000 = 10,000,000,000 pixels"):
        read_image(path)


def test_npy_header_promising_more_than_the_file_holds_is_refused(tmp_path):
    path = tmp_path / "short.npy"
    path.write_bytes(_npy_with_header(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (4000, 4000), }", bytes(100)))
    with pytest.raises(UserError, match=r"damaged \.npy file \(the header promises .* "
                       r"128,000,000 bytes, the file holds 100\)"):
        read_image(path)


def test_malformed_npy_header_is_one_line(tmp_path):
    path = tmp_path / "bad.npy"
    path.write_bytes(_npy_with_header(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), '''", bytes(32)))
    with pytest.raises(UserError, match=r"bad\.npy: not a usable \.npy image") as info:
        read_image(path)
    assert "\n" not in str(info.value)


def test_a_named_pipe_is_refused_not_waited_on(tmp_path):
    import os
    import signal

    fifo = tmp_path / "digit.png"
    os.mkfifo(fifo)

    def on_alarm(signum, frame):
        raise TimeoutError("read_image blocked on a named pipe")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        with pytest.raises(UserError, match=r"digit\.png: not a regular file \(a named pipe\)"):
            read_image(fifo)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
