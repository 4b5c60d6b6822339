"""Distortions of the training images, computed on the backend: affine maps and elastic warps.

What it is for: more training examples from the same 60,000, drawn afresh for every batch, so
the network learns that a digit stays a digit when it leans, grows, shifts or wobbles (Simard,
Steinkraus & Platt 2003, "Best practices for convolutional neural networks applied to visual
document analysis", ICDAR). Not for: preparing pictures for prediction (`anynet.images`), or
anything at test time.

Shapes, used in every docstring:
    n   images in a chunk
    S   side of an image (28); D = S * S = 784 inputs
    m   displacement fields (2 n: one for the rows, one for the columns)

Pixel (r, c) is row r (downwards) and column c of an image I (S, S); its centre is
c0 = (S - 1) / 2 = 13.5. Every distortion says, for each pixel (r, c) of the output, which point
(r', c') of the input to read ("backward mapping"), then reads it bilinearly:

    out[r, c] = (1 - fy)(1 - fx) I[y, x] + (1 - fy) fx I[y, x+1] + fy (1 - fx) I[y+1, x]
                + fy fx I[y+1, x+1],     y = floor(r'), x = floor(c'), fy = r' - y, fx = c' - x

with I = 0 (background) outside the image: a point half a pixel beyond the edge reads half the
edge pixel, one a whole pixel beyond reads 0 (zero padding; SciPy's mode='grid-constant').

  affine   the digit is scaled by s, slanted by k, rotated by theta counter-clockwise (as
           drawn, rows downwards) about the centre, then shifted by t = (t_r, t_c) pixels:
           the forward map p -> c0 + A (p - c0) + t with A = R(theta) K(k) s,
               R = [[cos, -sin], [sin, cos]],  K = [[1, 0], [k, 1]]   (on (row, column)),
           so the output reads at  p' = c0 + A^-1 (p - c0 - t).
  elastic  (Simard 2003) p' = p + alpha (G U_r G^T, G U_c G^T)[p]: per image two random fields
           U (S, S) uniform in [-1, 1], smoothed by the Gaussian of width sigma (G is the
           (S, S) matrix of a 1-D Gaussian filter with zero outside the image, so G U G^T is
           SciPy's gaussian_filter(U, sigma, mode='constant')), scaled by alpha pixels.
  affine+elastic   the elastic displacement added to the affine point; one resampling.

Defaults, per image uniform in the range given: rotation within +-15 degrees, scale within
1 +- 0.15, slant k within +-0.3 (about 17 degrees), shift within +-2 pixels: the order of the
affine distortions that Ciresan, Meier, Gambardella & Schmidhuber (2010, "Deep, big, simple
neural nets for handwritten digit recognition", Neural Computation 22(12)) combine with elastic
ones for plain multilayer networks, and of common MNIST practice (torchvision's RandomAffine
with 10-15 degrees, 10% translation = 2.8 pixels). Elastic: sigma = 4, alpha = 34, Simard's
values for MNIST (displacements of 1.4 pixels standard deviation at the centre, less towards
the edges, where the Gaussian reaches the zeros outside).

Random numbers come from a NumPy Generator on the host (the Array API has no random numbers),
seeded by (seed, 2, *key), drawn in bulk for a chunk and moved to the backend with one
`Backend.asarray` per draw, so every backend distorts alike for the same key and a resumed run
draws what the uninterrupted one drew. All the arithmetic on images runs on the backend, in the
Distorter's dtype, with no loop over images: on CuPy and PyTorch CUDA as on NumPy.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from anynet.warp import affine_coordinates, bilinear_sample, elastic_displacements

if TYPE_CHECKING:
    from anynet.backend import Backend

Array = Any

SIDE = 28  # S: MNIST images are 28 x 28
KINDS = ("none", "affine", "elastic", "affine+elastic")
RNG_STREAM = 2  # the Generator of a chunk is default_rng([seed, RNG_STREAM, *key])
# Rows distorted at a time by an eager library on the CPU (see Distorter.__call__).
CPU_PIECE_ROWS = 128


# --- the options ------------------------------------------------------------------------------

# Every option's range, in one table (the command lines' options and sweeps' grids are checked
# against it): field -> (lowest, whether the lowest is allowed, highest, meaning). The highest is
# allowed. Each upper bound keeps the work and the numbers bounded:
#   scale <= 0.99: the smallest size factor, 1 - scale, stays >= 0.01, so the backward map's
#       1 / s is at most 100 and every coordinate finite;
#   shear <= 28 (SIDE): a slant of k moves row r by k (r - 13.5) columns, so beyond 28 every row
#       but the middle one has left the image; with 1 / s <= 100 the coordinates stay below
#       10**5, finite in float32 (1e308 overflowed: OverflowError);
#   alpha <= 10,000: displacements are at most alpha pixels (G U G^T lies in [-1, 1]), finite
#       in float32 and resolved to 1/1000 pixel; 1e308 made nan coordinates (IndexError);
#   sigma <= 100: the Gaussian's 2 round(4 sigma) + 1 taps are built on the host, so time and
#       memory grow with sigma (1e8: 57 s and 18.9 GB; 1e9 a MemoryError); at 100 it has 801
#       taps, far wider than the 28-pixel image (beyond about 7 a wider one only flattens the
#       field further).
MAX_SHEAR = float(SIDE)
MAX_ALPHA = 10_000.0
MAX_SIGMA = 100.0
LIMITS = {
    "rotate": (0.0, True, 180.0, "degrees, the largest rotation either way"),
    "scale": (0.0, True, 0.99, "the largest relative change of size"),
    "shear": (0.0, True, MAX_SHEAR, "the largest slant k: columns shift k pixels per row"),
    "shift": (0.0, True, float(SIDE), "pixels, the largest shift along each axis"),
    "alpha": (0.0, True, MAX_ALPHA, "pixels, the strength of elastic displacements"),
    "sigma": (0.0, False, MAX_SIGMA, "pixels, the smoothness of elastic displacements"),
}


def range_text(name: str) -> str:
    """The range of option `name` in words: '>= 0 and <= 180'."""
    low, low_ok, high, _meaning = LIMITS[name]
    return f"{'>=' if low_ok else '>'} {low:g} and <= {high:g}"


def check_option(name: str, value: Any) -> float:
    """`value` as the float option `name` (a field of `LIMITS`); ValueError naming the field,
    its range and meaning unless it is a finite real number in that range."""
    low, low_ok, high, meaning = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"distortion {name} must be a number ({meaning}); got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and (value >= low if low_ok else value > low) and value <= high):
        raise ValueError(f"distortion {name} must be a finite number {range_text(name)} "
                         f"({meaning}); got {value!r}")
    return value


@dataclass(frozen=True)
class Distortion:
    """Which distortions to draw, and their ranges (host-only, JSON-able). See the module
    docstring for the formulas and where the defaults come from.

    kind: "none", "affine", "elastic" or "affine+elastic". Each image gets, uniformly:
    a rotation in [-rotate, rotate] degrees, a scale in [1 - scale, 1 + scale], a slant in
    [-shear, shear], shifts in [-shift, shift] pixels (affine); displacement fields of strength
    alpha pixels smoothed by a Gaussian of width sigma pixels (elastic). Constructing one checks
    every field: ValueError naming the field.
    """

    kind: str = "none"
    rotate: float = 15.0   # degrees, max |angle|
    scale: float = 0.15    # max relative change of size (0.15: 0.85 to 1.15)
    shear: float = 0.3     # max |k|, slant: column c + k r (0.3: about 17 degrees)
    shift: float = 2.0     # pixels, max |shift| along each axis
    alpha: float = 34.0    # elastic strength (pixels), Simard 2003
    sigma: float = 4.0     # elastic smoothness (pixels), Simard 2003

    def __post_init__(self):
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise ValueError(f"distortion kind must be one of {', '.join(KINDS)}; "
                             f"got {self.kind!r}")
        for name in LIMITS:
            object.__setattr__(self, name, check_option(name, getattr(self, name)))

    @property
    def affine(self) -> bool:
        """Whether affine distortions are drawn."""
        return self.kind in ("affine", "affine+elastic")

    @property
    def elastic(self) -> bool:
        """Whether elastic distortions are drawn."""
        return self.kind in ("elastic", "affine+elastic")

    def to_dict(self) -> dict:
        """The options as a JSON-able dict; `from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> Distortion:
        """Distortion from a dict such as `to_dict` writes; missing fields take their defaults.
        ValueError naming the field for an unknown field or a bad value."""
        if not isinstance(data, Mapping):
            raise ValueError(f"distortion options must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown distortion field(s) {', '.join(unknown)}; "
                             f"known: {', '.join(f.name for f in fields(cls))}")
        return cls(**dict(data))

    def describe(self) -> str:
        """One line for people: 'affine+elastic (rotate +-15 deg, scale +-15%, shear +-0.3,
        shift +-2 px; alpha 34 px, sigma 4 px)'."""
        parts = []
        if self.affine:
            parts.append(f"rotate +-{self.rotate:g} deg, scale +-{100 * self.scale:g}%, "
                         f"shear +-{self.shear:g}, shift +-{self.shift:g} px")
        if self.elastic:
            parts.append(f"alpha {self.alpha:g} px, sigma {self.sigma:g} px")
        return self.kind + (f" ({'; '.join(parts)})" if parts else "")


# --- host pieces: constant matrices and random parameters (NumPy, float64) ----------------------

def pixel_coordinates(size: int = SIDE) -> np.ndarray:
    """The coordinates of a row's (or a column's) pixels: [0, 1, ..., size - 1], float64 (S,).
    Pixel (r, c) of an image sits at row coordinate r and column coordinate c."""
    return np.arange(size, dtype=np.float64)


def gaussian_matrix(sigma: float, size: int = SIDE) -> np.ndarray:
    """G (size, size): 1-D Gaussian smoothing with zero outside the image, as a matrix.

        G[i, j] = g(i - j),   g(d) = exp(-d^2 / (2 sigma^2)) / Z  for |d| <= R, else 0,
        R = round(4 sigma),  Z = sum_{|e| <= R} exp(-e^2 / (2 sigma^2))  (the weights sum to 1),

    so G @ v is SciPy's gaussian_filter1d(v, sigma, mode='constant') (truncated at 4 sigma as
    SciPy does) and G @ U @ G.T smooths an image U (size, size) along both axes. sigma > 0.
    """
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    radius = int(4.0 * sigma + 0.5)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (taps / sigma) ** 2)
    weights /= weights.sum()
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :]  # i - j
    inside = np.abs(offsets) <= radius
    return np.where(inside, weights[np.clip(offsets + radius, 0, 2 * radius)], 0.0)


def affine_matrices(angle: np.ndarray, scale: np.ndarray, shear: np.ndarray,
                    shift_rows: np.ndarray, shift_cols: np.ndarray,
                    size: int = SIDE) -> np.ndarray:
    """The backward maps of affine distortions, one per image, host float64.

    angle (n,) degrees counter-clockwise, scale (n,) > 0, shear (n,) slant k, shift_rows,
    shift_cols (n,) pixels -> M (n, 2, 3) with (r', c') = M[:, :, :2] @ (r, c) + M[:, :, 2]:
        M[:, :, :2] = A^-1,  M[:, :, 2] = c0 - A^-1 (c0 + t),  A = R(angle) K(shear) scale
    (see the module docstring). Zero angle, shear and shifts with unit scale give exactly
    [[1, 0, 0], [0, 1, 0]]; whole-pixel shifts alone give exactly [[1, 0, -t_r], [0, 1, -t_c]].
    """
    theta = np.radians(np.asarray(angle, dtype=np.float64))
    cos, sin = np.cos(theta), np.sin(theta)
    k = np.asarray(shear, dtype=np.float64)
    inv_s = 1.0 / np.asarray(scale, dtype=np.float64)
    # A^-1 = (1/s) K^-1 R^-1 = (1/s) [[1, 0], [-k, 1]] [[cos, sin], [-sin, cos]]
    a00, a01 = inv_s * cos, inv_s * sin
    a10, a11 = inv_s * (-k * cos - sin), inv_s * (cos - k * sin)
    centre = (size - 1) / 2.0
    ur = centre + np.asarray(shift_rows, dtype=np.float64)  # c0 + t
    uc = centre + np.asarray(shift_cols, dtype=np.float64)
    M = np.empty((theta.shape[0], 2, 3))
    M[:, 0, 0], M[:, 0, 1], M[:, 0, 2] = a00, a01, centre - (a00 * ur + a01 * uc)
    M[:, 1, 0], M[:, 1, 1], M[:, 1, 2] = a10, a11, centre - (a10 * ur + a11 * uc)
    return M


def draw_affine(rng: np.random.Generator, n: int, distortion: Distortion,
                size: int = SIDE) -> np.ndarray:
    """Draw n affine maps from `rng` within `distortion`'s ranges -> M (n, 2, 3) float64.

    Five uniform draws of n each, in this order: angle, scale, shear, shift_rows, shift_cols.
    """
    d = distortion
    angle = rng.uniform(-d.rotate, d.rotate, n)
    scale = rng.uniform(1.0 - d.scale, 1.0 + d.scale, n)
    shear = rng.uniform(-d.shear, d.shear, n)
    shift = rng.uniform(-d.shift, d.shift, (2, n))
    return affine_matrices(angle, scale, shear, shift[0], shift[1], size)


def draw_fields(rng: np.random.Generator, n: int, size: int = SIDE) -> np.ndarray:
    """Draw the elastic fields of n images: U (2 n, size, size) float32, uniform in [-1, 1):
    U[:n] displace rows, U[n:] columns. float32 whatever the Distorter's dtype, so float32 and
    float64 runs see the same numbers (and the host draws half the bytes)."""
    U = rng.random((2 * n, size, size), dtype=np.float32)
    U *= 2
    U -= 1
    return U


# --- the Distorter -----------------------------------------------------------------------------

class Distorter:
    """Distorts flattened float images on a backend.

    `Distorter(distortion, backend, seed, dtype)` puts the constant pieces on the backend once
    (the pixel coordinates, the Gaussian matrix); each call draws a chunk's random numbers on
    the host (`draw`), moves them to the backend with `asarray`, and distorts the chunk with
    the pure functions of `anynet.warp`: all at once, or on an eager library on the CPU
    CPU_PIECE_ROWS images at a time (compiled by `Backend.compile`: jax.jit on JAX; the
    gathers use the backend's own `take` where its fused step has one).
    """

    def __init__(self, distortion: Distortion, backend: Any, seed: int,
                 dtype: str = "float32"):
        from anynet.backend import get_backend

        if not isinstance(distortion, Distortion):
            raise TypeError(f"distortion must be a Distortion, got {type(distortion).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.distortion: Distortion = distortion
        self.backend: Backend = get_backend(backend)
        self.seed: int = int(seed)
        self.dtype: str = dtype
        self._xp_dtype: Any = self.backend.dtype(dtype)
        self._pixels: Array = self.backend.asarray(pixel_coordinates(SIDE), dtype)  # (S,)
        self._G: Array | None = (self.backend.asarray(gaussian_matrix(distortion.sigma), dtype)
                                 if distortion.elastic else None)
        ops = self.backend.fused_ops()  # its `take` gathers rows as fast as the library can
        self._take: Callable[[Array, Array], Array] | None = getattr(ops, "take", None)
        self._distort: Callable[..., Array] = self.backend.compile(self._compute)
        # An eager library on the CPU makes some 25 passes over (rows, S, S) temporaries, each
        # a fresh array: 1,024 rows at once make 3-6 MB ones, which leave the cache and which
        # the allocator maps and unmaps each time (page faults); 128 rows make 0.4-0.8 MB ones
        # that stay in L2 and in reused heap (NumPy, affine, 1,024 rows: 16 ms at once, 11 ms
        # in pieces of 128). A compiler (jax.jit) fuses the passes, and a GPU wants big work.
        self._piece_rows: int | None = (CPU_PIECE_ROWS if self.backend.on_cpu
                                        and not self.backend.compiles else None)
        self._last: Array | None = None  # the last chunk's result (see __call__)

    def __repr__(self) -> str:
        return (f"Distorter({self.distortion.describe()}, {self.backend.describe()}, "
                f"seed={self.seed}, {self.dtype})")

    def rng(self, key: tuple[int, ...]) -> np.random.Generator:
        """The Generator of a chunk: default_rng([seed, 2, *key])."""
        key = tuple(key)
        if not all(isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 0
                   for k in key):
            raise ValueError(f"key must be a tuple of integers >= 0, got {key!r}")
        return np.random.default_rng([self.seed, RNG_STREAM, *(int(k) for k in key)])

    def draw(self, n: int, key: tuple[int, ...]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The host random numbers of a chunk of n images: (M (n, 2, 3) float64 or None,
        U (2 n, S, S) float32 or None), affine first, then elastic, from `rng(key)`."""
        rng = self.rng(key)
        M = draw_affine(rng, n, self.distortion) if self.distortion.affine else None
        U = draw_fields(rng, n) if self.distortion.elastic else None
        return M, U

    def __call__(self, X: Array, key: tuple[int, ...]) -> Array:
        """X (n, 784) float array on the backend, values in [0, 1] -> distorted (n, 784), same
        dtype/device. Random numbers from np.random.default_rng([seed, 2, *key]) (key e.g.
        (epoch, first_row)), so the same key gives the same distortion on every backend.
        X itself is never changed; kind "none" (or n = 0) returns X."""
        if len(X.shape) != 2 or X.shape[1] != SIDE * SIDE:
            raise ValueError(f"images to distort must be (n, {SIDE * SIDE}), got {tuple(X.shape)}")
        if X.dtype != self._xp_dtype:
            raise ValueError(f"images to distort must be {self.dtype} (the Distorter's dtype), "
                             f"got {X.dtype}")
        if self.distortion.kind == "none" or X.shape[0] == 0:
            return X
        n = X.shape[0]
        M, U = self.draw(n, key)
        rows = self._piece_rows
        if rows is None or n <= rows:
            out = self._distort_piece(X, M, U)
        else:   # the same numbers, image by image, as one call would give
            pieces = []
            for start in range(0, n, rows):
                stop = min(start + rows, n)
                piece_U = None if U is None else np.concatenate([U[start:stop],
                                                                 U[n + start:n + stop]])
                pieces.append(self._distort_piece(
                    X[start:stop, ...], None if M is None else M[start:stop], piece_U))
            out = self.backend.xp.concat(pieces, axis=0)
        # Holding on to the last result keeps its memory in use until the next chunk's is
        # made: where the caller drops it at once (training copies it into its own buffer),
        # glibc hands the freed heap back to the OS and every temporary of the next chunk
        # faults its pages in again (NumPy, elastic: 6,400 page faults a chunk, 3x the time).
        self._last = out
        return out

    def _distort_piece(self, X: Array, M: np.ndarray | None, U: np.ndarray | None) -> Array:
        """X (n, D) on the backend and its host draws (M (n, 2, 3), U (2n, S, S)) -> (n, D)."""
        to = self.backend.asarray
        return self._distort(X, None if M is None else to(M, self.dtype),
                             None if U is None else to(U, self.dtype))

    def _compute(self, X: Array, M: Array | None, U: Array | None) -> Array:
        """The backend's work for a chunk: X (n, D), M (n, 2, 3) or None, U (2n, S, S) or None."""
        xp = self.backend.xp
        n = X.shape[0]
        if M is not None:
            rows, cols = affine_coordinates(M, self._pixels)  # (n, S, S) each
        else:
            rows = xp.reshape(self._pixels, (-1, 1))  # (S, 1): r
            cols = xp.reshape(self._pixels, (1, -1))  # (1, S): c
        if U is not None:
            moved = elastic_displacements(U, self._G, self.distortion.alpha)  # (2n, S, S)
            rows, cols = rows + moved[:n, ...], cols + moved[n:, ...]
        images = xp.reshape(X, (n, SIDE, SIDE))
        return xp.reshape(bilinear_sample(images, rows, cols, self._take), (n, SIDE * SIDE))
