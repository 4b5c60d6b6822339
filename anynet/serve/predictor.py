"""One uploaded picture in, the model's answer out: what `POST /api/predict` computes.

The picture goes through exactly what `anynet predict` does to a file (anynet.images: the
pixel limit, `read_image`, `preprocess_digit`), then through `TwoLayerNet.predict_proba` on the
model's backend (for a committee, the mean of its members': anynet.committee). The body is
written to a private temporary file so that `read_image` (which checks and reads files) is
reused as it is rather than copied.

Shapes: the preprocessed picture is (784,) uint8 = one 28x28 MNIST row; the probabilities (K,).

Not for: HTTP. The server (anynet.serve.server) turns the exceptions below into status codes.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from anynet.errors import UserError

# The content types the API takes, and the first bytes each format's files start with.
CONTENT_TYPES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}
_SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg"}

# The server's own, tighter pixel limit (anynet.images.MAX_PIXELS is 40 million): a browser
# canvas is well under a million pixels, and a few requests decoding at once must not hold
# gigabytes (a picture costs ~30 bytes a pixel at the peak of reading and preprocessing).
MAX_PIXELS = 8_000_000
# Pictures decoded at once; more requests wait their turn (bounds the memory above), but no
# longer than DECODE_WAIT seconds: then they are told the server is busy (HTTP 503).
DECODE_SLOTS = 2
DECODE_WAIT = 10.0


class BadImage(UserError):
    """The body is not a picture anynet can read, or holds no digit (HTTP 400)."""


class ImageTooLarge(UserError):
    """The picture has more pixels than MAX_PIXELS (HTTP 413)."""


class UnsupportedType(UserError):
    """A content type other than CONTENT_TYPES (HTTP 415)."""


class Busy(UserError):
    """Every decode slot stayed taken for DECODE_WAIT seconds (HTTP 503)."""


class Predictor:
    """A loaded model, or a committee of models, that classifies pictures given as bytes; safe
    to call from many threads.

    `net` is a TwoLayerNet (784-H-K) on any backend, `record` its model file's JSON record,
    `path` the model file (named in `describe`); or `net` is an `anynet.committee.Committee`
    (its members' names and records with it), whose answer is the mean of its members'
    probabilities. A model that cannot classify every picture (the wrong input size, or weights
    so large that some picture's outputs overflow to nan/inf) is refused here, with a UserError:
    a server must not start only to fail each request.
    """

    def __init__(self, net: Any, record: dict | None = None,
                 path: str | os.PathLike | None = None):
        from anynet.committee import Committee
        from anynet.evaluation import may_overflow
        from anynet.images import FIELD

        committee = net if isinstance(net, Committee) else \
            Committee([net], [str(path)], [record if record is not None else {}])
        for member, name in zip(committee.members, committee.names, strict=True):
            n_in, _hidden, _classes = member.sizes
            if n_in != FIELD * FIELD:
                raise UserError(f"{name}: the model takes {n_in} inputs, but a picture becomes "
                                f"{FIELD * FIELD} ({FIELD}x{FIELD}) pixels")
            if may_overflow(member):
                raise UserError(f"{name}: the model's outputs can be non-finite (nan/inf): its "
                                f"weights are too large to compute with in {member.dtype}; "
                                "retrain it")
        self.net = committee  # one network's answers, bit for bit, when it has one member
        self.record, self.path = committee.about[0].record, Path(committee.names[0])
        self._decode = threading.BoundedSemaphore(DECODE_SLOTS)
        self._model = threading.Lock()  # not every backend promises thread-safe compute
        self._tmp = tempfile.TemporaryDirectory(prefix="anynet-serve-")

    def close(self) -> None:
        self._tmp.cleanup()

    def describe(self) -> dict:
        """What `GET /api/model` answers: the architecture, test accuracy and training run; for
        a committee, {"committee": M, "members": [each member's description], "inputs",
        "classes", "dtype", "backend"}."""
        committee = self.net
        described = [_describe(net, about.record, Path(about.name))
                     for net, about in zip(committee.members, committee.about, strict=True)]
        if len(committee) == 1:
            return described[0]
        D, _H, K = committee.sizes
        return {"committee": len(committee), "members": described, "inputs": D, "classes": K,
                "dtype": committee.dtype, "backend": committee.backend.spec}

    def predict(self, body: bytes, content_type: str) -> dict:
        """Classify the picture in `body`: {"prediction", "top" (all K classes, most probable
        first), "input" (the 28x28 image the network saw, floats in [0, 1])}.

        Raises UnsupportedType, ImageTooLarge or BadImage (each a one-line message).
        """
        from anynet.committee import rank_pictures
        from anynet.evaluation import NonFiniteOutputs
        from anynet.images import FIELD
        from anynet.preprocess import as_seen_by

        if not self._decode.acquire(timeout=DECODE_WAIT):
            raise Busy(f"the server is busy reading other pictures (waited {DECODE_WAIT:g} s); "
                       "try again in a moment")
        try:
            pixels = self.preprocess(body, content_type)  # (784,) uint8
        finally:
            self._decode.release()
        try:
            with self._model:
                (classes,), alone = rank_pictures(self.net, pixels[None, :])
        except NonFiniteOutputs:  # a bug: may_overflow, checked at start, rules this out
            raise RuntimeError("the model's outputs are not finite (nan/inf), though "
                               "may_overflow found they could not be") from None
        answer = {
            "prediction": classes[0]["class"],
            "top": classes,
            "input": (as_seen_by(self.net, pixels[None, :]).reshape(FIELD, FIELD)
                      / 255.0).round(4).tolist(),
        }
        if len(self.net) > 1:  # what each member read alone
            answer["members"] = [{"model": Path(name).name, "prediction": ranked[0][0]["class"],
                                  "probability": ranked[0][0]["probability"]}
                                 for name, ranked in zip(self.net.names, alone, strict=True)]
        return answer

    def preprocess(self, body: bytes, content_type: str) -> np.ndarray:
        """The picture in `body` as anynet predict would give it to the network: (784,) uint8."""
        from anynet.images import preprocess_digit, read_image

        if content_type not in CONTENT_TYPES:
            raise UnsupportedType(f"content type {content_type or '(none)'!r} is not accepted; "
                                  f"send {' or '.join(CONTENT_TYPES)}")
        if not body.startswith(CONTENT_TYPES[content_type]):
            raise BadImage(f"the body is not a {content_type.split('/')[1].upper()} image "
                           "(it lacks the format's signature)")
        _check_size(body)
        fd, name = tempfile.mkstemp(suffix=_SUFFIX[content_type], dir=self._tmp.name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            try:
                gray = read_image(name)
            except UserError as e:  # messages name the file: here, the upload
                raise BadImage(str(e).replace(name, "the image")) from None
        finally:
            os.unlink(name)
        try:
            return preprocess_digit(gray, source="the image")
        except UserError as e:
            raise BadImage(str(e)) from None


def _section(record: dict, key: str) -> dict:
    """The record's dict under `key`; empty where it is missing or not a dict."""
    value = record.get(key)
    return value if isinstance(value, dict) else {}


def _describe(net: Any, record: dict, path: Path) -> dict:
    """One model's description: its architecture, test accuracy and training run."""
    D, H, K = net.sizes
    metrics, config, data = (_section(record, key) for key in ("metrics", "config", "data"))
    trained = record.get("trained_at")  # not in the record of anynet 0.1's models:
    if not isinstance(trained, str):  # then the file's time (train writes it at the end)
        try:
            written = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
            trained = written.isoformat(timespec="seconds").replace("+00:00", "Z")
        except OSError:
            trained = None
    return {
        "file": path.name,
        "architecture": f"{D}-{H}-{K}",
        "inputs": D, "hidden": H, "classes": K,
        "dtype": net.dtype,
        "backend": net.backend.spec,
        "preprocessing": str(net.preprocessing),  # "none", "deslant", ... (anynet.preprocess)
        "test_accuracy": _number(metrics.get("test_accuracy")),
        "epochs": metrics.get("epochs") if type(metrics.get("epochs")) is int else None,
        "train_seconds": _number(metrics.get("train_seconds")),
        "trained_on": data.get("source") if isinstance(data.get("source"), str) else None,
        "trained_at": trained,
        "anynet_version": record.get("anynet_version"),
        "config": {k: v for k, v in config.items() if isinstance(v, (int, float, str))},
    }


def _check_size(body: bytes) -> None:
    """Refuse a picture whose header promises more than MAX_PIXELS, before it is decoded."""
    try:
        from PIL import Image
    except ImportError:
        return  # read_image says that Pillow is missing
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # judged below
            with Image.open(io.BytesIO(body)) as image:  # lazy: reads the header only
                width, height = image.size
    except Image.DecompressionBombError as e:  # over twice Pillow's own limit
        raise ImageTooLarge(f"the picture is too large ({e}); scale it down") from None
    except Exception:  # unreadable: read_image words the error
        return
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(f"the picture is {width} x {height} = {width * height:,} pixels, "
                            f"more than the {MAX_PIXELS:,} this server reads; scale it down")


def _number(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) and np.isfinite(value) else None
