"""Progress display for long work: a tqdm bar on a terminal, plain lines otherwise.

The math and the training loop never print; they report through callbacks, and the command line
turns those reports into a `Progress`. On a terminal (and with tqdm installed, the `progress`
extra) that is a live tqdm bar; in a log file or a pipe it is a plain line every few seconds,
so CI logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _use_tqdm(stream: TextIO) -> bool:
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


class Progress:
    """A progress report for `total` units of work, named `desc`.

    Use as a context manager; call `update(n)` as work is done and `set_postfix(text)` to show a
    running figure (a loss, a download speed). `unit_scale=True` shows large counts as k/M/G,
    which suits bytes.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "it",
        unit_scale: bool = False,
        stream: TextIO | None = None,
        interval: float = 5.0,
        leave: bool = False,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.n = 0
        self.postfix = ""
        self._bar = None
        self._last = time.monotonic()
        if _use_tqdm(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit=unit, unit_scale=unit_scale,
                file=self.stream, leave=leave, dynamic_ncols=True,
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line()

    def set_postfix(self, text: str) -> None:
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def _line(self) -> None:
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = f"  {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit}{pct}{extra}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class NullProgress:
    """A `Progress` that shows nothing: for work asked to be quiet."""

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass
