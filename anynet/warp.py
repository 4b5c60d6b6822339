"""The distortions' arithmetic on images (`anynet.augment`, whose docstring gives the
formulas): where each output pixel reads in its input image, under affine maps and elastic
displacements, and the bilinear read itself. Pure functions of arrays, written against the
Array API standard only, so that every library (and jax.jit) runs them as they are.

Shapes: n images, S the side of an image (28), m displacement fields.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace
from array_api_compat import device as device_of

Array = Any


def affine_coordinates(M: Array, pixels: Array) -> tuple[Array, Array]:
    """Where each output pixel reads, under per-image affine maps.

    M (n, 2, 3), pixels (S,) the coordinates 0, 1, ..., S - 1 -> (r', c'), each (n, S, S):
        r' = M[:, 0, 0] r + M[:, 0, 1] c + M[:, 0, 2]
        c' = M[:, 1, 0] r + M[:, 1, 1] c + M[:, 1, 2]
    computed as outer sums, r'[k, r, c] = (M[k, 0, 0] r + M[k, 0, 2]) + M[k, 0, 1] c: one pass
    over the (n, S, S) result per coordinate, the products being only (n, S).
    """
    xp = array_namespace(M, pixels)
    p = xp.reshape(pixels, (1, -1))  # (1, S)

    def entry(i: int, j: int) -> Array:
        return xp.reshape(M[:, i, j], (-1, 1))  # (n, 1)

    def outer_sum(down: Array, across: Array) -> Array:  # (n, S), (n, S) -> (n, S, S)
        return xp.reshape(down, (-1, p.shape[1], 1)) + xp.reshape(across, (-1, 1, p.shape[1]))

    return (outer_sum(entry(0, 0) * p + entry(0, 2), entry(0, 1) * p),
            outer_sum(entry(1, 0) * p + entry(1, 2), entry(1, 1) * p))


def elastic_displacements(U: Array, G: Array, alpha: float) -> Array:
    """Smooth random fields into displacements: alpha G U G^T, batched.

    U (m, S, S) fields, G (S, S) the Gaussian matrix of `gaussian_matrix` -> (m, S, S) pixels.
    alpha = 0 gives exactly 0. One batched product per side (xp.matmul broadcasts G over the
    m fields). Two large products instead (the fields side by side, (S, m S)) are faster on a
    quiet CPU with two BLAS threads, but ten times slower when another process holds a core.
    """
    xp = array_namespace(U, G)
    return xp.matmul(xp.matmul(alpha * G, U), G.T)


def bilinear_sample(images: Array, rows: Array, cols: Array, take: Any = None) -> Array:
    """Read images at real-valued points, bilinearly, with 0 outside the image.

    images (n, h, w), rows and cols (n, h2, w2) the points (row r', column c') to read in each
    image -> (n, h2, w2), by the formula of the module docstring: each output is a weighted sum
    of the 4 pixels around its point, the pixels beyond the edge being 0 (SciPy's
    map_coordinates(order=1, mode='grid-constant', cval=0)). Whole-pixel points read their pixel
    exactly. Gathers with `take` from the flattened, zero-bordered images: the standard's
    xp.take(a, i, axis=0), or `take(a, i)` when given (the backend's own, which may skip
    array-api-compat's handling of negative indices: these are never negative).
    """
    xp = array_namespace(images, rows, cols)
    n, h, w = images.shape
    # A zero border, one pixel before and two after: every point is clipped to [-1, h] x [-1, w]
    # (beyond, all four neighbours are 0 anyway), so its neighbours lie inside the border.
    ph, pw = h + 3, w + 3
    dtype, device = images.dtype, device_of(images)
    if n == 0:
        return xp.zeros(rows.shape, dtype=dtype, device=device)
    padded = xp.concat([xp.zeros((n, 1, w), dtype=dtype, device=device), images,
                        xp.zeros((n, 2, w), dtype=dtype, device=device)], axis=1)
    padded = xp.concat([xp.zeros((n, ph, 1), dtype=dtype, device=device), padded,
                        xp.zeros((n, ph, 2), dtype=dtype, device=device)], axis=2)
    rows = xp.clip(rows, -1.0, float(h))
    cols = xp.clip(cols, -1.0, float(w))
    y, x = xp.floor(rows), xp.floor(cols)
    fy, fx = rows - y, cols - x
    # flat index of the top-left neighbour (y, x): (y + 1, x + 1) in image k's padded copy, so
    # k ph pw + (y + 1) pw + (x + 1); its right, lower and lower-right neighbours are 1, pw and
    # pw + 1 further on, read by taking from the flat array shifted by as much
    per_image = (-1,) + (1,) * (rows.ndim - 1)
    if n * ph * pw <= 2 / xp.finfo(rows.dtype).eps:
        # in the coordinates' floats, which hold every integer this far exactly (float32:
        # 2^24, so up to 17,000 images at once), then converted once: adding the image's start
        # in int64 over the whole (n, S, S) takes 5x as long on NumPy
        starts = xp.arange(n, dtype=rows.dtype, device=device) * (ph * pw) + (pw + 1)
        first = xp.astype(y * pw + x + xp.reshape(starts, per_image), xp.int64)
    else:
        starts = xp.arange(n, dtype=xp.int64, device=device) * (ph * pw) + (pw + 1)
        first = xp.astype(y * pw + x, xp.int64) + xp.reshape(starts, per_image)
    first = xp.reshape(first, (-1,))
    flat = xp.reshape(padded, (-1,))

    if take is None:
        def take(a, i):
            return xp.take(a, i, axis=0)

    def at(delta: int) -> Array:
        return xp.reshape(take(flat[delta:], first), rows.shape)

    top_left, top_right = at(0), at(1)
    bottom_left, bottom_right = at(pw), at(pw + 1)
    top = top_left + fx * (top_right - top_left)
    bottom = bottom_left + fx * (bottom_right - bottom_left)
    return top + fy * (bottom - top)
