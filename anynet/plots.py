"""Figures for teachers and users: hidden-unit weights, training curves, a confusion matrix,
distorted digits.

`anynet plot weights`, `anynet plot curves`, `anynet plot augment` and `anynet evaluate --plot`
draw with these. Each function takes plain NumPy data (no network, no backend) and writes one
image file, whose format follows the suffix: .png, .svg or .pdf. The figure is rendered to bytes
in memory and then written with `anynet.fileio.atomic_write_bytes`, so a plot file is either
complete or absent.

matplotlib is the optional `plot` extra. It is imported inside the functions, never at import
time, and used without pyplot: a bare `matplotlib.figure.Figure` drawn by the Agg canvas, so no
window opens, no global backend is switched and nothing leaks between calls (safe in a notebook
or a test). Without matplotlib, a MissingExtraError says which extra to install.

Shapes: W1 is (D, H) with D = 784 = 28 * 28 inputs and H hidden units; a confusion matrix is
(K, K) with K = 10, rows the true class and columns the predicted one.

Not for: interactive display (open the file), or plotting anything while training runs.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeGuard

import numpy as np

from anynet.errors import MissingExtraError, UserError
from anynet.fileio import atomic_write_bytes

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
METRICS_FORMAT = "anynet-metrics"
METRICS_VERSION = 1
_DPI = 120


def figure_format(path: str | os.PathLike) -> str:
    """The matplotlib format for `path` from its suffix; UserError unless .png, .svg or .pdf.

    Commands call this before any slow work, so a wrong --out fails at once.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: a plot file must end in .png, .svg or .pdf, "
                        f"not {suffix or 'no suffix'!r}")
    return FORMATS[suffix]


def _new_figure(**kwargs):
    """A fresh matplotlib Figure on the Agg canvas (no pyplot, no window, no global state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError("matplotlib", "plot", "Plotting") from None
    figure = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | os.PathLike) -> None:
    """Render `figure` to bytes in the format its suffix names, then write them atomically."""
    fmt = figure_format(path)
    buffer = io.BytesIO()
    # The same figure gives the same bytes: fixed metadata (no creation date in PDF or SVG) and a
    # fixed salt for SVG's element ids, which are random otherwise.
    metadata = {"png": {"Software": "anynet"}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "anynet"}):
        figure.savefig(buffer, format=fmt, dpi=_DPI, metadata=metadata[fmt])
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as e:
        raise UserError(f"{path}: cannot write the plot ({e.strerror or e})") from None


# ----------------------------------------------------------------------------- weights


# The most small pictures one plot draws (hidden units, wrong test images): each is a matplotlib
# axes of its own, and their cost grows faster than their number (100 units: 4 s, 400: 18 s,
# 2,000: 277 s and 670 MB), so a model of 100,000 units would never finish.
MAX_DRAWN = 100


def plot_weights(W1: np.ndarray, path: str | os.PathLike, *, max_units: int | None = None) -> None:
    """Draw each hidden unit's input weights W1[:, j] (D,) as a square image, in a grid.

    W1: (D, H) with D a square number of pixels (784 for MNIST). One shared, symmetric colour
    scale: red where ink excites the unit, blue where it inhibits, white for zero, so the units
    can be compared with each other. `max_units` shows only the first that many units; at most
    MAX_DRAWN are drawn (the first MAX_DRAWN when `max_units` is None).
    """
    W1 = np.asarray(W1, dtype=np.float64)
    if W1.ndim != 2:
        raise UserError(f"first-layer weights must be a (784, H) matrix, got shape {W1.shape}")
    n_in, n_hidden = W1.shape
    side = math.isqrt(n_in)
    if side * side != n_in or n_hidden == 0:
        raise UserError(f"cannot draw first-layer weights of shape {W1.shape} as images: "
                        "expected (D, H) with D a square number of pixels (784 = 28x28 for MNIST)")
    if max_units is not None and not 1 <= max_units <= MAX_DRAWN:
        raise UserError(f"max_units must be at least 1 and at most {MAX_DRAWN}, got {max_units}")
    shown = min(n_hidden, MAX_DRAWN if max_units is None else max_units)
    weights = W1[:, :shown]
    finite = np.abs(weights[np.isfinite(weights)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0

    cols = math.ceil(math.sqrt(shown))
    rows = math.ceil(shown / cols)
    # Inches per unit: large grids shrink to stay printable, small ones grow so the titles fit.
    cell = min(2.0, max(6.0 / cols, min(1.1, 16.0 / cols)))
    figure = _new_figure(figsize=(max(4.8, cols * cell + 1.6), rows * cell + 1.0))
    axes = np.atleast_1d(figure.subplots(rows, cols, squeeze=False)).ravel()
    for unit, ax in enumerate(axes):
        ax.set_axis_off()
        if unit >= shown:
            continue
        picture = ax.imshow(weights[:, unit].reshape(side, side), cmap="RdBu_r", vmin=-limit,
                            vmax=limit, interpolation="nearest")
        if shown <= 100:
            ax.set_title(f"unit {unit}", fontsize=7, pad=2)
    figure.colorbar(picture, ax=axes.tolist(), shrink=0.9 if rows < 4 else 0.6,
                    label="weight from pixel\nred: ink excites, blue: inhibits")
    if shown == n_hidden:
        which = f"all {n_hidden} hidden units" if n_hidden > 1 else "the hidden unit"
    else:
        which = f"the first {shown} of {n_hidden} hidden units"
    figure.suptitle(f"Input weights of {which},\neach as a {side}x{side} image", fontsize=11)
    _save(figure, path)


# ----------------------------------------------------------------------------- curves


def check_metrics(metrics: object, *, source: str = "metrics") -> dict:
    """Return `metrics` if it is an anynet metrics document; else UserError naming `source`.

    The document `anynet train --metrics` writes: {"format": "anynet-metrics", "version": 1,
    "config": {...}, "epochs": [{"epoch": 1, "train_loss": ..., "val_loss": ...,
    "val_accuracy": ..., ...}, ...], "test_loss": ..., "test_accuracy": ...}, with accuracies as
    fractions in [0, 1] and null where a figure was not measured.
    """
    if not isinstance(metrics, Mapping) or metrics.get("format") != METRICS_FORMAT:
        raise UserError(f"{source}: not an anynet metrics file (expected \"format\": "
                        f"\"{METRICS_FORMAT}\"; write one with anynet train --metrics FILE.json)")
    if metrics.get("version") != METRICS_VERSION:
        raise UserError(f"{source}: metrics format version {metrics.get('version')!r} is not "
                        f"supported (this anynet reads version {METRICS_VERSION})")
    epochs = metrics.get("epochs")
    if not isinstance(epochs, list) or not epochs:
        raise UserError(f"{source}: the metrics file has no epochs to plot")
    for i, row in enumerate(epochs):
        if not isinstance(row, Mapping) or not _is_number(row.get("epoch")):
            raise UserError(f"{source}: epoch entry {i} has no \"epoch\" number")
        for key, value in row.items():
            if key != "epoch" and value is not None and not _is_number(value):
                if key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
                    raise UserError(f"{source}: epoch entry {i}: {key} must be a number or "
                                    f"null, not {value!r}")
    for key in ("test_loss", "test_accuracy"):
        value = metrics.get(key)
        if value is not None and not _is_number(value):
            raise UserError(f"{source}: {key} must be a number or null, not {value!r}")
    return dict(metrics)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _series(epochs: list, key: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(epoch numbers, values) where `key` holds a finite number; nulls and NaN are skipped."""
    points = [(row["epoch"], row[key] * scale) for row in epochs
              if _is_number(row.get(key)) and math.isfinite(row[key])]
    if not points:
        return np.zeros(0), np.zeros(0)
    x, y = zip(*points, strict=True)
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)


def plot_curves(metrics: dict, path: str | os.PathLike) -> None:
    """Draw training curves: train/val loss on the left, accuracy (%) on the right.

    `metrics` is the document `anynet train --metrics` writes (see `check_metrics`). The test
    accuracy, when recorded, is a dashed line across the accuracy plot.
    """
    metrics = check_metrics(metrics)
    epochs = metrics["epochs"]
    figure = _new_figure(figsize=(10, 4.2))
    ax_loss, ax_acc = figure.subplots(1, 2)

    for key, label, style in (("train_loss", "train", "o-"), ("val_loss", "validation", "s-")):
        x, y = _series(epochs, key)
        if x.size:
            ax_loss.plot(x, y, style, markersize=3, label=label)
    test_loss = metrics.get("test_loss")
    if _is_number(test_loss) and math.isfinite(test_loss):
        ax_loss.axhline(test_loss, color="grey", linestyle="--", label=f"test ({test_loss:.3f})")
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="mean cross-entropy")

    accuracies = (("train_accuracy", "train", "o-"), ("val_accuracy", "validation", "s-"))
    for key, label, style in accuracies:
        x, y = _series(epochs, key, scale=100.0)
        if x.size:
            ax_acc.plot(x, y, style, markersize=3, label=f"{label} (last {y[-1]:.2f}%)")
    test_accuracy = metrics.get("test_accuracy")
    if _is_number(test_accuracy) and math.isfinite(test_accuracy):
        ax_acc.axhline(100 * test_accuracy, color="grey", linestyle="--",
                       label=f"test ({100 * test_accuracy:.2f}%)")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")

    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "nothing recorded", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
    figure.suptitle(_curves_title(metrics))
    _save(figure, path)


def _curves_title(metrics: Mapping) -> str:
    """'Training curves' and the run's scalar settings, wrapped to two lines at most."""
    config = metrics.get("config")
    settings = []
    if isinstance(config, Mapping):
        settings = [
            f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
            for key, value in config.items()
            if isinstance(value, (str, int, float)) and not isinstance(value, bool)
        ]
    if not settings:
        return "Training curves"
    import textwrap

    # about 90 characters fit across the figure at the title's size
    return "\n".join(textwrap.wrap("Training curves: " + ", ".join(settings), 90)[:2])


# ----------------------------------------------------------------------------- confusion


def plot_confusion(
    confusion: np.ndarray,
    path: str | os.PathLike,
    *,
    wrong: Sequence[Mapping] | None = None,
) -> None:
    """Draw a confusion matrix, and below it the most confidently wrong test images.

    confusion: (K, K) non-negative integer counts, confusion[true, predicted]. Cells are coloured
    on a log scale (the diagonal holds hundreds, the mistakes a handful) and labelled with
    their counts. `wrong`: dicts {"image": uint8 (784,), "label": int, "predicted": int,
    "probability": float}, shown in the given order, each titled "true 4 -> 9 (0.99)".
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.size == 0:
        raise ValueError(f"a confusion matrix must be square (K, K), got {confusion.shape}")
    if not np.issubdtype(confusion.dtype, np.integer) or (confusion < 0).any():
        raise ValueError("a confusion matrix must hold non-negative integer counts")
    wrong = list(wrong or [])
    if len(wrong) > MAX_DRAWN:
        raise UserError(f"at most {MAX_DRAWN} wrong images can be drawn, got {len(wrong)}")
    for i, item in enumerate(wrong):
        missing = {"image", "label", "predicted", "probability"} - set(item)
        if missing:
            raise ValueError(f"wrong[{i}] lacks {sorted(missing)}")
    try:
        from matplotlib.colors import LogNorm
    except ImportError:
        raise MissingExtraError("matplotlib", "plot", "Plotting") from None

    strip_rows = math.ceil(len(wrong) / _PER_ROW)
    figure = _new_figure(figsize=(7.5, 6.5 + 1.6 * strip_rows))
    if strip_rows:
        top, bottom = figure.subfigures(2, 1, height_ratios=[6.5, 1.6 * strip_rows])
        _draw_wrong(bottom, wrong, strip_rows)
    else:
        top = figure
    _draw_matrix(top, confusion, LogNorm)
    _save(figure, path)


_PER_ROW = 10  # wrong images per row under the confusion matrix


def _draw_matrix(top, confusion: np.ndarray, LogNorm) -> None:
    """The (K, K) counts on `top`, on a log colour scale, each cell labelled with its count."""
    n_classes = confusion.shape[0]
    ax = top.subplots()
    total = int(confusion.sum())
    correct = int(np.trace(confusion))
    counts = np.ma.masked_equal(confusion, 0)  # zeros stay white: log(0) has no colour
    high = max(1, int(confusion.max()))
    picture = ax.imshow(counts, cmap="Blues", norm=LogNorm(vmin=1, vmax=high),
                        interpolation="nearest")
    for t in range(n_classes):
        for p in range(n_classes):
            count = int(confusion[t, p])
            if count == 0:
                continue
            dark = math.log(count) > 0.6 * math.log(high) if high > 1 else False
            ax.text(p, t, str(count), ha="center", va="center", fontsize=7 if count < 1000 else 6,
                    color="white" if dark else "black")
    ax.set_xticks(range(n_classes))
    ax.set_yticks(range(n_classes))
    ax.set(xlabel="predicted class", ylabel="true class")
    accuracy = f" ({100 * correct / total:.2f}%)" if total else ""
    ax.set_title(f"Confusion matrix: {correct:,} of {total:,} right{accuracy}")
    top.colorbar(picture, ax=ax, label="images (log scale)", shrink=0.85)


def _draw_wrong(bottom, wrong: list[Mapping], strip_rows: int) -> None:
    """The wrong images (dicts as `plot_confusion` takes) on `bottom`, `_PER_ROW` a row."""
    cells = np.atleast_1d(bottom.subplots(strip_rows, _PER_ROW, squeeze=False)).ravel()
    for cell in cells:
        cell.set_axis_off()
    for cell, item in zip(cells, wrong, strict=False):
        image = np.asarray(item["image"])
        side = math.isqrt(image.size)
        cell.imshow(image.reshape(side, side), cmap="gray_r", vmin=0, vmax=255,
                    interpolation="nearest")
        # Two lines, so ten titles fit side by side.
        cell.set_title(f"true {int(item['label'])} -> {int(item['predicted'])}\n"
                       f"({float(item['probability']):.2f})", fontsize=7, pad=2)
    bottom.suptitle("Most confidently wrong: true class -> predicted (probability)", fontsize=9)


# ----------------------------------------------------------------------------- sweeps

_SWEEP_LINES = 8  # lines per panel at most: more are unreadable; the best ones are kept


def plot_sweep(records: Sequence[Mapping], path: str | os.PathLike) -> None:
    """Draw a sweep's test accuracy (%) against each swept option, with error bars over seeds.

    `records` are the lines of a sweep's results.jsonl (`anynet.sweep`). One panel per swept
    option (the seed aside): its values along x (a log scale for rates spanning 10x or more), one
    line for each setting of the other swept options (the best _SWEEP_LINES of them), each point
    the mean over seeds with a bar of one sample standard deviation.
    """
    from anynet.sweep import option_name, summarize

    rows, _ = summarize(records)
    rows = [row for row in rows if row.ok]
    names = list(rows[0].settings) if rows else []
    figure = _new_figure(figsize=(5.2 * max(len(names), 1), 4.2))
    axes = np.atleast_1d(figure.subplots(1, max(len(names), 1))).ravel()
    if not names:
        ax = axes[0]
        text = "no finished runs" if not rows else "nothing swept but the seed"
        row = rows[0] if rows else None
        if row is not None and row.test_mean is not None:
            text = f"test accuracy {100 * row.test_mean:.2f}% over {row.ok} seeds"
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    for ax, name in zip(axes, names, strict=False):
        others = [n for n in names if n != name]
        lines: dict[tuple, list] = {}
        for row in rows:  # best first, so the first lines made are the best
            lines.setdefault(tuple(row.settings[n] for n in others), []).append(row)
        numeric = all(isinstance(r.settings[name], (int, float))
                      and not isinstance(r.settings[name], bool) for r in rows)
        values = sorted({r.settings[name] for r in rows}, key=lambda v: (str(type(v)), v))
        for key, members in list(lines.items())[:_SWEEP_LINES]:
            members = sorted(members, key=lambda r: values.index(r.settings[name]))
            x = [r.settings[name] if numeric else values.index(r.settings[name])
                 for r in members]
            y = [100 * r.test_mean for r in members]
            err = [100 * (r.test_std or 0.0) for r in members]
            label = ", ".join(f"{option_name(n).lstrip('-')} {v:g}" if isinstance(v, float)
                              else f"{option_name(n).lstrip('-')} {v}"
                              for n, v in zip(others, key, strict=True)) or "mean over seeds"
            ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, markersize=4, label=label)
        if numeric and min(values) > 0 and max(values) >= 10 * min(values):
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(values)), [str(v) for v in values])
        shown = f" (best {_SWEEP_LINES} of {len(lines)})" if len(lines) > _SWEEP_LINES else ""
        ax.set(xlabel=option_name(name).lstrip("-"), ylabel="test accuracy (%)",
               title=f"by {option_name(name).lstrip('-')}{shown}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    seeds = max((row.ok for row in rows), default=0)
    figure.suptitle(f"Sweep: test accuracy, mean ± sample std over up to {seeds} seeds")
    _save(figure, path)


# ----------------------------------------------------------------------------- distortions


def plot_distortions(
    originals: np.ndarray,
    distorted: np.ndarray,
    path: str | os.PathLike,
    *,
    labels: Sequence[int] | np.ndarray | None = None,
    title: str = "",
) -> None:
    """Draw rows of digits, each followed by several distortions of it.

    originals: (R, D) pixels in [0, 1], D a square (784); distorted: (R, C, D), C distortions of
    each. Row i shows originals[i], then distorted[i, 0], ..., distorted[i, C - 1], ink dark on
    white; `labels` (R,) titles the first column with each digit's class. `title` goes on top.
    """
    originals = np.asarray(originals, dtype=np.float64)
    distorted = np.asarray(distorted, dtype=np.float64)
    if originals.ndim != 2 or distorted.ndim != 3 or distorted.shape[0] != originals.shape[0] \
            or distorted.shape[2] != originals.shape[1] or originals.shape[0] == 0:
        raise ValueError(f"want originals (R, D) and distorted (R, C, D), got {originals.shape} "
                         f"and {distorted.shape}")
    side = math.isqrt(originals.shape[1])
    if side * side != originals.shape[1]:
        raise ValueError(f"images of {originals.shape[1]} pixels are not square")
    n_rows, n_columns = distorted.shape[0], distorted.shape[1] + 1
    cell = 0.85
    figure = _new_figure(figsize=(max(4.0, n_columns * cell + 0.4), n_rows * cell + 0.9))
    axes = np.atleast_2d(figure.subplots(n_rows, n_columns, squeeze=False))
    for i in range(n_rows):
        for j in range(n_columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            image = originals[i] if j == 0 else distorted[i, j - 1]
            ax.imshow(image.reshape(side, side), cmap="gray_r", vmin=0, vmax=1,
                      interpolation="nearest")
            for spine in ax.spines.values():  # a frame around the original only
                spine.set_visible(j == 0)
        if labels is not None:
            axes[i, 0].set_ylabel(str(int(labels[i])), rotation=0, labelpad=8, fontsize=9,
                                  va="center")
    axes[0, 0].set_title("digit", fontsize=8, pad=3)
    for j in range(1, n_columns):
        axes[0, j].set_title(f"{j}", fontsize=8, pad=3)
    if title:
        figure.suptitle(title, fontsize=9)
    _save(figure, path)
