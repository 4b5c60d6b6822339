"""Training checkpoints ("anynet-checkpoint"): the parameters, the optimizer's velocities, the
averaged weights where the run averages them (anynet.levers), and a record of where training
stands, in an .npz like a model file (`anynet.modelio`).

The record holds the position in training (epoch, batch, step), the shuffling RNG's state, the
metrics so far and the config: everything `anynet train --resume` needs. Reading checks every
field the training loop reads for type and range (`_check_record`), so a damaged checkpoint is
one line naming the file and the field, never a crash in the middle of training.

Not checked here, because it needs the training data: that a checkpoint's batch lies within an
epoch of that data, and that its step count equals epoch * batches per epoch + batch.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from anynet import __version__
from anynet.config import LEVER_FIELDS, TrainConfig, short_repr
from anynet.errors import ModelFileError
from anynet.levers import swa_count
from anynet.modelio._npz import read_npz, write_npz
from anynet.modelio._record import (
    AVERAGE_PREFIX,
    CHECKPOINT_FORMAT,
    FORMAT_VERSION,
    VELOCITY_PREFIX,
    check_params,
    count_non_finite,
)
from anynet.network import PARAM_NAMES

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_HISTORY_FLOATS = ("train_loss", "train_accuracy", "lr", "seconds")
_HISTORY_OPTIONAL = ("val_loss", "val_accuracy")  # None when there is no validation set


class Checkpoint(tuple):
    """What `load_checkpoint` returns: (params, velocity, record), which unpacks as three, and
    `average`, the averaged weights ({} where the run averages none, or not yet)."""

    average: dict

    def __new__(cls, params: dict, velocity: dict, record: dict, average: dict) -> Checkpoint:
        self = super().__new__(cls, (params, velocity, record))
        self.average = average
        return self


def save_checkpoint(path: str | Path, params: dict[str, np.ndarray],
                    velocity: dict[str, np.ndarray], record: dict,
                    average: dict[str, np.ndarray] | None = None) -> None:
    """Write a training checkpoint: host parameters, optimizer velocities, the averaged weights
    (`average`, where the run has them) and `record`."""
    arrays = dict(params)
    arrays.update({VELOCITY_PREFIX + k: v for k, v in velocity.items()})
    arrays.update({AVERAGE_PREFIX + k: v for k, v in (average or {}).items()})
    full = {"format": CHECKPOINT_FORMAT, "format_version": FORMAT_VERSION,
            "anynet_version": __version__, **record}
    write_npz(path, arrays, full)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check a checkpoint; return (host params, host velocities, record) with the
    host averaged weights as `.average`.

    Every field the training loop reads is checked for type and range (see `_check_record`);
    the record returned is well-typed. The checks that need the training data (batch within
    an epoch, step == epoch * batches per epoch + batch) are the loop's.
    """
    names = {prefix: [prefix + k for k in PARAM_NAMES]
             for prefix in (VELOCITY_PREFIX, AVERAGE_PREFIX)}
    arrays, record = read_npz(path, CHECKPOINT_FORMAT, [*PARAM_NAMES, *names[VELOCITY_PREFIX],
                                                         *names[AVERAGE_PREFIX]])
    params = check_params(path, arrays)
    config = _check_record(Path(path), record, params)
    velocity = _state(path, arrays, params, VELOCITY_PREFIX, "optimizer state",
                      f"momentum {config.momentum:g}" if config.momentum > 0 else "",
                      "optimizer state (velocity) but its config has no momentum")
    averaged = config.averaging()[0] == "ema" or swa_count(config, record["epoch"]) > 0
    average = _state(path, arrays, params, AVERAGE_PREFIX, "averaged weights",
                     f"its average {config.average}" if averaged else "",
                     "averaged weights that its config does not make by this epoch")
    return Checkpoint(params, velocity, record, average)


def _state(path, arrays: dict, params: dict, prefix: str, noun: str, needed_by: str,
           unneeded: str) -> dict:
    """The arrays `prefix`W1, ... (the `noun`: velocities, averaged weights) by parameter
    name: all four where some setting needs them (`needed_by`, which names it), each of its
    parameter's shape and dtype and finite; none otherwise (what they would mean: `unneeded`)."""
    names = [prefix + k for k in PARAM_NAMES]
    if not needed_by:
        if any(n in arrays for n in names):
            raise ModelFileError(f"{path}: the checkpoint holds {unneeded}; the file is damaged")
        return {}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ModelFileError(f"{path}: the checkpoint lacks the {noun} {', '.join(missing)} "
                             f"that {needed_by} needs; the file is damaged")
    state = {}
    for k in PARAM_NAMES:
        v = state[k] = arrays[prefix + k]
        if v.shape != params[k].shape or v.dtype != params[k].dtype:
            raise ModelFileError(f"{path}: {noun} {k} ({v.shape} {v.dtype}) does not match the "
                                 f"parameter ({params[k].shape} {params[k].dtype}); the file "
                                 "is damaged")
        if count_non_finite(v):
            raise ModelFileError(f"{path}: {noun} {k} holds non-finite values (nan/inf); the "
                                 "file is damaged")
    return state


_RECORD_FIELDS = ("config", "epoch", "batch", "step", "rng_state", "loss_sum", "history",
                  "data_sha256")


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is a subclass of int: not accepted


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _check_record(path: Path, record: dict, params: dict[str, np.ndarray]) -> TrainConfig:
    """The checkpoint record's config, after checking every field the training loop reads."""
    def damaged(what: str) -> ModelFileError:
        return ModelFileError(f"{path}: {what}; the checkpoint is damaged (resume from another "
                              "checkpoint, or start the run again)")

    for key in _RECORD_FIELDS:
        if key not in record:
            raise ModelFileError(f"{path}: the checkpoint record lacks '{key}'")
    config_values = record["config"]
    if not isinstance(config_values, dict):
        raise damaged(f"its config is {short_repr(config_values)}, not a JSON object")
    # the levers came later: a checkpoint written before them trained without them
    lacking = [f.name for f in fields(TrainConfig)
               if f.name not in config_values and f.name not in LEVER_FIELDS]
    if lacking:
        raise damaged(f"its config lacks {', '.join(lacking)}")
    try:
        config = TrainConfig.from_dict(config_values)
    except ValueError as e:
        raise damaged(f"its config is invalid: {e}") from None
    n_in, n_hidden = params["W1"].shape
    n_out = params["W2"].shape[1]
    if n_hidden != config.hidden:  # D and K are the data's: the Trainer checks them against it
        raise damaged(f"its parameters are {n_in}-{n_hidden}-{n_out}, not the "
                      f"{n_in}-{config.hidden}-{n_out} network of its config")
    if str(params["W1"].dtype) != config.dtype:
        raise damaged(f"its parameters are {params['W1'].dtype}, its config says {config.dtype}")

    epoch, batch, step = record["epoch"], record["batch"], record["step"]
    if not (_is_int(epoch) and 0 <= epoch <= config.epochs):
        raise damaged(f"field 'epoch' must be an integer from 0 to {config.epochs} (the "
                      f"config's epochs), got {short_repr(epoch)}")
    if not (_is_int(batch) and batch >= 0) or (epoch == config.epochs and batch != 0):
        raise damaged(f"field 'batch' must be an integer >= 0 (0 once every epoch is done), "
                      f"got {short_repr(batch)}")
    # step = epoch * batches per epoch + batch, with batch < batches per epoch
    fits = _is_int(step) and (step == batch if epoch == 0 else
                              step > batch and (step - batch) % epoch == 0
                              and (step - batch) // epoch > batch)
    if not fits:
        raise damaged(f"field 'step' ({short_repr(step)}) does not fit epoch {epoch} and batch "
                      f"{batch} (step = epoch x batches per epoch + batch)")
    if not (_is_number(record["loss_sum"]) and record["loss_sum"] >= 0):
        raise damaged(f"field 'loss_sum' must be a finite number >= 0, got "
                      f"{short_repr(record['loss_sum'])}")
    if "out" in record and not isinstance(record["out"], str):
        raise damaged(f"field 'out' must be a path (a string), got {short_repr(record['out'])}")
    problem = (_history_problem(record["history"], epoch)
               or _rng_state_problem(record["rng_state"])
               or _sha256_problem(record["data_sha256"]))
    if problem:
        raise damaged(problem)
    return config


def _history_problem(history: Any, epochs_done: int) -> str:
    """What is wrong with a checkpoint's `history` (one dict per finished epoch), or ""."""
    if not isinstance(history, list) or len(history) != epochs_done:
        return (f"field 'history' must be a list of the {epochs_done} finished epochs' "
                f"metrics, got {short_repr(history)}")
    for i, entry in enumerate(history):
        where = f"history[{i}]"
        if not isinstance(entry, dict):
            return f"{where} must be a JSON object, got {short_repr(entry)}"
        if entry.get("epoch") != i + 1 or not _is_int(entry.get("epoch")):
            return f"{where}['epoch'] must be {i + 1}, got {short_repr(entry.get('epoch'))}"
        for key in (*_HISTORY_FLOATS, *_HISTORY_OPTIONAL):
            if key not in entry:
                return f"{where} lacks '{key}'"
            value = entry[key]
            if value is None and key in _HISTORY_OPTIONAL:
                continue
            if not (_is_number(value) and value >= 0) or (key.endswith("accuracy") and value > 1):
                wording = "a number in [0, 1]" if key.endswith("accuracy") else \
                    "a finite number >= 0"
                return f"{where}['{key}'] must be {wording}, got {short_repr(value)}"
    return ""


def _rng_state_problem(state: Any) -> str:
    """What is wrong with a saved PCG64 state (numpy's `bit_generator.state`), or ""."""
    expected = ('{"bit_generator": "PCG64", "state": {"state": int, "inc": int}, '
                '"has_uint32": 0 or 1, "uinteger": int}')
    ok = (isinstance(state, dict) and set(state) == {"bit_generator", "state", "has_uint32",
                                                      "uinteger"}
          and state["bit_generator"] == "PCG64"
          and isinstance(state["state"], dict) and set(state["state"]) == {"state", "inc"}
          and all(_is_int(v) and 0 <= v < 2**128 for v in state["state"].values())
          and state["has_uint32"] in (0, 1) and _is_int(state["has_uint32"])
          and _is_int(state["uinteger"]) and 0 <= state["uinteger"] < 2**32)
    if ok:
        try:  # the last word is numpy's
            np.random.PCG64().state = state
        except (TypeError, ValueError, OverflowError):
            ok = False
    return "" if ok else f"field 'rng_state' must be {expected}, got {short_repr(state)}"


def _sha256_problem(sha256: Any) -> str:
    """What is wrong with a record's `data_sha256` (file name -> SHA-256 in hex), or ""."""
    ok = isinstance(sha256, dict) and all(
        isinstance(k, str) and isinstance(v, str) and _HEX_SHA256.fullmatch(v)
        for k, v in sha256.items())
    return "" if ok else ("field 'data_sha256' must map file names to SHA-256 digests "
                          f"(64 hex digits), got {short_repr(sha256)}")
