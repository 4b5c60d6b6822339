"""Shared checks for the hostile-input (fuzz) tests: a case must end cleanly, quickly and small.

A clean ending is exit 0, or exit 2 (3 for divergence) with exactly one line on stderr that
starts with "anynet: error:", and never a traceback. `run_cli_bounded` runs the command line in
a child process under a wall-clock limit and an address-space limit (RLIMIT_AS), so a case that
hangs or tries to allocate gigabytes fails the test instead of the machine, and reports the
child's peak resident memory (`peak_mb`, from its own /proc/self/status), for tests that bound
what a case may cost.

The fuzz tests' depth is set by hypothesis profiles, chosen with ANYNET_FUZZ (default "ci"):
    ci    a few dozen examples per property, seeded (derandomized): CI stays fast and repeatable
    deep  thousands of examples, random seeds: run by hand, `ANYNET_FUZZ=deep pytest -k fuzz`
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]
TIME_LIMIT_S = 60.0          # generous: a busy 2-core machine is slow; a hang takes forever
MEMORY_LIMIT_MB = 1536       # address space for one child (numpy alone maps ~400 MB of it)

settings.register_profile(
    "ci", max_examples=25, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "deep", max_examples=2000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("ANYNET_FUZZ", "ci"))


# The child limits its own address space before it imports anything, then runs `python -m
# anynet`. (Not a preexec_fn: that forces a fork of this process, which may hold JAX's threads,
# and a forked multithreaded process can deadlock.) At exit it writes its peak resident memory
# (VmHWM, which belongs to its own address space) to the file named second: the rusage that
# wait4 reports would count the memory of this process, which the child started as a copy of.
_BOUNDED_MAIN = """
import atexit, resource, runpy, sys
limit = int(sys.argv.pop(1)) << 20
report = sys.argv.pop(1)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

def _peak():
    with open("/proc/self/status") as f:
        kb = next((line.split()[1] for line in f if line.startswith("VmHWM:")), "")
    with open(report, "w") as f:
        f.write(kb)

atexit.register(_peak)
sys.argv[0] = "anynet"
runpy.run_module("anynet", run_name="__main__", alter_sys=True)
"""


def bounded_cli_argv(argv: list[str], memory_mb: int, report: Path) -> list[str]:
    """The command line of a child running `anynet ARGV` under a `memory_mb` address-space limit
    that writes its peak resident memory (kB) to `report` as it exits (`read_peak_mb`), for a
    test that starts the process itself (to interrupt it)."""
    return [sys.executable, "-c", _BOUNDED_MAIN, str(memory_mb), str(report), *argv]


def read_peak_mb(report: Path) -> float:
    """What a `bounded_cli_argv` child reported as its peak memory, in MB; inf where it could
    not say (killed)."""
    text = report.read_text() if report.exists() else ""
    return int(text) / 1024 if text.isdigit() else math.inf


def run_cli_bounded(argv: list[str], *, cwd: str | os.PathLike | None = None,
                    env: dict | None = None, timeout: float = TIME_LIMIT_S,
                    memory_mb: int = MEMORY_LIMIT_MB) -> subprocess.CompletedProcess:
    """Run `python -m anynet ARGV` in a child limited in time and memory; return its result,
    with `peak_mb` added: the child's peak resident memory (inf where it could not say, as
    after a kill), so a test can assert what a case really cost, not only that it stayed
    under the limit.

    A child that outlives `timeout` is killed and the test fails, naming the command.
    """
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "peak"
        try:
            result = subprocess.run(
                bounded_cli_argv(argv, memory_mb, report),
                cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
                stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"anynet {' '.join(argv)} ran past {timeout:.0f} s "
                                 "(a hang?)") from None
        result.peak_mb = read_peak_mb(report)
    return result


def assert_clean_ending(result, *, allowed=(0, 2)) -> None:
    """Exit code in `allowed`; on an error code, one line on stderr, ours, no traceback.

    `result` is a CompletedProcess, or (returncode, stderr) from an in-process `cli.main` run.
    """
    rc, stderr = ((result.returncode, result.stderr) if hasattr(result, "returncode")
                  else result)
    assert "Traceback" not in stderr, stderr
    assert "MemoryError" not in stderr, stderr
    assert rc in allowed, f"exit {rc}; stderr: {stderr}"
    if rc != 0:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {stderr}"
        assert lines[0].startswith("anynet"), lines[0]
