"""Atomic writes: complete or absent, never half-written; ordinary permissions. A killed writer's
temporaries are cleaned up by the next run; the lock lets one process at a time write a file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anynet.fileio import (
    LockedError,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    exclusive_lock,
    lock_path_for,
    output_problem,
    remove_stale_temporaries,
)


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f.bin", "sub", "t.txt"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as f:
        f.write(b"half of the new")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


def test_rejects_other_modes(tmp_path):
    with pytest.raises(ValueError), atomic_write(tmp_path / "f", "ab"):
        pass


CHILD_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # reaped: no process has it (until the system reuses it, rarely)


def test_temporaries_carry_the_writers_pid(tmp_path):
    with atomic_write(tmp_path / "model.npz") as f:
        (tmp,) = [p.name for p in tmp_path.iterdir()]
        f.write(b"x")
    assert tmp.startswith(f".model.npz.{os.getpid()}.") and tmp.endswith(".tmp")


def test_only_a_dead_writers_old_temporaries_are_removed(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".model.npz.{dead}.ab_c1234.tmp"
    live = tmp_path / f".model.npz.{os.getpid()}.abcd1234.tmp"
    other = tmp_path / f".cache.bin.{dead}.abcd1234.tmp"  # not one of the files named
    mine = tmp_path / ".model.npz.notapid.tmp"
    for p in (stale, live, other, mine):
        p.write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path, ["model.npz"], older_than=time.time() - 3600) == []
    assert remove_stale_temporaries(tmp_path, ["model.npz"]) == [stale]
    assert sorted(tmp_path.iterdir()) == sorted([live, other, mine])
    assert remove_stale_temporaries(tmp_path / "missing", ["model.npz"]) == []


def test_lock_is_exclusive_names_the_holder_and_goes_away(tmp_path):
    path = tmp_path / "model.npz"
    with exclusive_lock(path):
        assert lock_path_for(path) == tmp_path / ".model.npz.lock"
        assert lock_path_for(path).read_text() == f"{os.getpid()}\n"
        code = ("import sys; from anynet.fileio import exclusive_lock, LockedError\n"
                "try:\n    exclusive_lock(sys.argv[1]).__enter__()\n"
                "except LockedError as e:\n    print(e.pid)")
        other = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                               text=True, check=True, env=CHILD_ENV)
        assert other.stdout.strip() == str(os.getpid())
        with pytest.raises(LockedError), exclusive_lock(path):
            pass
    assert list(tmp_path.iterdir()) == []
    with exclusive_lock(path):  # free again
        pass


def test_a_killed_holders_lock_is_free(tmp_path):
    path = tmp_path / "model.npz"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from anynet.fileio import exclusive_lock\n"
         "with exclusive_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
         str(path)], stdout=subprocess.PIPE, text=True, env=CHILD_ENV)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(LockedError), exclusive_lock(path):
            pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert lock_path_for(path).exists()  # kill -9 left the file, but not the lock
    with exclusive_lock(path):
        pass


def test_output_problem(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    assert output_problem(tmp_path / "folder") == "is a folder, not a file"
    assert output_problem(tmp_path / "file" / "m.npz") == f"{tmp_path}/file is a file, not a folder"
    assert output_problem(tmp_path / "new" / "deeper" / "m.npz") is None
    assert output_problem(tmp_path / "m.npz") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]  # nothing made
