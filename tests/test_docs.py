"""The shell examples of README.md and docs/*.md, run against the real command line.

A newcomer copies what the docs show, so every example with its output is a test. The docs mark
their examples by the fence's info string:

    ```console            runs here, needs no data (HOME is an empty folder: no MNIST in reach)
    ```console mnist      runs where genuine MNIST is (the `mnist_dir` fixture), found through the
                          cache ~/.cache/anynet/mnist of a fresh HOME, as after `anynet data`
    ```console no-run: WHY  illustrative only (a GPU, a server, a long training, a kill -9):
                          shown, never run; the reason is part of the fence

Inside a block, a line `$ COMMAND` is run by bash (`anynet` is this checkout's command line,
`python` this interpreter; a line ending in `\\` continues on the next), and the lines up to the
next `$` are what it must print, stdout and stderr together. `echo $?` sees the exit status of
the command before it. The blocks of one file run in order in one temporary folder (one for its
plain blocks, one for its `mnist` blocks), holding copies of README.md, docs/digits/ and
examples/, so a later block may use a file an earlier one wrote.

The matching rule, doctest's ELLIPSIS plus one normalisation:
- a line `...` matches any number of lines (none included);
- `...` inside a line matches any text on that line;
- durations (a number followed by ` s`, as in `0.23 s` or `(1.1 s in all)`) compare equal
  whatever the number: wall time is the one thing a run may not repeat;
- trailing spaces and trailing empty lines do not count.
Everything else must match exactly, with one allowance in the `mnist` blocks: a training's
numbers depend on the processor's floating-point kernels (OpenBLAS picks them by CPU, and this
project's machines change between Intel and AMD), so there a decimal number may differ from the
text by 0.2 points when it is a percentage and by 2% of itself otherwise; integers (epochs,
counts, bytes) still match exactly. The examples fix the seed and the thread count
(`--threads 1`) where the result depends on them, so on one machine they repeat exactly.

Every fenced block in the docs that shows a `$ ` command must be a `console` block of one of
the three kinds, so no example escapes the test by its fence.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(.*)$")
DURATION = re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)? s\b")
COMMAND_TIMEOUT = 120   # seconds; the slowest example (examples/from_scratch.py) takes ~10


@dataclass
class Block:
    path: Path
    line: int          # the fence's line, 1-based
    info: str          # the fence's info string: "console", "console mnist", "console no-run: ..."
    lines: list[str]

    @property
    def kind(self) -> str:
        words = self.info.split(maxsplit=1)
        rest = words[1] if len(words) > 1 else ""
        if words[:1] != ["console"]:
            return "other"
        if rest == "":
            return "plain"
        if rest == "mnist":
            return "mnist"
        if rest.startswith("no-run:") and rest[len("no-run:"):].strip():
            return "no-run"
        return "bad"

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    found, current = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(line)
        if current is None and match:
            current = Block(path, number, match.group(1).strip(), [])
        elif current is not None and line.startswith("```"):
            found.append(current)
            current = None
        elif current is not None:
            current.lines.append(line)
    return found


def examples(block: Block) -> list[tuple[str, list[str]]]:
    """The block's (command, expected output lines) pairs."""
    pairs: list[tuple[str, list[str]]] = []
    lines = iter(block.lines)
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):
                command = command[:-1] + "\n" + next(lines)
            pairs.append((command, []))
        elif pairs:
            pairs[-1][1].append(line)
        else:
            raise AssertionError(f"{block.where()}: output before any '$ ' command: {line!r}")
    return pairs


DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d+(%?)")


def _literal(part: str, decimals: list[tuple[float, bool]] | None) -> str:
    """`part` as a regex; with `decimals`, each decimal number in it becomes a group and its
    value (and whether it is a percentage) is appended to `decimals`."""
    if decimals is None:
        return re.escape(part)
    pattern, at = "", 0
    for number in DECIMAL.finditer(part):
        pattern += re.escape(part[at:number.start()]) + r"(-?\d+\.\d+)" + re.escape(number[1])
        decimals.append((float(number[0].rstrip("%")), bool(number[1])))
        at = number.end()
    return pattern + re.escape(part[at:])


def _close(shown: float, printed: float, percent: bool) -> bool:
    return abs(shown - printed) <= (0.2 if percent else 0.02 * abs(shown))


def matches(expected: list[str], actual: str, *, trained: bool = False) -> bool:
    """The rule of the module docstring: `...` lines and `...` within a line, durations; with
    `trained`, the allowance for a training's decimal numbers."""
    def clean(lines: list[str]) -> list[str]:
        lines = [DURATION.sub("N s", line.rstrip()) for line in lines]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    decimals: list[tuple[float, bool]] | None = [] if trained else None
    pattern = ""
    for line in clean(expected):
        if line.strip() == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += ".*?".join(_literal(part, decimals) for part in line.split("...")) + r"\n"
    text = "".join(line + "\n" for line in clean(actual.splitlines()))
    found = re.fullmatch(pattern, text)
    if found is None or decimals is None:
        return found is not None
    return all(_close(shown, float(printed), percent)
               for (shown, percent), printed in zip(decimals, found.groups(), strict=True))


def workspace(tmp: Path) -> dict[str, str]:
    """A folder holding what the examples name, and the environment they run in."""
    shutil.copy(ROOT / "README.md", tmp / "README.md")
    shutil.copytree(ROOT / "docs" / "digits", tmp / "docs" / "digits")
    shutil.copytree(ROOT / "examples", tmp / "examples")
    bin_dir = tmp / ".bin"
    bin_dir.mkdir()
    for name, line in (("anynet", f'exec "{sys.executable}" -m anynet "$@"'),
                       ("python", f'exec "{sys.executable}" "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{line}\n")
        (bin_dir / name).chmod(0o755)
    home = tmp / ".home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("ANYNET_", "XDG_"))}
    env.update(HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=str(ROOT), COLUMNS="100", PYTHONIOENCODING="utf-8")
    return env


def run_blocks(selected: list[Block], tmp: Path, env: dict[str, str]) -> None:
    failures, status = [], 0
    for block in selected:
        for command, expected in examples(block):
            done = subprocess.run(["bash", "-c", f"(exit {status}); {command}"], cwd=tmp, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
            status = done.returncode
            if not matches(expected, done.stdout, trained=block.kind == "mnist"):
                failures.append(f"{block.where()}: $ {command}\n--- the docs say:\n"
                                + "\n".join(expected) + "\n--- it printed:\n" + done.stdout)
    assert not failures, "\n\n".join(failures)


def _ids(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(ROOT)) for path in paths]


@pytest.mark.parametrize("path", DOCS, ids=_ids(DOCS))
def test_every_shell_example_is_a_marked_console_block(path):
    for block in blocks(path):
        shows_a_command = any(line.startswith("$ ") for line in block.lines)
        if block.kind == "other":
            assert not shows_a_command, (
                f"{block.where()}: a block with '$ ' commands must be ```console, ```console "
                "mnist or ```console no-run: WHY")
        else:
            assert block.kind != "bad", f"{block.where()}: unknown fence info {block.info!r}"
            assert shows_a_command and examples(block), f"{block.where()}: no '$ ' command"


def test_the_matching_rule():
    assert matches(["a 0.23 s", "..."], "a 1.5 s\nb\nc\n")
    assert matches(["x ... y", "z"], "x anything y\nz\n\n")
    assert not matches(["97.46%"], "97.45%\n")
    assert not matches(["a", "b"], "a\n")
    assert matches(["a", "...", "b"], "a\nb\n")
    # a training's decimals, in `mnist` blocks only: 0.2 points for a percentage, else 2%
    assert matches(["acc 97.46% loss 0.0848"], "acc 97.31% loss 0.0861\n", trained=True)
    assert not matches(["acc 97.46%"], "acc 97.21%\n", trained=True)
    assert not matches(["loss 0.0848"], "loss 0.0870\n", trained=True)
    assert not matches(["epoch 3: 0.50"], "epoch 4: 0.50\n", trained=True)  # integers exact
    assert not matches(["acc 97.46%"], "acc 97.45%\n")


PLAIN = [path for path in DOCS if any(b.kind == "plain" for b in blocks(path))]
MNIST = [path for path in DOCS if any(b.kind == "mnist" for b in blocks(path))]


@pytest.mark.parametrize("path", PLAIN, ids=_ids(PLAIN))
def test_console_examples(path, tmp_path):
    env = workspace(tmp_path)
    run_blocks([b for b in blocks(path) if b.kind == "plain"], tmp_path, env)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("path", MNIST, ids=_ids(MNIST))
def test_console_examples_on_mnist(path, tmp_path, mnist_dir):
    env = workspace(tmp_path)
    cache = Path(env["HOME"]) / ".cache" / "anynet"
    cache.mkdir(parents=True)
    (cache / "mnist").symlink_to(Path(mnist_dir).resolve(), target_is_directory=True)
    run_blocks([b for b in blocks(path) if b.kind == "mnist"], tmp_path, env)


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    inside, found = False, set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and line.startswith("#"):
            found.add(_anchor(line.lstrip("#")))
    return found


@pytest.mark.parametrize("path", DOCS, ids=_ids(DOCS))
def test_links_reach_a_file_and_heading(path):
    broken = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue                               # https:, mailto: ...
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)
