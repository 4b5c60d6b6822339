"""A sweep's folder on disk: its manifest, results.jsonl and the models in runs/.

OUT/sweep.json names the folder an anynet sweep's (`prepare_folder` makes it, or accepts an
earlier sweep's folder, and refuses any other); OUT/results.jsonl gets one line per finished
run (`append_result`, in one write, flushed); OUT/runs/RUN_ID.npz is each trained run's model
file (`run_record` writes it with `anynet.fit.write_model` and returns the run's line);
`runs_to_train` says which runs of a grid the folder does not hold yet, after tidying what a
killed client left (a torn last line, temporary files). The grid, run ids and the reading and
summary of results are anynet.sweep's; the command line's messages, locks and exit codes are
anynet/commands/sweep.py's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from anynet.sweep import FINISHED, RESULTS_NAME, RUNS_FOLDER, Run, latest_by_run, result_line


def append_result(path: str | Path, record: Mapping) -> None:
    """Append one line in one write, and flush it to disk: a line is there whole or not at all
    (a client killed mid-write can tear it; read_results drops a torn last line)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, result_line(record).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def run_record(run: Run, outcome: dict, out: Path) -> dict:
    """Write the run's model (if it trained: `anynet.fit.write_model`, into OUT/runs/) and
    return its results.jsonl record. `outcome`: what `anynet.sweep_cluster.train_run`
    returned."""
    from anynet import __version__
    from anynet.fit import utc_timestamp, write_model
    from anynet.network import TwoLayerNet

    record = {"run_id": run.id, "status": outcome["status"], "message": outcome["message"],
              "config": run.config.to_dict(), "train_size": run.train_size,
              "threads": outcome["threads"], "worker": outcome["worker"],
              "seconds": outcome["seconds"], "anynet_version": __version__,
              "finished_at": utc_timestamp(), "model": None}
    for name in ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_loss",
                 "epochs", "train_seconds"):
        record[name] = outcome.get(name)
    if outcome["status"] != "ok":
        return record
    model = Path(RUNS_FOLDER) / f"{run.id}.npz"
    net = TwoLayerNet.from_params(outcome["params"], backend="numpy",
                                  preprocessing=run.config.preprocess)
    write_model(out / model, net, outcome["record"], threads=outcome["threads"],
                sweep={"run_id": run.id, "train_size": run.train_size,
                       "worker": outcome["worker"]})
    record["model"] = model.as_posix()
    record["data_genuine"] = outcome["data"]["genuine"]
    return record


def _own_names() -> set[str]:
    from anynet.fileio import lock_path_for
    from anynet.sweep import MANIFEST_NAME

    return {MANIFEST_NAME, RESULTS_NAME, RUNS_FOLDER, lock_path_for(Path(MANIFEST_NAME)).name}


def prepare_folder(out: Path) -> None:
    """Make OUT, or accept it as an earlier sweep's folder (its manifest says so); refuse
    anything else (UserError naming --out)."""
    import json

    from anynet.errors import UserError
    from anynet.fileio import atomic_write_text, reason
    from anynet.sweep import MANIFEST_FORMAT, MANIFEST_NAME

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a folder for the sweep (new or empty)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        entries = {e.name for e in os.scandir(out)}
    except OSError as e:
        raise UserError(f"--out {out}: cannot make or read the folder ({reason(e)})") from None
    manifest = out / MANIFEST_NAME
    if MANIFEST_NAME in entries:
        try:
            ours = json.loads(manifest.read_text()).get("format") == MANIFEST_FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise UserError(f"--out {out}: {manifest} is not an anynet sweep's; choose another "
                            "folder")
        return
    foreign = sorted(n for n in entries if n not in _own_names() and not n.endswith(".tmp"))
    if foreign:
        raise UserError(f"--out {out} holds files that are not an anynet sweep's "
                        f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                        "choose a new or empty folder")
    from anynet import __version__

    try:
        atomic_write_text(manifest, json.dumps({"format": MANIFEST_FORMAT, "version": 1,
                                                "anynet_version": __version__}) + "\n")
    except OSError as e:
        raise UserError(f"--out {out}: cannot write in it ({reason(e)})") from None


def runs_to_train(out: Path, runs: list[Run], records: list[dict], complete: int) -> list[Run]:
    """The runs of `runs` that OUT does not hold finished (a run with status "ok" needs its
    model file too), given OUT's results `records` (`anynet.sweep.read_results`) and the
    bytes of whole lines, `complete`. Cuts off a line torn by a killed client, so the next line
    starts on its own; makes runs/; removes what a killed client's writes left behind."""
    import time

    from anynet.fileio import atomic_write_bytes, remove_stale_temporaries

    results_path = out / RESULTS_NAME
    if results_path.exists() and complete < results_path.stat().st_size:
        atomic_write_bytes(results_path, results_path.read_bytes()[:complete])
    (out / RUNS_FOLDER).mkdir(exist_ok=True)
    remove_stale_temporaries(out, [RESULTS_NAME], older_than=time.time())
    remove_stale_temporaries(out / RUNS_FOLDER, [f"{run.id}.npz" for run in runs],
                             older_than=time.time())
    done = latest_by_run(records)

    def finished(run: Run) -> bool:
        record = done.get(run.id)
        return (record is not None and record.get("status") in FINISHED
                and (record["status"] != "ok" or (out / RUNS_FOLDER / f"{run.id}.npz").exists()))

    return [run for run in runs if not finished(run)]
