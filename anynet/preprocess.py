"""Preprocessing of the digits before a network sees them: deslanting and width normalization.

What it is for: better networks, and members of a committee that err differently. Meier,
Ciresan, Gambardella & Schmidhuber (2011, "Better digit recognition with a committee of simple
neural nets", ICDAR) trained each member on differently preprocessed digits (deslanted or not,
the width of every digit's bounding box normalized to 10-20 pixels or not) and averaged them.
Here deslanting alone takes 784-800-10 on affine distortions from 0.66% test error to 0.59%
(the means of three seeds, docs/tuning.md). A network trained on preprocessed digits carries
its preprocessing: the model file records it, `TwoLayerNet` applies it to every image it is
given (evaluate, predict, serve, a committee: each member its own), and training applies it
once to the training images before any distortion.

For an image I (S, S), S = 28, with ink mass m = sum I, centroid (rbar, cbar) and moments

    mu11 = (1/m) sum_rc I[r, c] (r - rbar)(c - cbar),    mu02 = (1/m) sum_rc I[r, c] (r - rbar)^2

  deslant   the slant s = mu11 / mu02 (columns the ink moves per row down; 0 for an empty
            image, clipped to +-MAX_SLANT) is undone: out[r, c] reads I at (r, c + s (r - rbar)),
            a shear that makes the digit's principal axis vertical and keeps its centroid.
  width:W   the bounding box of the ink (the rows and columns whose brightest pixel exceeds half
            the image's) spans columns c_lo..c_hi, w = c_hi - c_lo + 1, and rows likewise, h;
            unless the digit is narrow (w < NARROW h: a one, which stretching would make a bar),
            out[r, c] reads I at (r, cm + (w / W)(c - c0)), cm = (c_lo + c_hi) / 2, c0 = 13.5:
            the box stretched or squeezed to W columns, centred in the image.
  deslant+width:W   deslant, then normalize the width of the deslanted digit.

Each is an affine map per image, read bilinearly by `anynet.warp` (as the distortions are), on
the backend, with the Array API standard only. uint8 pixels come back uint8 (rounded), floats as
floats; the threshold is relative to each image's brightest pixel, so both read alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import array_namespace
from array_api_compat import device as device_of

from anynet.warp import affine_coordinates, bilinear_sample

Array = Any
SIDE = 28
CENTRE = (SIDE - 1) / 2
MAX_SLANT = 1.0    # a slant beyond 45 degrees is straightened by 45 only: no digit leans so far
NARROW = 0.4       # a box narrower than 0.4 of its height is a one: left as it is
WIDTHS = (8, 24)   # the widths W that width:W accepts (Meier et al. used 10-20)
# Images preprocessed at once. The ~30 passes over (rows, S, S) temporaries stay in L2 at 128
# rows (0.4 MB each); at 1,024 they leave it and the allocator maps and unmaps them (NumPy:
# 60,000 images, deslant and width, 2x as long). Bounds the memory of a call of any size.
PIECE_ROWS = 128
FORMS = f"none, deslant, width:W or deslant+width:W (W an integer from {WIDTHS[0]} to {WIDTHS[1]})"


@dataclass(frozen=True)
class Preprocessing:
    """What is done to every image before the network: `deslant` it, then normalize its width
    to `width` pixels (None: not). `Preprocessing()` does nothing."""

    deslant: bool = False
    width: int | None = None

    def __post_init__(self) -> None:
        if type(self.deslant) is not bool:
            raise ValueError(f"deslant must be True or False, got {self.deslant!r}")
        low, high = WIDTHS
        if self.width is not None and not (type(self.width) is int and low <= self.width <= high):
            raise ValueError(f"the width must be an integer from {low} to {high}, "
                             f"got {self.width!r}")

    @classmethod
    def parse(cls, text: Any) -> Preprocessing:
        """The preprocessing `text` names ("none", "deslant", "width:16", "deslant+width:16");
        ValueError naming the forms otherwise."""
        bad = ValueError(f"preprocessing must be one of {FORMS}, got {_shown(text)}")
        if not isinstance(text, str) or len(text) > 40:
            raise bad
        if text == "none":
            return cls()
        head, plus, tail = text.partition("+")
        if head == "deslant" and not plus:
            return cls(deslant=True)
        deslant = head == "deslant"
        kind, colon, number = (tail if deslant else "" if plus else head).partition(":")
        if kind != "width" or not colon or not number.isascii() or not number.isdigit():
            raise bad
        try:
            return cls(deslant=deslant, width=int(number))
        except ValueError as e:
            raise ValueError(f"{e} (in {text!r})") from None

    def __str__(self) -> str:
        parts = (["deslant"] if self.deslant else []) + (
            [f"width:{self.width}"] if self.width is not None else [])
        return "+".join(parts) or "none"

    @property
    def is_none(self) -> bool:
        return not self.deslant and self.width is None

    def __call__(self, images: Array) -> Array:
        """images (N, D = 784), uint8 pixels or floats, on any backend -> the preprocessed
        images, the same shape, dtype and device (uint8: rounded); PIECE_ROWS at a time."""
        if self.is_none:
            return images
        xp = array_namespace(images)
        if images.ndim != 2 or images.shape[1] != SIDE * SIDE:
            raise ValueError(f"images to preprocess must be (N, {SIDE * SIDE}), "
                             f"got {tuple(images.shape)}")
        integral = xp.isdtype(images.dtype, "integral")
        dtype = xp.float32 if integral else images.dtype
        pieces, n = [], images.shape[0]
        for start in range(0, n, PIECE_ROWS):
            piece = xp.astype(images[start:min(start + PIECE_ROWS, n), ...], dtype)
            piece = xp.reshape(piece, (-1, SIDE, SIDE))
            if self.deslant:
                piece = deslant(piece)
            if self.width is not None:
                piece = normalize_width(piece, self.width)
            piece = xp.reshape(piece, (-1, SIDE * SIDE))
            if integral:
                piece = xp.astype(xp.clip(xp.round(piece), 0, 255), images.dtype)
            pieces.append(piece)
        if len(pieces) == 1:
            return pieces[0]
        return xp.concat(pieces, axis=0) if pieces else images


def as_seen_by(model: Any, pixels: Array) -> Array:
    """`pixels` (N, D) as `model` (a `TwoLayerNet`, or a `Committee` of them) feeds them to its
    network: preprocessed where it, or every member alike, preprocesses; as they are where the
    members differ (each then sees its own). For showing what a model read."""
    kinds = {net.preprocessing for net in getattr(model, "members", [model])}
    return kinds.pop()(pixels) if len(kinds) == 1 else pixels


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _column(a: Array) -> Array:
    """(n,) -> (n, 1), to broadcast one value per image over its rows or columns."""
    return array_namespace(a).reshape(a, (-1, 1))


def _maps(xp: Any, row: tuple[Array, Array, Array], col: tuple[Array, Array, Array]) -> Array:
    """Affine maps M (n, 2, 3) from their rows' entries, each (n,)."""
    return xp.stack([xp.stack(list(row), axis=1), xp.stack(list(col), axis=1)], axis=1)


def deslant(images: Array) -> Array:
    """images (n, S, S) floats -> deslanted (n, S, S), by the module docstring's formula."""
    xp = array_namespace(images)
    pixels = xp.arange(SIDE, dtype=images.dtype, device=device_of(images))  # (S,)
    mass = xp.sum(images, axis=(1, 2))                                       # (n,)
    mass = xp.where(mass > 0, mass, xp.ones_like(mass))
    per_row = xp.sum(images, axis=2)                                         # (n, S)
    rbar = xp.sum(per_row * pixels, axis=1) / mass
    cbar = xp.sum(xp.sum(images, axis=1) * pixels, axis=1) / mass
    dr, dc = pixels - _column(rbar), pixels - _column(cbar)                  # (n, S) each
    # sum_rc I (r - rbar)(c - cbar) as sum_r (r - rbar) (I (c - cbar))_r: one batched product
    ink_dc = xp.reshape(xp.matmul(images, xp.reshape(dc, (-1, SIDE, 1))), (-1, SIDE))
    mu11 = xp.sum(dr * ink_dc, axis=1) / mass
    mu02 = xp.sum(per_row * dr * dr, axis=1) / mass
    leaning = mu02 > 0
    slant = xp.where(leaning, mu11 / xp.where(leaning, mu02, xp.ones_like(mu02)),
                     xp.zeros_like(mu02))
    # an image holding nan or inf has no slant to speak of: its points must stay finite (a
    # nan point would be a wild index in the gathers); its own pixels carry the nan on
    usable = xp.isfinite(slant) & xp.isfinite(rbar)
    slant = xp.clip(xp.where(usable, slant, xp.zeros_like(slant)), -MAX_SLANT, MAX_SLANT)
    rbar = xp.where(usable, rbar, xp.zeros_like(rbar))
    one, zero = xp.ones_like(slant), xp.zeros_like(slant)
    M = _maps(xp, (one, zero, zero), (slant, one, -slant * rbar))
    rows, cols = affine_coordinates(M, pixels)
    return bilinear_sample(images, rows, cols)


def _ink_span(xp: Any, ink: Array, pixels: Array) -> tuple[Array, Array]:
    """The first and last index (n,) where `ink` (n, S) is True: (S, -1) where it never is."""
    first = xp.min(xp.where(ink, pixels, xp.full_like(pixels, SIDE)), axis=1)
    last = xp.max(xp.where(ink, pixels, xp.full_like(pixels, -1)), axis=1)
    return first, last


def normalize_width(images: Array, width: int) -> Array:
    """images (n, S, S) floats -> (n, S, S) with each digit's bounding box `width` pixels wide
    (narrow digits and empty images unchanged), by the module docstring's formula."""
    xp = array_namespace(images)
    pixels = xp.arange(SIDE, dtype=images.dtype, device=device_of(images))  # (S,)
    brightest = xp.max(xp.reshape(images, (-1, SIDE * SIDE)), axis=1)
    half = xp.reshape(brightest / 2, (-1, 1))
    shape = (images.shape[0], SIDE)
    c_lo, c_hi = _ink_span(xp, xp.max(images, axis=1) > half, xp.broadcast_to(pixels, shape))
    r_lo, r_hi = _ink_span(xp, xp.max(images, axis=2) > half, xp.broadcast_to(pixels, shape))
    w, h = c_hi - c_lo + 1, r_hi - r_lo + 1    # <= 0 for an empty image
    keep = (w <= 0) | (w < NARROW * h)
    one, zero = xp.ones_like(w), xp.zeros_like(w)
    factor = xp.where(keep, one, w / width)
    middle = xp.where(keep, xp.full_like(w, CENTRE), (c_lo + c_hi) / 2)
    M = _maps(xp, (one, zero, zero), (zero, factor, middle - factor * CENTRE))
    rows, cols = affine_coordinates(M, pixels)
    return bilinear_sample(images, rows, cols)
