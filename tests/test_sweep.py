"""`anynet sweep` without a cluster: value lists and ranges, the grid, run ids, results files,
summaries, and the command's refusals (one line, exit 2) that come before any Dask is needed.

The sweeps on real Dask clusters are in tests/test_sweep_cluster.py.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from anynet.cli import main
from anynet.config import TrainConfig
from anynet.fileio import exclusive_lock
from anynet.sweep import (
    Run,
    expand_grid,
    format_summary,
    parse_values,
    read_results,
    record_problem,
    result_line,
    run_id,
    summarize,
    swept_fields,
)


@pytest.mark.parametrize("field, text, expected", [
    ("seed", "0-4", [0, 1, 2, 3, 4]),
    ("seed", "0-2,7,1", [0, 1, 2, 7]),          # duplicates dropped, order kept
    ("hidden", "30,100,800", [30, 100, 800]),
    ("hidden", " 5 - 6 ", [5, 6]),
    ("lr", "0.1,0.3,1e-4", [0.1, 0.3, 1e-4]),   # a float's exponent is not a range
    ("weight_decay", "0", [0.0]),
    ("schedule", "constant,cosine", ["constant", "cosine"]),
    ("nesterov", "false,TRUE", [False, True]),
])
def test_values_and_ranges(field, text, expected):
    assert parse_values(field, text) == expected


@pytest.mark.parametrize("field, text, words", [
    ("seed", "5-2", "runs backwards; write 2-5"),
    ("seed", "0-x", "expected integers or ranges"),
    ("hidden", "30,,100", "comma-separated list"),
    ("hidden", "", "comma-separated list"),
    ("lr", "0.1-0.3", "expected numbers"),
    ("lr", "nan", "finite"),
    ("nesterov", "yes", "true or false"),
    ("seed", "0-100000", "more than 100,000"),
    ("backend", "numpy", "cannot be swept"),
])
def test_bad_values_say_why(field, text, words):
    with pytest.raises(ValueError, match=words):
        parse_values(field, text)


def test_the_grid_is_the_product_in_order():
    runs = expand_grid({"epochs": 10}, {"hidden": [30, 100], "lr": [0.1, 0.3],
                                         "seed": [0, 1, 2]}, train_size=500)
    assert len(runs) == 12
    assert [(r.config.hidden, r.config.lr, r.config.seed) for r in runs[:4]] == [
        (30, 0.1, 0), (30, 0.1, 1), (30, 0.1, 2), (30, 0.3, 0)]
    assert all(r.config.epochs == 10 and r.train_size == 500 and r.threads == 1 for r in runs)
    assert all(r.config.batch_size == TrainConfig().batch_size for r in runs)  # train's default
    assert len({r.id for r in runs}) == 12


def test_the_grid_refuses_a_combination_train_refuses():
    with pytest.raises(ValueError, match=r"nesterov needs momentum .* --momentum 0, "
                                         r"--nesterov true"):
        expand_grid({}, {"momentum": [0.0, 0.9], "nesterov": [True]})
    with pytest.raises(ValueError, match="more than 100,000"):
        expand_grid({}, {"seed": list(range(1000)), "hidden": list(range(1, 200))})


def test_run_ids_hash_the_full_configuration():
    run = Run(TrainConfig(hidden=30, lr=0.3, seed=0), train_size=None, threads=1)
    # pinned to the canonical JSON: a re-run made by another process, machine or version of
    # Python finds its runs
    canonical = ('{"config":{"backend":"numpy","batch_size":32,"dtype":"float32","epochs":30,'
                 '"hidden":30,"lr":0.3,"momentum":0.0,"nesterov":false,"schedule":"cosine",'
                 '"seed":0,"val_size":5000,"weight_decay":0.0003},"threads":1,"train_size":null}')
    assert run_id(run) == run.id == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert Run(TrainConfig(hidden=30, lr=0.3, seed=0)).id == run.id
    others = [Run(TrainConfig(hidden=30, lr=0.3, seed=1)), Run(TrainConfig(weight_decay=0.0)),
              Run(TrainConfig(), train_size=1000), Run(TrainConfig(), threads=2),
              Run(TrainConfig(backend="torch")), Run(TrainConfig(augment="affine")),
              Run(TrainConfig(augment="affine", rotate=10.0))]
    assert len({run.id} | {o.id for o in others}) == 8
    # distortion ranges without distortions change nothing: the same run
    assert Run(TrainConfig(hidden=30, lr=0.3, seed=0, rotate=10.0)).id == run.id


def record(hidden, seed, test, val, status="ok", lr=0.1):
    config = TrainConfig(hidden=hidden, lr=lr, seed=seed).to_dict()
    rid = run_id(Run(TrainConfig.from_dict(config)))
    return {"run_id": rid, "status": status, "config": config, "train_size": None,
            "test_accuracy": test if status == "ok" else None,
            "val_accuracy": val if status == "ok" else None, "seconds": 2.0}


def test_summary_means_and_sample_deviations_best_first():
    records = [record(30, 0, 0.90, 0.91), record(30, 1, 0.92, 0.93), record(30, 2, 0.94, 0.95),
               record(100, 0, 0.97, 0.96), record(100, 1, 0.0, 0.0, status="diverged"),
               record(8, 0, 0.80, 0.99)]
    assert swept_fields(records) == ["hidden", "seed"]
    rows, by = summarize(records)
    assert by == "val_accuracy"
    assert [r.settings for r in rows] == [{"hidden": 8}, {"hidden": 100}, {"hidden": 30}]
    h30 = rows[2]
    assert (h30.runs, h30.ok) == (3, 3)
    assert h30.test_mean == pytest.approx(0.92) and h30.test_std == pytest.approx(0.02)
    assert h30.val_mean == pytest.approx(0.93) and h30.val_std == pytest.approx(0.02)
    assert (rows[1].runs, rows[1].ok, rows[1].test_std) == (2, 1, None)  # one seed: no spread
    text = format_summary(rows, by)
    lines = text.splitlines()
    assert lines[0].split() == ["hidden", "seeds", "val", "acc", "%", "test", "acc", "%", "s/run"]
    assert lines[3].split() == ["30", "3/3", "93.00", "±", "2.00", "92.00", "±", "2.00", "2.0"]
    assert "ranked by mean validation accuracy" in lines[-1]


def test_summary_ranks_by_test_accuracy_without_validation():
    records = [record(30, 0, 0.90, None), record(100, 0, 0.95, None)]
    rows, by = summarize(records)
    assert by == "test_accuracy" and [r.settings["hidden"] for r in rows] == [100, 30]


def test_a_retried_run_counts_once_with_its_last_result():
    first = record(30, 0, None, None, status="error")
    rows, _ = summarize([first, record(30, 0, 0.9, 0.9)])
    assert (rows[0].runs, rows[0].ok) == (1, 1)


def test_results_reader_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "results.jsonl"
    good = [record(30, 0, 0.9, 0.9), record(30, 1, 0.8, 0.8)]
    text = "".join(result_line(r) for r in good)
    path.write_text(text + '{"run_id": "abc", "status"')
    records, complete = read_results(path)
    assert records == good and complete == len(text.encode())
    assert read_results(tmp_path / "absent.jsonl") == ([], 0)
    with pytest.raises(ValueError):  # a result is never written with nan: JSON has none
        result_line({"run_id": "x", "test_accuracy": float("nan")})


# Lines a hand, another program or an older bug can leave in results.jsonl: each is skipped with
# its problem named. Before, each broke every later run and --summary of the folder (KeyError,
# TypeError, AttributeError).
BAD_LINES = [
    ('["not", "an", "object"]', "not an object"),
    ('{"status": "ok"}', "no run_id"),
    ('{"run_id": 7, "status": "ok"}', "no run_id"),
    ('{"run_id": "r1"}', "status missing"),
    ('{"run_id": "r1", "status": "done"}', 'status "done"'),
    ('{"run_id": "r1", "status": "diverged"}', "config missing"),
    ('{"run_id": "r1", "status": "diverged", "config": [1]}', "config [1]"),
    ('{"run_id": "r1", "status": "diverged", "config": {"hidden": "30"}}', "hidden must be"),
    ('{"run_id": "r1", "status": "error", "config": {}, "train_size": "all"}', "train_size"),
    ('{"run_id": "r1", "status": "ok", "config": {}}', "test_accuracy missing"),
    ('{"run_id": "r1", "status": "ok", "config": {}, "test_accuracy": "97%"}', "test_accuracy"),
    ('{"run_id": "r1", "status": "ok", "config": {}, "test_accuracy": 97.5}', "in [0, 1]"),
    ('{"run_id": "r1", "status": "ok", "config": {}, "test_accuracy": true}', "test_accuracy"),
    ('{"run_id": "r1", "status": "ok", "config": {}, "test_accuracy": 0.9, '
     '"val_accuracy": [0.9]}', "val_accuracy"),
    ('{"run_id": "r1", "status": "ok", "config": {}, "test_accuracy": 0.9, "seconds": -1}',
     "seconds"),
    ("[" * 100_000, "not JSON"),
    ("not json at all", "not JSON"),
    ('"' + "x" * (2 << 20) + '"', "2,097,155 bytes long"),  # with its newline
]


@pytest.mark.parametrize("line, problem", BAD_LINES)
def test_a_line_that_is_not_a_run_record_is_skipped_and_named(tmp_path, line, problem):
    path = tmp_path / "results.jsonl"
    good = [record(30, 0, 0.9, 0.9), record(30, 1, 0.8, 0.8)]
    path.write_text(result_line(good[0]) + line + "\n" + result_line(good[1]))
    skipped = []
    records, complete = read_results(path, skipped)
    assert records == good and complete == path.stat().st_size
    assert len(skipped) == 1 and skipped[0][0] == 2 and problem in skipped[0][1], skipped
    rows, _ = summarize(records)  # what broke before: the summary of what is read
    assert rows[0].ok == 2


def test_every_record_the_sweep_writes_passes():
    for r in (record(30, 0, 0.9, 0.9), record(30, 0, 0.9, None), record(30, 0, None, None,
              status="error"), record(30, 0, None, None, status="diverged")):
        assert record_problem(r) is None, r


def test_summary_and_a_rerun_skip_bad_lines_with_one_warning_and_keep_the_file(tmp_path,
                                                                               capsys):
    # a folder whose runs all ended (diverged: no model files needed), plus two bad lines
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"format": "anynet-sweep", "version": 1}))
    records = [record(30, seed, None, None, status="diverged", lr=1e4) for seed in (0, 1)]
    text = (result_line(records[0]) + BAD_LINES[9][0] + "\n" + BAD_LINES[3][0] + "\n"
            + result_line(records[1]))
    (out / "results.jsonl").write_text(text)
    assert main(["sweep", "--summary", str(out)]) == 0
    captured = capsys.readouterr()
    assert "0/2" in captured.out
    warning = one_error_line_of(captured.err)
    assert warning.startswith("anynet sweep: warning: skipped 2 lines of")
    assert "line 2: test_accuracy missing (expected a number in [0, 1]) and 1 more" in warning
    # the same grid again: nothing to train (no Dask needed), one warning, the file untouched
    argv = ["sweep", "--hidden", "30", "--lr", "1e4", "--seeds", "0-1", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "2 done before, 0 to train" in captured.out
    assert "skipped 2 lines" in one_error_line_of(captured.err)
    assert (out / "results.jsonl").read_text() == text


def test_a_results_file_that_cannot_be_read_is_one_line(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"format": "anynet-sweep", "version": 1}))
    (out / "results.jsonl").mkdir()  # before: IsADirectoryError, a traceback
    assert main(["sweep", "--seeds", "0", "--out", str(out)]) == 2
    assert "cannot read" in one_error_line(capsys)


def one_error_line_of(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --- the command, before any cluster ------------------------------------------------------------


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("argv, words", [
    (["--seeds", "5-2"], "argument --seeds: the range 5-2 runs backwards; write 2-5"),
    (["--hidden", "0,30"], "hidden must be an integer >= 1, got 0"),
    (["--lr", "0.1,fast"], "argument --lr: expected numbers, got 'fast'"),
    (["--momentum", "0", "--nesterov", "true"], "nesterov needs momentum > 0"),
    (["--hidden", "200000"], "at most 100,000 hidden units"),
    (["--learning-rate", "0.1"], "unrecognized arguments: --learning-rate"),
    (["--recipe", "fast"], "unknown recipe 'fast'; choose one of: default, h800"),
    (["--scheduler", "127.0.0.1:8786"], "expected tcp://HOST:PORT"),
    (["--scheduler", "tcp://127.0.0.1:1"], "no Dask scheduler answers at tcp://127.0.0.1:1"),
    (["--scheduler", "tcp://127.0.0.1:1", "--workers", "2"], "--workers sizes the local"),
    (["--scheduler", "tcp://[::1"], "--scheduler tcp://[::1: Invalid IPv6 URL; expected"),
    (["--scheduler", "tcp://127.0.0.1:99999"], "Port out of range"),
    (["--scheduler", "tcp://127.0.0.1:0"], "with a port of 1-65535"),
    (["--scheduler", "tcp://" + "a" * 70 + ".example:1"], "no Dask scheduler answers"),
    (["--wait-for-workers", "0"], "argument --wait-for-workers: expected a positive"),
    (["--wait-for-workers", "nan"], "argument --wait-for-workers: expected a positive"),
    (["--wait-for-workers", "1e9"], "expected at most 604800"),
    (["--plot", "grid.gif"], "must end in .png, .svg or .pdf"),
    ([], None),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, words):
    out = tmp_path / "sweep"
    assert main(["sweep", *argv, *(["--out", str(out)] if argv else [])]) == 2
    line = one_error_line(capsys)
    assert (words or "name the sweep's folder with --out DIR") in line
    assert not out.exists()  # refused before anything was made


def test_an_out_made_by_something_else_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["sweep", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "holds files that are not an anynet sweep's (notes.txt)" in one_error_line(capsys)
    afile = tmp_path / "notes.txt"
    assert main(["sweep", "--seeds", "0", "--out", str(afile)]) == 2
    assert "is a file" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_two_sweeps_into_one_out_are_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"format": "anynet-sweep", "version": 1}))
    with exclusive_lock(out / "sweep.json"):  # what a running sweep holds
        assert main(["sweep", "--seeds", "0", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "another anynet sweep" in line and "is writing" in line
    assert not (out / "results.jsonl").exists()


def test_summary_of_an_earlier_sweep(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    records = [record(30, 0, 0.90, 0.91), record(30, 1, 0.92, 0.93), record(100, 0, 0.97, 0.96)]
    (out / "results.jsonl").write_text("".join(result_line(r) for r in records))
    assert main(["sweep", "--summary", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["100", "1/1"] and lines[2].split()[:2] == ["30", "2/2"]
    assert main(["sweep", "--summary", str(tmp_path)]) == 2
    assert "no results.jsonl there" in one_error_line(capsys)
    assert main(["sweep", "--summary", str(out), "--hidden", "30"]) == 2
    assert "trains nothing; leave out --hidden" in one_error_line(capsys)


def test_summary_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (anynet[plot])")
    out = tmp_path / "sweep"
    out.mkdir()
    records = [record(h, s, 0.9 + h / 1000 + s / 100, 0.9, lr=lr)
               for h in (30, 100) for lr in (0.1, 0.3) for s in (0, 1)]
    (out / "results.jsonl").write_text("".join(result_line(r) for r in records))
    assert main(["sweep", "--summary", str(out), "--plot", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plot written to" in capsys.readouterr().out
