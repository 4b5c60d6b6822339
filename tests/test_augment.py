"""The distortions of anynet.augment, on the backend under test: exact identities and shifts,
bilinear resampling and Gaussian smoothing against SciPy, every backend against NumPy, seeded
determinism, and the checks of the options."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from data_helpers import synthetic_mnist

from anynet import augment as A
from anynet.augment import Distorter, Distortion
from anynet.backend import get_backend

S = 28


def scipy_ndimage():
    pytest.importorskip(
        "scipy", minversion="1.6",
        reason="SciPy (1.6 or newer, for mode='grid-constant') is the oracle of this test only")
    from scipy import ndimage

    return ndimage


def digits(n: int, seed: int = 0) -> np.ndarray:
    """n synthetic digits as float32 (n, 784) in [0, 1], as training hands them over."""
    return (synthetic_mnist(n, seed)[0].reshape(n, S * S) / 255.0).astype(np.float32)


def grid(backend, n: int, dtype: str = "float64"):
    """The pixel coordinates of n images: rows[k, r, c] = r, cols[k, r, c] = c."""
    rows, cols = np.meshgrid(A.pixel_coordinates(S), A.pixel_coordinates(S), indexing="ij")
    return (backend.asarray(np.broadcast_to(rows, (n, S, S)), dtype),
            backend.asarray(np.broadcast_to(cols, (n, S, S)), dtype))


def shifted(image: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """image (S, S) moved dr rows down and dc columns right, zeros coming in (np.roll, no wrap)."""
    out = np.roll(image, (dr, dc), axis=(0, 1))
    if dr > 0:
        out[:dr] = 0
    elif dr < 0:
        out[dr:] = 0
    if dc > 0:
        out[:, :dc] = 0
    elif dc < 0:
        out[:, dc:] = 0
    return out


# --- the options ------------------------------------------------------------------------------

def test_distortion_defaults_and_round_trip_through_json():
    d = Distortion()
    assert d.kind == "none" and not d.affine and not d.elastic
    assert (d.rotate, d.scale, d.shear, d.shift, d.alpha, d.sigma) == (15, 0.15, 0.3, 2, 34, 4)
    both = Distortion(kind="affine+elastic", rotate=10, shift=3, sigma=5)
    assert both.affine and both.elastic and isinstance(both.rotate, float)
    again = Distortion.from_dict(json.loads(json.dumps(both.to_dict())))
    assert again == both
    assert Distortion.from_dict({"kind": "elastic"}) == Distortion(kind="elastic")
    assert both.describe() == ("affine+elastic (rotate +-10 deg, scale +-15%, shear +-0.3, "
                               "shift +-3 px; alpha 34 px, sigma 5 px)")
    assert Distortion().describe() == "none"


@pytest.mark.parametrize("options, field", [
    ({"kind": "rotate"}, "kind"), ({"kind": None}, "kind"),
    ({"sigma": -1.0}, "sigma"), ({"sigma": 0}, "sigma"), ({"alpha": -0.5}, "alpha"),
    ({"alpha": math.nan}, "alpha"), ({"rotate": math.inf}, "rotate"), ({"rotate": 181}, "rotate"),
    ({"scale": 1.0}, "scale"), ({"scale": -0.1}, "scale"), ({"shear": -0.2}, "shear"),
    ({"shift": "2"}, "shift"), ({"shift": 29}, "shift"), ({"shear": True}, "shear"),
    ({"sigma": None}, "sigma"),
])
def test_bad_options_are_value_errors_naming_the_field(options, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        Distortion(**options)
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        Distortion.from_dict({"kind": "affine", **options})


def test_from_dict_refuses_unknown_fields_and_non_mappings():
    with pytest.raises(ValueError, match="sigmaa"):
        Distortion.from_dict({"kind": "elastic", "sigmaa": 3})
    with pytest.raises(ValueError, match="mapping"):
        Distortion.from_dict(["elastic"])


def test_distorter_refuses_bad_seeds_keys_and_images(backend):
    with pytest.raises(ValueError, match="seed"):
        Distorter(Distortion("affine"), backend, seed=-1)
    with pytest.raises(ValueError, match="dtype"):
        Distorter(Distortion("affine"), backend, seed=0, dtype="float16")
    distort = Distorter(Distortion("affine"), backend, seed=0)
    X = backend.asarray(digits(2), "float32")
    with pytest.raises(ValueError, match="key"):
        distort(X, (0, -1))
    with pytest.raises(ValueError, match=r"\(n, 784\)"):
        distort(backend.asarray(np.zeros((2, 28, 28)), "float32"), (0,))
    with pytest.raises(ValueError, match="float32"):
        distort(backend.asarray(digits(2), "float64"), (0,))


# --- the host pieces --------------------------------------------------------------------------

def test_gaussian_matrix_by_hand():
    G = A.gaussian_matrix(1.0)  # radius round(4 sigma) = 4
    total = 1 + 2 * sum(math.exp(-k * k / 2) for k in (1, 2, 3, 4))  # 2.50662..., ~ sqrt(2 pi)
    assert G.shape == (S, S)
    assert G[10, 10] == pytest.approx(1 / total, rel=1e-15)
    assert G[10, 13] == pytest.approx(math.exp(-4.5) / total, rel=1e-14)
    assert G[10, 14] == pytest.approx(math.exp(-8) / total, rel=1e-14)
    assert G[10, 15] == 0 and G[0, 5] == 0
    np.testing.assert_array_equal(G, G.T)
    # rows far from the edge sum to 1; at the edge the kernel reaches the zeros outside
    assert G[10].sum() == pytest.approx(1, rel=1e-15)
    assert G[0].sum() == pytest.approx((1 + total) / 2 / total, rel=1e-15)


@pytest.mark.parametrize("sigma", [0.7, 2.0, 4.0, 6.5])
def test_gaussian_matrix_is_scipys_gaussian_filter(sigma):
    ndimage = scipy_ndimage()
    U = np.random.default_rng(1).uniform(-1, 1, (3, S, S))
    G = A.gaussian_matrix(sigma)
    expected = ndimage.gaussian_filter(U, sigma, mode="constant", cval=0.0, axes=(1, 2))
    np.testing.assert_allclose(G @ U @ G.T, expected, rtol=0, atol=1e-14)


def test_affine_matrices_exact_identity_shift_and_rotation():
    M = A.affine_matrices(np.zeros(2), np.ones(2), np.zeros(2), np.array([0.0, 3.0]),
                          np.array([0.0, -2.0]))
    np.testing.assert_array_equal(M[0], [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(M[1], [[1, 0, -3], [0, 1, 2]])
    # 90 degrees counter-clockwise: the output reads the input at (c, 27 - r), as np.rot90
    M = A.affine_matrices(np.array([90.0]), np.ones(1), np.zeros(1), np.zeros(1), np.zeros(1))
    np.testing.assert_allclose(M[0], [[0, 1, 0], [-1, 0, 27]], atol=1e-14)
    # scale 2 about the centre: the output reads half as far from it; a slant k = 0.5 reads
    # columns shifted by -k (r - 13.5)
    M = A.affine_matrices(np.zeros(2), np.array([2.0, 1.0]), np.array([0.0, 0.5]),
                          np.zeros(2), np.zeros(2))
    np.testing.assert_allclose(M[0], [[0.5, 0, 6.75], [0, 0.5, 6.75]], atol=1e-15)
    np.testing.assert_allclose(M[1], [[1, 0, 0], [-0.5, 1, 6.75]], atol=1e-15)


def test_draws_stay_in_their_ranges():
    d = Distortion("affine+elastic", rotate=10, scale=0.2, shear=0.25, shift=3)
    distort = Distorter(d, "numpy", seed=4)
    M, U = distort.draw(5000, (1, 2))
    assert M.shape == (5000, 2, 3) and M.dtype == np.float64
    assert U.shape == (10000, S, S) and U.dtype == np.float32
    assert U.min() >= -1 and U.max() < 1 and abs(U.mean()) < 1e-3
    # A^-1 = (1/s) K^-1 R^-1 has determinant 1 / s^2
    scale = 1 / np.sqrt(np.linalg.det(M[:, :, :2]))
    assert 0.8 <= scale.min() < 0.81 and 1.19 < scale.max() <= 1.2
    # the centre (13.5, 13.5) is read from c0 + A^-1 (c0 - c0 - t) = c0 - A^-1 t
    centre = np.array([13.5, 13.5])
    t = np.linalg.solve(M[:, :, :2], (centre - M[:, :, :2] @ centre - M[:, :, 2])[..., None])
    assert np.abs(t).max() <= 3 and np.abs(t).max() > 2.99
    # the same key draws the same numbers: default_rng([seed, 2, *key])
    rng = np.random.default_rng([4, 2, 1, 2])
    np.testing.assert_array_equal(M, A.draw_affine(rng, 5000, d))
    np.testing.assert_array_equal(U, A.draw_fields(rng, 5000))


def test_elastic_displacements_have_the_documented_size():
    """alpha G U G^T with U uniform in [-1, 1]: standard deviation alpha/sqrt(3) |G_r| |G_c| at
    pixel (r, c); about 1.4 pixels at the centre for Simard's alpha = 34, sigma = 4."""
    G = A.gaussian_matrix(4.0)
    U = A.draw_fields(np.random.default_rng(0), 2000).astype(np.float64)
    D = A.elastic_displacements(U, G, 34.0)
    norms = np.linalg.norm(G, axis=1)
    theory = 34.0 / math.sqrt(3) * norms[:, None] * norms[None, :]
    assert theory[14, 14] == pytest.approx(1.38, abs=0.01)
    np.testing.assert_allclose(D.std(axis=0)[4:24, 4:24], theory[4:24, 4:24], rtol=0.1)
    assert D[:, 14, 14].std() == pytest.approx(theory[14, 14], rel=0.06)


# --- the backend pieces -----------------------------------------------------------------------

def test_bilinear_at_whole_pixels_is_exact(backend):
    images = np.random.default_rng(2).random((3, S, S))
    rows, cols = grid(backend, 3)
    out = A.bilinear_sample(backend.asarray(images, "float64"), rows, cols)
    np.testing.assert_array_equal(backend.to_numpy(out), images)


def test_whole_pixel_translation_is_a_shift(backend):
    images = digits(3, seed=1).reshape(3, S, S)
    shifts = [(2, -1), (-3, 0), (0, 5)]
    M = A.affine_matrices(np.zeros(3), np.ones(3), np.zeros(3),
                          np.array([s[0] for s in shifts], float),
                          np.array([s[1] for s in shifts], float))
    rows, cols = A.affine_coordinates(backend.asarray(M, "float32"),
                                      backend.asarray(A.pixel_coordinates(), "float32"))
    out = backend.to_numpy(A.bilinear_sample(backend.asarray(images), rows, cols))
    for i, (dr, dc) in enumerate(shifts):
        np.testing.assert_array_equal(out[i], shifted(images[i], dr, dc))


def test_rotation_by_90_degrees_is_rot90(backend):
    images = np.random.default_rng(3).random((2, S, S))
    M = A.affine_matrices(np.array([90.0, -90.0]), np.ones(2), np.zeros(2), np.zeros(2),
                          np.zeros(2))
    rows, cols = A.affine_coordinates(backend.asarray(M, "float64"),
                                      backend.asarray(A.pixel_coordinates(), "float64"))
    out = backend.to_numpy(A.bilinear_sample(backend.asarray(images, "float64"), rows, cols))
    np.testing.assert_allclose(out[0], np.rot90(images[0]), atol=1e-12)
    np.testing.assert_allclose(out[1], np.rot90(images[1], -1), atol=1e-12)


def test_bilinear_equals_scipy_map_coordinates(backend):
    ndimage = scipy_ndimage()
    rng = np.random.default_rng(4)
    images = rng.random((3, S, S))
    # real points all over the image and up to 3 pixels beyond it; whole pixels and edges too
    rows = rng.uniform(-3, S + 2, (3, 9, 11))
    cols = rng.uniform(-3, S + 2, (3, 9, 11))
    rows[0, 0, :6], cols[0, 0, :6] = [0, 27, -1, 28, -0.5, 27.5], [0, 27, 5, 5, 27, 27.5]
    out = backend.to_numpy(A.bilinear_sample(*(backend.asarray(a, "float64")
                                                for a in (images, rows, cols))))
    assert out.shape == (3, 9, 11)
    for i in range(3):
        expected = ndimage.map_coordinates(images[i], [rows[i], cols[i]], order=1,
                                           mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(out[i], expected, rtol=0, atol=1e-13)
        # inside [0, 27] x [0, 27] SciPy's plain 'constant' mode agrees; outside it reads 0
        # even half a pixel from the edge, where zero padding reads half the edge pixel
        inside = (rows[i] >= 0) & (rows[i] <= S - 1) & (cols[i] >= 0) & (cols[i] <= S - 1)
        plain = ndimage.map_coordinates(images[i], [rows[i], cols[i]], order=1, mode="constant",
                                        cval=0.0)
        np.testing.assert_allclose(out[i][inside], plain[inside], rtol=0, atol=1e-13)
    assert out[0, 0, 2] == 0 and out[0, 0, 3] == 0  # a whole pixel outside
    assert out[0, 0, 4] == pytest.approx(images[0, 0, 27] / 2, rel=1e-13)
    assert out[0, 0, 5] == pytest.approx(images[0, 27, 27] / 4, rel=1e-13)  # a corner


def test_elastic_displacements_equal_gaussian_filter(backend):
    ndimage = scipy_ndimage()
    U = np.random.default_rng(5).uniform(-1, 1, (4, S, S))
    G = backend.asarray(A.gaussian_matrix(3.0), "float64")
    out = backend.to_numpy(A.elastic_displacements(backend.asarray(U, "float64"), G, 7.0))
    expected = 7.0 * ndimage.gaussian_filter(U, 3.0, mode="constant", cval=0.0, axes=(1, 2))
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-13)
    zero = backend.to_numpy(A.elastic_displacements(backend.asarray(U, "float64"), G, 0.0))
    np.testing.assert_array_equal(zero, np.zeros_like(U))


# --- the Distorter ----------------------------------------------------------------------------

IDENTITIES = [
    Distortion("affine", rotate=0, scale=0, shear=0, shift=0),
    Distortion("elastic", alpha=0),
    Distortion("affine+elastic", rotate=0, scale=0, shear=0, shift=0, alpha=0),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_identity_distortions_give_the_input_exactly(backend, dtype):
    X = digits(6)
    for d in IDENTITIES:
        out = Distorter(d, backend, seed=1, dtype=dtype)(backend.asarray(X, dtype), (0, 0))
        np.testing.assert_array_equal(backend.to_numpy(out), X.astype(dtype), err_msg=d.kind)
    X_b = backend.asarray(X)
    assert Distorter(Distortion("none"), backend, seed=1)(X_b, (3,)) is X_b


def test_an_empty_chunk_is_no_work(backend):
    empty = backend.asarray(np.zeros((0, S * S), np.float32))
    assert tuple(Distorter(Distortion("affine+elastic"), backend, 0)(empty, (0,)).shape) == \
        (0, S * S)
    none = backend.asarray(np.zeros((0, S, S)))
    assert tuple(A.bilinear_sample(none, none, none).shape) == (0, S, S)


def oracle(distort: Distorter, X: np.ndarray, key) -> np.ndarray:
    """The distortion computed another way: the Distorter's host draws, then the coordinates in
    float64 NumPy from the formulas, SciPy's gaussian_filter and map_coordinates."""
    ndimage = scipy_ndimage()
    n, d = len(X), distort.distortion
    M, U = distort.draw(n, key)
    r, c = np.meshgrid(A.pixel_coordinates(), A.pixel_coordinates(), indexing="ij")
    rows, cols = np.broadcast_to(r, (n, S, S)), np.broadcast_to(c, (n, S, S))
    if M is not None:
        rows = M[:, 0, 0, None, None] * r + M[:, 0, 1, None, None] * c + M[:, 0, 2, None, None]
        cols = M[:, 1, 0, None, None] * r + M[:, 1, 1, None, None] * c + M[:, 1, 2, None, None]
    if U is not None:
        smooth = ndimage.gaussian_filter(U.astype(np.float64), d.sigma, mode="constant",
                                         axes=(1, 2))
        rows, cols = rows + d.alpha * smooth[:n], cols + d.alpha * smooth[n:]
    images = X.reshape(n, S, S).astype(np.float64)
    return np.stack([ndimage.map_coordinates(images[i], [rows[i], cols[i]], order=1,
                                             mode="grid-constant", cval=0.0)
                     for i in range(n)]).reshape(n, S * S)


@pytest.mark.parametrize("kind", ["affine", "elastic", "affine+elastic"])
def test_distorter_follows_the_formulas(backend, kind):
    X = digits(5, seed=2)
    distort = Distorter(Distortion(kind), backend, seed=7, dtype="float64")
    out = backend.to_numpy(distort(backend.asarray(X, "float64"), (2, 1024)))
    np.testing.assert_allclose(out, oracle(distort, X, (2, 1024)), rtol=0, atol=1e-12)
    assert np.abs(out - X).mean() > 0.01  # it did distort
    assert out.min() >= 0 and out.max() <= 1 + 1e-15  # a convex mix of pixels in [0, 1]


@pytest.mark.parametrize("kind", ["affine", "elastic", "affine+elastic"])
def test_every_backend_equals_numpy(backend, kind):
    X = digits(16, seed=3)
    numpy = get_backend("numpy")
    for dtype, atol in (("float32", 2e-5), ("float64", 1e-12)):
        here = Distorter(Distortion(kind), backend, seed=11, dtype=dtype)
        there = Distorter(Distortion(kind), numpy, seed=11, dtype=dtype)
        out = backend.to_numpy(here(backend.asarray(X, dtype), (5, 64)))
        assert out.dtype == np.dtype(dtype) and out.shape == (16, S * S)
        np.testing.assert_allclose(out, there(X.astype(dtype), (5, 64)), rtol=0, atol=atol)


def test_same_key_same_output_other_keys_differ_input_untouched(backend):
    X = digits(8, seed=4)
    X_b = backend.asarray(X)
    d = Distortion("affine+elastic")
    first = Distorter(d, backend, seed=3)
    out = backend.to_numpy(first(X_b, (1, 0)))
    np.testing.assert_array_equal(backend.to_numpy(first(X_b, (1, 0))), out)
    np.testing.assert_array_equal(backend.to_numpy(Distorter(d, backend, seed=3)(X_b, (1, 0))),
                                  out)
    for other in (first(X_b, (1, 8)), first(X_b, (2, 0)), Distorter(d, backend, 4)(X_b, (1, 0))):
        assert np.abs(backend.to_numpy(other) - out).max() > 0.1
    np.testing.assert_array_equal(backend.to_numpy(X_b), X)
    # a chunk of two images is not the first two of a chunk of eight: keys name whole chunks
    assert backend.to_numpy(first(backend.asarray(X[:2]), (1, 0))).shape == (2, S * S)


def test_float32_and_float64_draw_the_same_distortions(backend):
    X = digits(4, seed=5)
    d = Distortion("affine+elastic")
    single = backend.to_numpy(Distorter(d, backend, 2, "float32")(backend.asarray(X), (0,)))
    double = backend.to_numpy(Distorter(d, backend, 2, "float64")(
        backend.asarray(X, "float64"), (0,)))
    np.testing.assert_allclose(single, double, rtol=0, atol=2e-5)


@pytest.mark.parametrize("kind", ["affine", "elastic", "affine+elastic"])
def test_a_chunk_distorted_in_pieces_equals_one_call(backend, kind):
    """On an eager CPU library a chunk is distorted CPU_PIECE_ROWS images at a time, each piece
    taking its own images' draws: the result is the one call's, image by image."""
    X = backend.asarray(digits(21, seed=6))
    whole = Distorter(Distortion(kind), backend, seed=5)
    whole._piece_rows = None
    pieces = Distorter(Distortion(kind), backend, seed=5)
    pieces._piece_rows = 8                       # 8 + 8 + 5: a short last piece too
    # bit for bit where pieces are used; a compiler (never given pieces) compiles each shape
    # its own way, so there they agree to float32 rounding only
    atol = 2e-6 if backend.compiles else 0
    np.testing.assert_allclose(backend.to_numpy(pieces(X, (3, 0))),
                               backend.to_numpy(whole(X, (3, 0))), rtol=0, atol=atol)


def test_pieces_only_where_an_eager_library_computes_on_the_cpu(backend):
    pieces = Distorter(Distortion("affine"), backend, seed=0)._piece_rows
    expected = A.CPU_PIECE_ROWS if backend.on_cpu and not backend.compiles else None
    assert pieces == expected
    if backend.name == "numpy":
        assert backend.on_cpu and pieces == A.CPU_PIECE_ROWS
    if backend.name == "jax":
        assert pieces is None                    # jax.jit fuses the passes
    if backend.name in ("torch", "cupy"):
        assert backend.on_cpu == (backend.device_name == "cpu")


@pytest.mark.parametrize("n", [5, 2 ** 20 + 1])
def test_bilinear_indices_exact_on_both_roads(backend, n):
    """The gather's flat indices are computed in float32 while the float holds them exactly
    (n (h+3)(w+3) <= 2^24), in int64 beyond: 2^20 + 1 one-pixel images (16 padded pixels
    each) take the int64 road. A pixel read at (r, c) in [-1, 1]^2 of a 1 x 1 image is
    pixel (1 - |r|) (1 - |c|): its neighbours are the zero border."""
    rng = np.random.default_rng(n)
    pixel = rng.random((n, 1, 1), dtype=np.float32)
    r, c = (rng.uniform(-1, 1, (n, 1, 1)).astype(np.float32) for _ in range(2))
    out = A.bilinear_sample(backend.asarray(pixel), backend.asarray(r), backend.asarray(c))
    expected = pixel * (1 - np.abs(r)) * (1 - np.abs(c))
    np.testing.assert_allclose(backend.to_numpy(out), expected, rtol=0, atol=1e-6)
