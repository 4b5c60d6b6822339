"""Hostile pictures: every mutated PNG, JPEG, TIFF or .npy is either read as a picture or refused
with one UserError line, quickly and in bounded memory; never a traceback, never a hang.

Mutations (bit flips, truncation, a header field set to an awkward value, bytes appended) are
applied to small valid pictures of a digit. Most cases run in-process through `read_image` and
`preprocess_digit` under tracemalloc (which sees NumPy's allocations, not Pillow's); a handful run
`anynet predict` in a child process limited in time and address space, which bounds both.

Depth: the hypothesis profile of `fuzz_helpers` (ANYNET_FUZZ=ci by default, =deep by hand).
"""

from __future__ import annotations

import functools
import io
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from fuzz_helpers import assert_clean_ending, run_cli_bounded
from hypothesis import given
from hypothesis import strategies as st

from anynet.errors import UserError
from anynet.images import preprocess_digit, read_image

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

MEMORY_LIMIT = 200 << 20  # bytes traced by tracemalloc for one picture
TIME_LIMIT_S = 10.0
AWKWARD = [0, 1, 2, 255, 65535, 12_000, 100_000, 1 << 24, (1 << 31) - 1, (1 << 32) - 1]


def _digit() -> np.ndarray:
    """A 28 x 28 uint8 stroke: dark ink on light paper."""
    image = np.full((28, 28), 230, np.uint8)
    image[5:23, 12:16] = 20
    image[5:9, 8:20] = 20
    return image


def _encode(fmt: str) -> bytes:
    digit = _digit()
    if fmt == "npy":
        buffer = io.BytesIO()
        np.save(buffer, digit.astype(np.float64) / 255.0)
        return buffer.getvalue()
    if fmt == "tiff":  # 32-bit float grey
        image = Image.fromarray(digit.astype(np.float32) / 255.0, mode="F")
    elif fmt == "png-rgba":
        image = Image.fromarray(np.stack([digit] * 3 + [np.full_like(digit, 200)], axis=-1))
    else:
        image = Image.fromarray(digit)
    buffer = io.BytesIO()
    image.save(buffer, format={"png": "PNG", "png-rgba": "PNG", "jpeg": "JPEG",
                               "tiff": "TIFF"}[fmt])
    return buffer.getvalue()


FORMATS = ["png", "png-rgba", "jpeg", "tiff", "npy"]
SUFFIX = {"png": ".png", "png-rgba": ".png", "jpeg": ".jpg", "tiff": ".tiff", "npy": ".npy"}


@functools.cache
def base_picture(fmt: str) -> bytes:
    return _encode(fmt)


def _with_png_crc(data: bytearray, chunk_start: int) -> None:
    """Recompute the CRC of the PNG chunk starting at `chunk_start` (length, type, data, CRC)."""
    length = struct.unpack(">I", data[chunk_start : chunk_start + 4])[0]
    body = bytes(data[chunk_start + 4 : chunk_start + 8 + length])
    data[chunk_start + 8 + length : chunk_start + 12 + length] = struct.pack(
        ">I", zlib.crc32(body))


mutations = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 7)),
                                        min_size=1, max_size=6)),
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("field"), st.integers(0, 64), st.sampled_from(AWKWARD)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
    # PNG and .npy: the size in the header, made consistent (PNG CRC fixed, .npy text rewritten)
    st.tuples(st.just("size"), st.sampled_from(AWKWARD), st.sampled_from(AWKWARD)),
)


def mutate(data: bytes, fmt: str, mutation: tuple) -> bytes:
    kind = mutation[0]
    out = bytearray(data)
    if kind == "flip":
        for position, bit in mutation[1]:
            out[position % len(out)] ^= 1 << bit
    elif kind == "truncate":
        out = out[: int(mutation[1] * len(out))]
    elif kind == "field":  # a 4-byte big-endian field somewhere in the first bytes
        offset = mutation[1] % max(1, len(out) - 4)
        out[offset : offset + 4] = struct.pack(">I", mutation[2])
    elif kind == "append":
        out += mutation[1]
    elif kind == "size":
        height, width = mutation[1], mutation[2]
        if fmt.startswith("png"):  # IHDR: width, height right after the signature and header
            out[16:24] = struct.pack(">II", width, height)
            _with_png_crc(out, 8)
        elif fmt == "npy":
            text = out.decode("latin1").replace("(28, 28)", f"({height}, {width})", 1)
            out = bytearray(text.encode("latin1"))
        else:
            out[4:12] = struct.pack(">II", width, height)
    return bytes(out)


def read_bounded(path) -> None:
    """Read and preprocess `path`: a (784,) uint8 row, or one UserError line naming the file,
    within the time and memory bounds."""
    tracemalloc.start()
    start = time.monotonic()
    try:
        try:
            gray = read_image(path)
            assert gray.ndim == 2 and gray.dtype == np.float64
            assert np.isfinite(gray).all() and gray.min() >= 0.0 and gray.max() <= 1.0
            row = preprocess_digit(gray, source=str(path))
            assert row.shape == (784,) and row.dtype == np.uint8
        except UserError as e:
            message = str(e)
            assert "\n" not in message, message
            assert message.startswith(str(path)), message
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - start
    assert peak < MEMORY_LIMIT, f"{peak:,} bytes traced"
    assert elapsed < TIME_LIMIT_S, f"{elapsed:.1f} s"


@given(fmt=st.sampled_from(FORMATS), mutation=mutations)
def test_mutated_pictures_are_read_or_refused(tmp_path, fmt, mutation):
    path = tmp_path / f"digit{SUFFIX[fmt]}"
    path.write_bytes(mutate(base_picture(fmt), fmt, mutation))
    read_bounded(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_unmutated_pictures_are_read(tmp_path, fmt):
    path = tmp_path / f"digit{SUFFIX[fmt]}"
    path.write_bytes(base_picture(fmt))
    assert preprocess_digit(read_image(path)).shape == (784,)


# --- a handful through `anynet predict`, in a child limited in time and address space ------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from anynet.modelio import save_model
    from anynet.network import TwoLayerNet

    path = tmp_path_factory.mktemp("fuzz-model") / "model.npz"
    save_model(path, TwoLayerNet(n_hidden=5))
    return path


PREDICT_CASES = {
    "png-12000-square": ("png", ("size", 12_000, 12_000)),
    "png-wide": ("png", ("size", 1, (1 << 31) - 1)),
    "npy-100000-square": ("npy", ("size", 100_000, 100_000)),
    "tiff-truncated": ("tiff", ("truncate", 0.5)),
    "jpeg-intact": ("jpeg", ("append", b"")),
}


@pytest.mark.parametrize("case", sorted(PREDICT_CASES))
def test_predict_ends_cleanly_in_bounded_time_and_memory(tmp_path, model_path, case):
    fmt, mutation = PREDICT_CASES[case]
    path = tmp_path / f"digit{SUFFIX[fmt]}"
    path.write_bytes(mutate(base_picture(fmt), fmt, mutation))
    result = run_cli_bounded(["predict", str(model_path), str(path)])
    assert_clean_ending(result)
    assert (result.returncode == 0) == (case == "jpeg-intact"), result.stderr


# --- pictures whose cost is not their pixel count: thin ones, scan-heavy JPEGs -------------------


def _thin_png(width: int) -> bytes:
    """A 1 x `width` PNG, a dark stroke over the middle half of light paper (compresses to KBs)."""
    line = np.full((1, width), 230, np.uint8)
    line[0, width // 4 : 3 * width // 4] = 20
    buffer = io.BytesIO()
    Image.fromarray(line).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_thin_picture_costs_what_its_pixels_cost(tmp_path, model_path):
    # 1 x 8,000,000 (8 kB, inside the server's 8-megapixel limit): the dense (20, W) resampling
    # matrices took 2.8 GB; an 8-megapixel picture's few float64 copies are ~300 MB
    path = tmp_path / "thin.png"
    path.write_bytes(_thin_png(8_000_000))
    result = run_cli_bounded(["predict", str(model_path), str(path)])
    assert_clean_ending(result)
    assert result.returncode == 0, result.stderr
    assert result.peak_mb < 600, f"{result.peak_mb:.0f} MB for an 8-megapixel picture"


def _jpeg_scans(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """A JPEG split into (what precedes the first scan, [each scan: its SOS segment, entropy
    data, and any tables between it and the next], the EOI marker)."""
    position, head_end, scans = 2, None, []
    while True:
        marker = data[position + 1]
        if marker == 0xD9:  # EOI
            return data[:head_end], scans, data[position:]
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        end = position + 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data up to the next marker (not FF00, not RSTn)
            head_end = position if head_end is None else head_end
            while not (data[end] == 0xFF and data[end + 1] != 0x00
                       and not 0xD0 <= data[end + 1] <= 0xD7):
                end += 1
        if head_end is not None:
            scans.append(data[position:end])
        position = end


def scan_heavy_jpeg(side: int, repeats: int) -> bytes:
    """A progressive JPEG of a digit, side x side, its last scan repeated `repeats` times: each
    repeat is a pass of the decoder over every block, for ~200 bytes of file."""
    image = np.full((side, side), 230, np.uint8)
    image[side // 4 : 3 * side // 4, side // 2 - side // 20 : side // 2 + side // 20] = 20
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", progressive=True, quality=90)
    head, scans, tail = _jpeg_scans(buffer.getvalue())
    return head + b"".join(scans) + scans[-1] * repeats + tail


def test_a_progressive_jpeg_within_the_scan_limits_is_read(tmp_path):
    path = tmp_path / "digit.jpg"
    path.write_bytes(scan_heavy_jpeg(200, 20))  # 6 scans of its own, 26 in all
    assert preprocess_digit(read_image(path)).shape == (784,)


def test_a_scan_heavy_jpeg_is_refused_before_it_is_decoded(tmp_path, model_path):
    # 2,000 x 2,000 with 5,000 scans (970 kB): 8.8 s of decoding; 40,000 scans took 96 s
    path = tmp_path / "scans.jpg"
    path.write_bytes(scan_heavy_jpeg(2000, 5000))
    start = time.monotonic()
    result = run_cli_bounded(["predict", str(model_path), str(path)])
    assert_clean_ending(result)
    assert result.returncode == 2 and "more than 500 scans" in result.stderr, result.stderr
    assert result.peak_mb < 300, f"{result.peak_mb:.0f} MB"
    assert time.monotonic() - start < 30  # generous: the refusal reads the file, decodes nothing


def test_the_scan_limit_shrinks_as_the_picture_grows(tmp_path, monkeypatch):
    # scans x pixels is bounded too: a picture 100 times larger may have 100 times fewer scans
    import anynet.images as images

    path = tmp_path / "scans.jpg"
    path.write_bytes(scan_heavy_jpeg(100, 30))  # 36 scans of 10,000 pixels
    assert read_image(path).shape == (100, 100)
    monkeypatch.setattr(images, "MAX_JPEG_SCAN_PIXELS", 35 * 100 * 100)
    with pytest.raises(UserError, match=r"more than 35 scans .* for 10,000 pixels"):
        read_image(path)
