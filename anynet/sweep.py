"""Hyperparameter sweeps, the pure part: value lists, the grid, run ids, results and summaries.

`anynet sweep` (anynet/commands/sweep.py) trains every configuration of a grid on Dask workers
(anynet/sweep_cluster.py) into a folder (anynet/sweep_folder.py); everything here is plain
Python on plain data, testable without Dask:

- `parse_values(field, text)`: one option's values, "30,100,800", "0-4" (integers, inclusive),
  "0.1,0.3", "constant,cosine", "false,true";
- `expand_grid(base, swept)`: the product of the swept values over a base configuration, each
  checked by `TrainConfig` (which checks itself);
- `run_id(run)`: a hash of everything that determines a run's model, so re-running a sweep skips
  the runs already done;
- `read_results(path)` / `result_line(record)`: OUT/results.jsonl, one JSON object a line,
  appended as runs finish (a line torn by a killed client is dropped, and that run is redone;
  a line that is not a run's record, `record_problem`, is skipped and left in the file);
- `summarize(results)` / `format_summary(rows)`: mean and sample standard deviation over seeds
  per configuration, best first.

A run is a TrainConfig plus the sweep settings that change what it computes: the training-set
size (`train_size`, None for all) and the CPU thread count (BLAS sums differ in their last bits
between thread counts; anynet.backend.threads).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeGuard

from anynet.config import LEVER_FIELDS, TrainConfig

RESULTS_NAME = "results.jsonl"
RUNS_FOLDER = "runs"
MANIFEST_NAME = "sweep.json"
MANIFEST_FORMAT = "anynet-sweep"
# A run that ended like this is done: a re-run skips it. "error" (a worker without MNIST, a
# worker killed again and again) is the environment's fault, so a re-run tries it again.
FINISHED = ("ok", "diverged")
MAX_RUNS = 100_000  # a grid larger than this is a typo ("--seeds 0-99999999"), not a plan
# Options that a sweep varies, with the parser of one value. `seed` is spelled --seeds.
SWEEPABLE = ("hidden", "epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay",
             "schedule", "seed", "val_size", "dtype", "augment", "rotate", "scale", "shear",
             "shift", "alpha", "sigma", "dropout", "input_dropout", "label_smoothing", "average",
             "preprocess")
DISTORTION_FIELDS = ("augment", "rotate", "scale", "shear", "shift", "alpha", "sigma")
_INTS = {"hidden", "epochs", "batch_size", "seed", "val_size"}
_FLOATS = {"lr", "momentum", "weight_decay", "rotate", "scale", "shear", "shift", "alpha",
           "sigma", "dropout", "input_dropout", "label_smoothing"}
_OFF = TrainConfig()  # the levers' values that leave them off
_OFF_BY_DEFAULT = (*LEVER_FIELDS, "preprocess")


@dataclass(frozen=True)
class Run:
    """One training run of a sweep: what it trains (`config`) and on how much data with how many
    threads. Equal runs have equal ids."""

    config: TrainConfig
    train_size: int | None = None
    threads: int = 1

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "train_size": self.train_size,
                "threads": self.threads}

    @functools.cached_property  # a hash of JSON: 45 us, asked several times per run
    def id(self) -> str:
        return run_id(self)


def run_id(run: Run) -> str:
    """16 hex digits of the SHA-256 of the run's canonical JSON: its full configuration, the
    training-set size and the thread count. Stable across processes, machines and versions of
    Python (sorted keys, floats as JSON writes them). The distortion ranges count only where
    the run distorts (augment other than "none"), and training's levers only where they are
    on, as preprocess only where it preprocesses: without them they change nothing, and
    sweeps made before anynet had them keep their ids."""
    data = run.to_dict()
    if data["config"].get("augment", "none") == "none":
        data["config"] = {k: v for k, v in data["config"].items() if k not in DISTORTION_FIELDS}
    data["config"] = {k: v for k, v in data["config"].items()
                      if not (k in _OFF_BY_DEFAULT and v == getattr(_OFF, k))}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- values and the grid -----------------------------------------------------------------------


def option_name(field: str) -> str:
    """The command-line option that sets `field`."""
    return "--seeds" if field == "seed" else "--" + field.replace("_", "-")


def parse_values(field: str, text: str) -> list:
    """The values of one swept option, in the order given, duplicates dropped.

    Integers: a comma list of numbers and inclusive ranges ("0-4,10" is 0, 1, 2, 3, 4, 10).
    Floats: a comma list ("0.1,0.3,1e-4"). Words (schedule, dtype, augment, average,
    preprocess): a comma list.
    nesterov:
    "false,true". Raises ValueError saying what is wrong; the range of each value is
    `TrainConfig.from_dict`'s to judge.
    """
    if field not in SWEEPABLE:
        raise ValueError(f"{field} cannot be swept; choose from {', '.join(SWEEPABLE)}")
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise ValueError(f"expected a comma-separated list, got {text!r}")
    values: list[int | float | bool | str] = []
    for item in items:
        if field in _INTS:
            values += _int_range(item)
        elif field in _FLOATS:
            try:
                value = float(item)
            except ValueError:
                raise ValueError(f"expected numbers, got {item!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"expected finite numbers, got {item!r}")
            values.append(value)
        elif field == "nesterov":
            if item.lower() not in ("true", "false"):
                raise ValueError(f"expected true or false, got {item!r}")
            values.append(item.lower() == "true")
        else:
            values.append(item)
        if len(values) > MAX_RUNS:
            raise ValueError(f"more than {MAX_RUNS:,} values in {text[:40]!r}")
    return list(dict.fromkeys(values))


def _int_range(item: str) -> list[int]:
    first, dash, last = item.partition("-")
    try:
        start, stop = int(first), int(last if dash else first)
    except ValueError:
        raise ValueError(f"expected integers or ranges like 0-4, got {item!r}") from None
    if stop < start:
        raise ValueError(f"the range {item} runs backwards; write {stop}-{start}")
    if stop - start >= MAX_RUNS:
        raise ValueError(f"the range {item} holds more than {MAX_RUNS:,} values")
    return list(range(start, stop + 1))


def expand_grid(base: Mapping, swept: Mapping[str, list], *, train_size: int | None = None,
                threads: int = 1) -> list[Run]:
    """Every combination of the `swept` values (field -> list) over `base` (field -> value, the
    unswept settings), in the order given: the last field varies fastest, as in
    itertools.product. Raises ValueError for a grid above MAX_RUNS runs or a combination that
    TrainConfig refuses (naming the combination)."""
    names = list(swept)
    size = math.prod(len(swept[name]) for name in names)
    if size > MAX_RUNS:
        raise ValueError(f"the grid has {size:,} runs, more than {MAX_RUNS:,}; sweep fewer values")
    runs = []
    for combination in itertools.product(*(swept[name] for name in names)):
        values = {**base, **dict(zip(names, combination, strict=True))}
        try:
            config = TrainConfig.from_dict(values)
        except ValueError as e:
            chosen = ", ".join(f"{option_name(n)} {_format_value(v)}"
                               for n, v in zip(names, combination, strict=True))
            raise ValueError(f"{e} (in the run with {chosen})" if chosen else str(e)) from None
        runs.append(Run(config, train_size, threads))
    return list(dict.fromkeys(runs))


# --- results -----------------------------------------------------------------------------------


def result_line(record: Mapping) -> str:
    """One results.jsonl line (with its newline): compact JSON, keys in a stable order."""
    return json.dumps(record, sort_keys=True, allow_nan=False, separators=(",", ":")) + "\n"


MAX_LINE_BYTES = 1 << 20  # a record is about 1 KB; a longer line is not one of ours
SUMMARY_FIELDS = ("run_id", "status", "config", "train_size", "test_accuracy", "val_accuracy",
                  "seconds")  # what the summary, the plot and a re-run read of a record


def read_results(path: str | Path, skipped: list | None = None,
                 keep: Iterable[str] | None = None) -> tuple[list[dict], int]:
    """The records of a results.jsonl and the number of bytes that hold whole lines.

    A final line without its newline (the client was killed while appending) is not a record;
    the byte count lets the caller cut it off before appending. Every other line that is not a
    run's record (not JSON, longer than MAX_LINE_BYTES, or what `record_problem` refuses: a
    field missing or of the wrong type, as an edit or another program can leave) is skipped, and
    (line number, problem) is appended to `skipped` for the caller to report; the file itself is
    never changed here. `keep`: the fields of each record to keep (SUMMARY_FIELDS keeps a
    100,000-line file in about 300 MB rather than 630); all by default. A missing file has no
    records. The file is read a line at a time: memory grows with the records, not the bytes.
    """
    keep = tuple(keep) if keep is not None else None
    records: list[dict] = []
    complete = number = 0
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return [], 0
    with f:
        while raw := f.readline(MAX_LINE_BYTES + 1):
            size, whole = len(raw), raw.endswith(b"\n")
            while not whole and size > MAX_LINE_BYTES:  # skip the rest of a line too long
                more = f.readline(MAX_LINE_BYTES)
                if not more:
                    break
                size, whole = size + len(more), more.endswith(b"\n")
            if not whole:
                break  # a torn last line
            number += 1
            complete += size
            problem: str | None
            if size > MAX_LINE_BYTES:
                problem = f"{size:,} bytes long, more than a record's {MAX_LINE_BYTES:,}"
            elif not raw.strip():
                continue
            else:
                try:
                    record = json.loads(raw)
                except (ValueError, RecursionError):  # RecursionError: [[[[... too deep
                    problem = "not JSON"
                else:
                    problem = record_problem(record)
            if problem is None:
                records.append(record if keep is None else {k: record.get(k) for k in keep})
            elif skipped is not None:
                skipped.append((number, problem))
    return records, complete


def record_problem(record) -> str | None:
    """Why `record` (one parsed results line) is not a run's record, or None if it is one.

    A record is a JSON object with a text run_id, a status of ok, diverged or error, a config
    that `TrainConfig.from_dict` accepts and a train_size of None or N >= 1; one with status "ok"
    also has a test_accuracy in [0, 1], a val_accuracy of None or in [0, 1] and seconds of None
    or >= 0: what the summary, the plot and the skip-what-is-done test read.
    """
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if not isinstance(record.get("run_id"), str) or not record["run_id"]:
        return "no run_id"
    status = record.get("status")
    if status not in ("ok", "diverged", "error"):
        return f"status {_short(status)} (expected ok, diverged or error)"
    config = record.get("config")
    if not isinstance(config, dict):
        return f"config {_short(config)} (expected an object of settings)"
    try:
        TrainConfig.from_dict(config)
    except ValueError as e:
        return f"config: {e}"
    train_size = record.get("train_size")
    if train_size is not None and (type(train_size) is not int or train_size < 1):
        return f"train_size {_short(train_size)} (expected null or an integer >= 1)"
    if status != "ok":
        return None
    for name, low, high, optional in (("test_accuracy", 0, 1, False),
                                      ("val_accuracy", 0, 1, True),
                                      ("seconds", 0, math.inf, True)):
        value = record.get(name)
        if value is None and optional:
            continue
        if not _plain_number(value) or not low <= value <= high or math.isnan(value):
            return f"{name} {_short(value)} (expected a number in [{low}, {high:g}])"
    return None


def _plain_number(value: object) -> TypeGuard[int | float]:
    """An int or a float as JSON reads them: not a bool, nor any other subclass."""
    return type(value) in (int, float)


def _short(value) -> str:
    text = "missing" if value is None else json.dumps(value)
    return text if len(text) <= 30 else text[:30] + "..."


def latest_by_run(records: Iterable[Mapping]) -> dict[str, Mapping]:
    """run id -> its last record (a run retried after an error has several)."""
    return {record["run_id"]: record for record in records}


# --- summaries ---------------------------------------------------------------------------------


@dataclass
class SummaryRow:
    """One configuration (every setting but the seed) over its seeds."""

    settings: dict             # the configuration's values of the swept fields
    runs: int                  # results, whatever their status
    ok: int                    # of which trained to the end
    test_mean: float | None
    test_std: float | None     # sample standard deviation; None for fewer than 2 seeds
    val_mean: float | None
    val_std: float | None
    seconds_mean: float | None


def swept_fields(records: Iterable[Mapping]) -> list[str]:
    """The configuration fields whose values differ between the records, in TrainConfig's order
    (seed included)."""
    seen: dict[str, set] = {}
    for record in records:
        for name, value in _settings(record).items():
            seen.setdefault(name, set()).add(json.dumps(value))
    return [f.name for f in fields(TrainConfig) if len(seen.get(f.name, ())) > 1]


def _settings(record: Mapping) -> dict:
    return {**record.get("config", {}), "train_size": record.get("train_size")}


def summarize(records: Iterable[Mapping]) -> tuple[list[SummaryRow], str]:
    """Per configuration (all settings except the seed): mean and sample standard deviation over
    seeds of the test and validation accuracy of the runs that trained (status "ok").

    Returns the rows best first and the key they are ranked by: "val_accuracy" when every
    configuration has a validation score (choosing by the test set would tune on it), else
    "test_accuracy". Configurations without a finished run come last.
    """
    records = list(latest_by_run(records).values())
    shown = [name for name in swept_fields(records) if name != "seed"]
    groups: dict[str, list[Mapping]] = {}
    for record in records:
        settings = {k: v for k, v in _settings(record).items() if k != "seed"}
        groups.setdefault(json.dumps(settings, sort_keys=True), []).append(record)
    rows = []
    for members in groups.values():
        finished = [r for r in members if r.get("status") == "ok"]
        test = [r["test_accuracy"] for r in finished]
        val = [r["val_accuracy"] for r in finished if r.get("val_accuracy") is not None]
        val = val if len(val) == len(finished) else []
        seconds = [r["seconds"] for r in finished if r.get("seconds") is not None]
        rows.append(SummaryRow(
            settings={k: _settings(members[0]).get(k) for k in shown},
            runs=len(members), ok=len(finished),
            test_mean=_mean(test), test_std=_std(test), val_mean=_mean(val), val_std=_std(val),
            seconds_mean=_mean(seconds),
        ))
    ranked = [row for row in rows if row.ok]
    by = "val_accuracy" if ranked and all(r.val_mean is not None for r in ranked) \
        else "test_accuracy"

    def score(row: SummaryRow) -> float:
        value = row.val_mean if by == "val_accuracy" else row.test_mean
        return -math.inf if value is None else value

    rows.sort(key=score, reverse=True)  # stable: equal scores keep the grid's order
    return rows, by


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _std(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) >= 2 else None


def format_summary(rows: list[SummaryRow], ranked_by: str) -> str:
    """The summary as a text table, one configuration a line, best first."""
    if not rows:
        return "no results yet"
    names = list(rows[0].settings)

    def percent(mean, std) -> str:
        if mean is None:
            return "-"
        return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")

    header = [option_name(n).lstrip("-") for n in names] + ["seeds", "val acc %", "test acc %",
                                                           "s/run"]
    table = [[_format_value(row.settings[n]) for n in names]
             + [f"{row.ok}/{row.runs}", percent(row.val_mean, row.val_std),
                percent(row.test_mean, row.test_std),
                "-" if row.seconds_mean is None else f"{row.seconds_mean:.1f}"]
             for row in rows]
    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True))
             for line in [header, *table]]
    what = "validation" if ranked_by == "val_accuracy" else "test"
    return "\n".join([*lines, f"(mean ± sample standard deviation over seeds; ranked by mean "
                      f"{what} accuracy; seeds = runs trained / runs)"])


def _format_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return "all" if value is None else str(value)
