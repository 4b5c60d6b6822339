"""Read a picture of a handwritten digit and turn it into an MNIST-style 28x28 input.

This is what `anynet predict` does to a user's PNG, JPEG, BMP or `.npy` before the network sees
it. A network trained on MNIST only recognises digits that look like MNIST's: white ink on black,
the digit's longer side 20 pixels, its centre of mass at the centre of a 28x28 field. LeCun,
Cortes and Burges describe how MNIST was made: "size normalized to fit in a 20x20 pixel box while
preserving their aspect ratio ... grey levels as a result of the anti-aliasing technique used by
the normalization algorithm ... centered in a 28x28 image by computing the center of mass of the
pixels, and translating the image so as to position this point at the center of the 28x28 field."
`preprocess_digit` follows that recipe step by step:

1. grey levels in [0, 1]; invert when the background is light (dark ink on paper);
2. subtract the background and stretch the ink to full strength;
3. crop to the ink;
4. scale the longer side to 20 pixels, keeping the aspect ratio, by area averaging (which is
   the anti-aliasing: a pixel of the result is the mean of the pixels it covers);
5. place it in a 28x28 field with its centre of mass at (row 14, column 14), rounded to the
   nearest whole pixel as in MNIST, whose test digits have centres of mass in [13.5, 14.5].

Shapes: an image is (H, W), any size; the result is (784,) = 28 * 28 uint8, row-major, like one
row of the MNIST data, and `load_digits` stacks N of them into (N, 784).

Only the reading of PNG/JPEG/BMP needs Pillow (the `image` extra), imported when such a file is
read. `.npy` files and the preprocessing itself are pure NumPy.

A picture is checked before it is decoded: it must be a regular file (a named pipe would block
forever), and its header must promise at most `MAX_PIXELS` pixels (Pillow's size, or a `.npy`
header's shape, with the file long enough to hold it), so a small file cannot make `predict`
allocate gigabytes. Every problem is a one-line `UserError` naming the file.

Not for: segmenting several digits out of one picture, deskewing, or cleaning up photographs
beyond a uniform background. One picture, one digit.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from anynet.errors import MissingExtraError, UserError, one_line
from anynet.fileio import input_error, open_regular
from anynet.npyzip import Unreadable, read_npy_data, read_npy_header

FIELD = 28  # side of the MNIST image
BOX = 20  # side of the box the digit is scaled to fit, as in MNIST
CENTRE = 14.0  # where the centre of mass goes (row and column), as in MNIST's test set
# After the background is removed and the ink stretched to 1, weaker values are treated as
# background: JPEG ringing and paper grain sit below this and would otherwise widen the crop.
NOISE_FLOOR = 0.1
# Less contrast than this between ink and background (about 25 grey levels of 255) is a blank.
MIN_CONTRAST = 0.1

# The most pixels a picture may have. A 12-megapixel phone photo has 12 million, a 40-megapixel
# camera's full frame about 40 million; reading and preprocessing hold a few float64 copies of
# the picture (8 bytes a pixel each): at 40 million, 1.3 GB at the peak for grey, 2.4 GB for
# colour with alpha (measured through `anynet predict`), where a 190 kB PNG promising
# 12000 x 12000 used to cost 5.7 GB. Pillow's own limit (89 million, only a warning below twice
# that) is looser, so this one is checked first, from the header.
MAX_PIXELS = 40_000_000
# A progressive JPEG is decoded scan by scan, each scan a pass over the blocks of the picture:
# a 2000 x 2000 picture whose last scan was repeated 5,000 times (970 kB) took 8.8 s, and 40,000
# scans 96 s. Encoders write 1 to 4 scans (baseline) or 6 to 10 (libjpeg's progression), and
# libjpeg-turbo's own tools refuse more than 500 (-limitscans). So a JPEG may have at most
# MAX_JPEG_SCANS scans, and scans x pixels at most MAX_JPEG_SCAN_PIXELS (about 2 s of
# decoding): 100 scans at MAX_PIXELS. Counted (the SOS markers) before anything is decoded.
MAX_JPEG_SCANS = 500
MAX_JPEG_SCAN_PIXELS = 100 * MAX_PIXELS

_NPY_MAGIC = b"\x93NUMPY"
# Pillow's luminance weights (ITU-R 601-2), so that .npy colour and PNG colour agree.
_LUMA = np.array([0.299, 0.587, 0.114])


# ----------------------------------------------------------------------------- reading


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a picture from `path` as a 2-D float64 array of grey levels in [0, 1] (0 = black).

    PNG, JPEG, BMP (and anything else Pillow opens) go through Pillow; `.npy` files (told by
    their magic bytes, whatever their suffix) through `anynet.npyzip` (never pickle). A `.npy`
    may hold a grey image (H, W), a colour one (H, W, 3) or (H, W, 4) RGBA, or a flat (784,)
    MNIST row; uint8 values are 0..255, floats either [0, 1] or 0..255.

    Colour becomes grey with Pillow's weights (0.299 R + 0.587 G + 0.114 B). Transparent
    pixels are laid over a background that contrasts with the opaque ones, so both black ink
    and white ink on a transparent background survive.

    Raises UserError, one line naming the file, for a missing file, a file that is not an
    image, a damaged one, or an array of the wrong shape or values.
    """
    path = Path(path)
    with open_regular(path, "an image file") as f:
        try:
            head = f.read(len(_NPY_MAGIC))
        except OSError as e:
            raise input_error(path, e, "an image file") from None
    if head == _NPY_MAGIC:
        return _read_npy(path)
    if path.suffix.lower() == ".npy":
        raise UserError(f"{path}: not a NumPy .npy file (no .npy header)")
    if head.startswith(b"PK"):  # a zip, most likely an .npz archive
        raise UserError(f"{path}: a zip/.npz archive, not an image; save one array with np.save")
    return _read_with_pillow(path)


def _read_npy(path: Path) -> np.ndarray:
    """Read a .npy picture through `anynet.npyzip`'s bounded reader: its header is parsed and
    checked (shape, dtype, that the file holds what the header promises) before the array is
    allocated."""
    with open_regular(path, "an image file") as f:
        try:
            header = read_npy_header(f, "the file")
            _check_npy_header(path, header.shape, header.dtype,
                              os.fstat(f.fileno()).st_size - header.size)
            array = read_npy_data(f, header, "the file")
        except Unreadable as e:  # damaged or hostile headers
            raise UserError(f"{path}: not a usable .npy image ({e})") from None
        except OSError as e:
            raise UserError(f"{path}: damaged .npy file ({one_line(e)})") from None
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 1:  # one MNIST row
        array = array.reshape(FIELD, FIELD)
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise UserError(f"{path}: the image holds NaN or infinite values")
    low, high = values.min(), values.max()
    if low < 0 or high > 255:
        raise UserError(
            f"{path}: pixel values must lie in [0, 1] or 0..255, found {low:g}..{high:g}"
        )
    # Integers are 0..255; floats are [0, 1] unless some value says they are 0..255.
    if np.issubdtype(array.dtype, np.integer) or high > 1:
        values = values / 255.0
    return _to_gray(values)


def _check_npy_header(path: Path, shape: tuple, dtype: np.dtype, data_bytes: int) -> None:
    """The checks of a .npy picture that its header alone allows, before anything is read."""
    if dtype.hasobject:
        raise UserError(
            f"{path}: not a usable .npy image (it holds Python objects, which would need "
            "pickle; save a numeric array)"
        )
    if dtype.kind not in "biuf":  # bool, signed and unsigned integers, floats
        raise UserError(f"{path}: a .npy image must hold numbers, not {dtype}")
    flat_row = len(shape) == 1 and shape[0] == FIELD * FIELD
    if not (flat_row or len(shape) == 2 or (len(shape) == 3 and shape[2] in (3, 4))):
        raise UserError(
            f"{path}: a .npy image must be (H, W), (H, W, 3), (H, W, 4) or (784,), not {shape}"
        )
    if not flat_row and (shape[0] == 0 or shape[1] == 0):
        raise UserError(f"{path}: the image is empty, shape {shape}")
    pixels = math.prod(shape[:2])
    if pixels > MAX_PIXELS:
        raise UserError(
            f"{path}: the .npy header promises {shape[0]} x {shape[1]} = {pixels:,} pixels, more "
            f"than the {MAX_PIXELS:,} anynet reads; scale the picture down"
        )
    n_bytes = math.prod(shape) * dtype.itemsize
    if data_bytes < n_bytes:
        raise UserError(
            f"{path}: damaged .npy file (the header promises {shape} {dtype} = {n_bytes:,} bytes, "
            f"the file holds {max(data_bytes, 0):,})"
        )


def _read_with_pillow(path: Path) -> np.ndarray:
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:
        raise MissingExtraError(
            "Pillow", "image", f"Reading {path.suffix or 'image'} files"
        ) from None
    try:
        with warnings.catch_warnings():
            # Pillow's warnings about damaged metadata ("Tag data larger than file") are not for
            # the user: the picture reads or fails. But it only warns about an image over its
            # own size limit: that becomes an error.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # lazy: only the header has been read
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise UserError(
                        f"{path}: the picture is {width} x {height} = {width * height:,} pixels, "
                        f"more than the {MAX_PIXELS:,} anynet reads; scale it down"
                    )
                if image.format == "JPEG":
                    _check_jpeg_scans(path, width * height)
                image.load()  # decode now, so a truncated file fails here and not later
                image = ImageOps.exif_transpose(image)  # phone photos store their rotation
                values = _pillow_to_array(image, path)
    except UnidentifiedImageError:
        raise UserError(
            f"{path}: not an image file anynet can read (PNG, JPEG, BMP or .npy)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(f"{path}: image too large to read safely ({one_line(e)})") from None
    except UserError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, MemoryError) as e:
        # truncated or corrupt image data (MemoryError: a damaged header's absurd sizes)
        raise UserError(f"{path}: damaged image file ({one_line(e)})") from None
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise UserError(f"{path}: the image is empty")
    return _to_gray(values)


def _check_jpeg_scans(path: Path, pixels: int) -> None:
    """Refuse a JPEG with more scans than MAX_JPEG_SCANS, or MAX_JPEG_SCAN_PIXELS / pixels.

    Scans are counted by their SOS markers (FF DA): inside entropy-coded data every FF byte is
    followed by 00 or a restart marker, so FF DA only starts a scan (or sits in an embedded
    thumbnail, which only counts a few too many). Read in chunks: memory stays small.
    """
    allowed = min(MAX_JPEG_SCANS, MAX_JPEG_SCAN_PIXELS // max(pixels, 1))
    scans, previous = 0, b""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            scans += (previous + chunk).count(b"\xff\xda")
            previous = chunk[-1:]  # a marker split between two chunks is counted once
            if scans > allowed:
                raise UserError(
                    f"{path}: the JPEG has more than {allowed:,} scans (a progressive JPEG has "
                    f"about 10), more than anynet decodes for {pixels:,} pixels; save it again "
                    "as a baseline JPEG or a PNG")


def _pillow_to_array(image, path: Path) -> np.ndarray:
    """Pillow image -> float64 (H, W) grey or (H, W, 4) RGBA, in [0, 1]."""
    if image.mode in ("I;16", "I;16B", "I;16L"):  # 16-bit grey (some PNGs)
        return np.asarray(image, dtype=np.float64) / 65535.0
    if image.mode in ("I", "F"):  # 32-bit grey: no fixed white level, so use the image's own
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise UserError(f"{path}: the image holds NaN or infinite values")
        values = np.clip(values, 0.0, None)  # no negative light
        high = values.max(initial=0.0)
        return values / high if high > 1 else values
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    image = image.convert("RGBA" if has_alpha else "L")
    values = np.asarray(image, dtype=np.float64)  # a new array: scaled in place
    values /= 255.0
    return values


def _to_gray(values: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 3) or (H, W, 4) in [0, 1] -> (H, W) grey in [0, 1]."""
    if values.ndim == 2:
        return values
    gray = values[..., :3] @ _LUMA
    if values.shape[2] == 4:
        alpha = values[..., 3]
        # Lay transparent pixels over white if the opaque ones are dark, over black if light.
        weight = alpha.sum()
        opaque_mean = (gray * alpha).sum() / weight if weight > 0 else 0.0
        backdrop = 1.0 if opaque_mean < 0.5 else 0.0
        gray = alpha * gray + (1.0 - alpha) * backdrop
    return np.clip(gray, 0.0, 1.0)


# ----------------------------------------------------------------------------- preprocessing


def preprocess_digit(gray: np.ndarray, *, source: str = "image") -> np.ndarray:
    """Turn one picture of a digit into an MNIST-style (784,) uint8 row (white ink on black).

    `gray` is (H, W), any size: float grey levels in [0, 1] as `read_image` returns them, or
    uint8 0..255. Dark ink on a light background and light ink on a dark one both work; the
    background is judged from the pixels along the image's edge. `source` names the picture in
    error messages (a file name).

    Raises UserError when there is no ink: a blank or single-colour picture.
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.shape[0] == 0 or gray.shape[1] == 0:
        raise ValueError(f"expected a non-empty 2-D grey image (H, W), got shape {gray.shape}")
    # float64 grey as given (no copy): every step below makes its own arrays or works in place on
    # them, so that the peak is a few float64 copies of the picture whatever its shape
    values = gray / 255.0 if gray.dtype == np.uint8 else np.asarray(gray, dtype=np.float64)

    # 1-2. White ink on black, background at 0 and the strongest ink at 1.
    background = float(np.median(_border(values)))
    ink = 1.0 - values if background > 0.5 else values.copy()
    del values
    background = min(background, 1.0 - background)
    contrast = float(ink.max()) - background
    if contrast < MIN_CONTRAST:
        raise UserError(f"{source}: no digit found, the image is blank (a single colour)")
    ink -= background
    ink /= contrast
    np.clip(ink, 0.0, 1.0, out=ink)
    ink[ink < NOISE_FLOOR] = 0.0

    # 3. Crop to the ink.
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    # 4. Longer side to BOX pixels, keeping the aspect ratio; area averaging anti-aliases.
    height, width = ink.shape
    scale = BOX / max(height, width)
    new_height = max(1, round(height * scale))
    new_width = max(1, round(width * scale))
    digit = resample(ink, new_height, new_width)
    # MNIST strokes reach full strength; a thin pen stroke that averaging has faded would not.
    digit /= digit.max()

    # 5. Centre of mass to (CENTRE, CENTRE), by a whole-pixel shift, inside the field.
    com_row, com_col = centre_of_mass(digit)
    top = int(np.clip(round(CENTRE - com_row), 0, FIELD - new_height))
    left = int(np.clip(round(CENTRE - com_col), 0, FIELD - new_width))
    field = np.zeros((FIELD, FIELD))
    field[top : top + new_height, left : left + new_width] = digit
    return np.round(field * 255.0).astype(np.uint8).reshape(FIELD * FIELD)


def load_digits(paths: Iterable[str | os.PathLike]) -> np.ndarray:
    """Read and preprocess each picture in `paths`: (N, 784) uint8, one MNIST-style row each."""
    rows = [preprocess_digit(read_image(p), source=str(p)) for p in paths]
    if not rows:
        return np.zeros((0, FIELD * FIELD), dtype=np.uint8)
    return np.stack(rows)


def _border(values: np.ndarray) -> np.ndarray:
    """The pixels along the edge of an (H, W) image, as one flat array, each pixel once (the
    border of a picture one pixel high is that row, not twice as many pixels)."""
    height, width = values.shape
    if height <= 2 or width <= 2:
        return values.ravel()
    return np.concatenate([values[0], values[-1], values[1:-1, 0], values[1:-1, -1]])


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, column) of an (H, W) image's centre of mass, pixel centres at whole numbers.

    The image's values are the masses; an all-zero image has its centre at the geometric centre.
    """
    image = np.asarray(image, dtype=np.float64)
    total = image.sum()
    if total == 0:
        return (image.shape[0] - 1) / 2, (image.shape[1] - 1) / 2
    row = (image.sum(axis=1) @ np.arange(image.shape[0])) / total
    col = (image.sum(axis=0) @ np.arange(image.shape[1])) / total
    return float(row), float(col)


# ----------------------------------------------------------------------------- resampling


def resample(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an (H, W) float image to (height, width): area averaging to shrink, bilinear to grow.

    Separable: the rows are resampled, then the columns, each as `resample_matrix` describes,
    so the result equals `R_rows @ image @ R_cols.T` with R_rows (height, H) and R_cols
    (width, W). Shrinking is computed from cumulative sums, never from the dense matrices: its
    time and memory are O(H W) whatever the aspect ratio (a 1 x 8,000,000 picture's dense
    (20, W) matrix took 2.8 GB and 8 s; this takes one float64 copy of the picture).
    """
    result = _resample_axis(_resample_axis(image, height, axis=0), width, axis=1)
    return result.copy() if np.may_share_memory(result, image) else result


def _resample_axis(image: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """`image` (a new float64 array) resampled to n_out pixels along `axis`.

    Shrinking: output pixel i is the mean of the input over [a_i, a_(i+1)), a_i = i n_in / n_out,
    i.e. (F(a_(i+1)) - F(a_i)) / s with F the integral of the line, piecewise linear between
    the cumulative sums: F(x) = P[floor(x)] + frac(x) v[floor(x)], P[k] = v[0] + ... + v[k-1].
    Growing (n_out > n_in, so the matrix is at most n_out x n_out): `resample_matrix`.
    """
    values = np.moveaxis(np.asarray(image, dtype=np.float64), axis, 0)  # (n_in, ...)
    n_in = values.shape[0]
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resample {n_in} pixels to {n_out}")
    if n_out > n_in:
        result = np.tensordot(resample_matrix(n_in, n_out), values, axes=1)
    elif n_out == n_in:
        result = values  # the same pixels; `resample` copies at the end if need be
    else:
        s = n_in / n_out
        prefix = np.zeros((n_in + 1, *values.shape[1:]))  # P (n_in + 1, ...)
        np.cumsum(values, axis=0, out=prefix[1:])
        edges = np.arange(n_out + 1) * s
        edges[-1] = n_in  # exactly: the last interval ends at the last pixel's end
        whole = np.minimum(np.floor(edges).astype(np.intp), n_in)
        frac = (edges - whole).reshape((-1,) + (1,) * (values.ndim - 1))
        # at x = n_in, frac is 0: any pixel will do for v[floor(x)]
        integral = prefix[whole] + frac * values[np.minimum(whole, n_in - 1)]
        result = (integral[1:] - integral[:-1]) / s
    return np.moveaxis(result, 0, axis)


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix that resamples a line of n_in pixels to n_out; rows sum to 1.

    The definition (and the naive reference) of what `resample` computes: dense, so its memory
    is n_out x n_in; `resample` uses it only to grow, where n_in < n_out.

    Shrinking (n_out <= n_in) averages by area: output pixel i covers the input interval
    [i * s, (i + 1) * s) with s = n_in / n_out, and each input pixel [j, j + 1) counts by how
    much of it lies inside. That is exact anti-aliasing, and the identity when n_out == n_in.
    Growing interpolates linearly between the two nearest input pixel centres.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resample {n_in} pixels to {n_out}")
    if n_out <= n_in:
        s = n_in / n_out
        lo = np.arange(n_out)[:, None] * s  # (n_out, 1) output interval starts
        j = np.arange(n_in)[None, :]  # (1, n_in) input pixel starts
        overlap = np.minimum(lo + s, j + 1) - np.maximum(lo, j)
        return np.clip(overlap, 0.0, None) / s
    # Growing: output pixel i's centre sits at (i + 0.5) * n_in / n_out - 0.5 in input pixels.
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    left = np.floor(x).astype(int)
    right = np.minimum(left + 1, n_in - 1)
    frac = x - left
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.arange(n_out), left), 1.0 - frac)
    np.add.at(matrix, (np.arange(n_out), right), frac)
    return matrix
