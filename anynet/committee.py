"""Committees: several trained networks that classify together by averaging their probabilities.

For members m = 1..M with logits Z_m (N, K) and probabilities P_m = softmax(Z_m), the committee
gives each example the mean probability and predicts its most probable class:

    P = (1/M) sum_m P_m,        prediction = argmax_k P[:, k]

Members may differ in hidden width H, dtype and how they were trained (seed, epochs, learning
rate, ...), but must agree on the inputs D and the classes K. They compute on one backend, each
in its own dtype; the committee's dtype is the widest of theirs (float64 if any member is).

`Committee` looks like a `TwoLayerNet` to the code that scores networks (`sizes`, `backend`,
`xp`, `labels`, `forward`, `predict_proba`, `predict`), so `anynet.evaluation.evaluate` and
`ranked_classes` take a committee as they take one network. Its `forward` gives scores S whose
softmax is the committee's probabilities: a member's own logits for a committee of one (so it
computes exactly what that network computes, bit for bit), else the log of the mean
probability, through log-sum-exp over the members (finite where a P_m underflows to 0):

    S = log P = logaddexp_m(log_softmax(Z_m)) - log M,      softmax(S) = P   (P sums to 1)

`load_committee` reads the members' files through `anynet.modelio.load_model` (every hostile-file
guarantee of one model file holds for each), and bounds the committee itself: at most
MAX_MEMBERS files, counted before any is opened; MAX_PARAM_ELEMENTS parameters in all (one
file's own bound, so the members read before a refusal hold at most twice one file's); no file
twice.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anynet import functional as F
from anynet.backend import to_numpy
from anynet.errors import UserError

# A committee's gain levels off after some ten members (their errors become alike); 100 is far
# beyond any use and costs at most 100 small file reads. More is refused before any file opens,
# so a command line of 10,000 files is one line, not 10,000 reads.
MAX_MEMBERS = 100


@dataclass(frozen=True)
class Member:
    """What a committee knows of one member: where it came from (`name`, a file) and its
    record (the model file's JSON record; empty for a network built in Python)."""

    name: str
    record: dict


class Committee:
    """Networks (TwoLayerNet) on one backend that agree on D and K, voting by their mean
    probability. `names` (default "member 1", ...) and `records` describe them; every
    disagreement (no member, too many, another backend, another D or K) is a UserError naming
    the two members."""

    def __init__(self, members: Sequence[Any], names: Sequence[str] | None = None,
                 records: Sequence[dict] | None = None):
        members = list(members)
        names = [str(n) for n in names] if names is not None else \
            [f"member {i + 1}" for i in range(len(members))]
        records = list(records) if records is not None else [{} for _ in members]
        if not members:
            raise UserError("a committee needs at least one model")
        check_count(len(members))
        if len(names) != len(members) or len(records) != len(members):
            raise ValueError("a committee needs one name and one record per member")
        for net, name in zip(members[1:], names[1:], strict=True):
            check_agreement(members[0], net, names[0], name)
        self.members = members
        self.about = [Member(n, r) for n, r in zip(names, records, strict=True)]

    def __len__(self) -> int:
        return len(self.members)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.about]

    @property
    def backend(self):
        return self.members[0].backend

    @property
    def xp(self):
        return self.backend.xp

    @property
    def dtype(self) -> str:
        """The widest of the members' dtypes: float64 if any member computes in it."""
        dtypes = {net.dtype for net in self.members}
        return "float64" if "float64" in dtypes else "float32"

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(D, H, K) with H the widest member's: what bounds the memory of a forward pass, as
        one member runs at a time (`anynet.evaluation.chunk_size`)."""
        D, _, K = self.members[0].sizes
        return D, max(net.sizes[1] for net in self.members), K

    def labels(self, t: Any) -> Any:
        return self.members[0].labels(t)

    def _own(self, X: Any) -> Any:
        """X on the committee's backend, moved there once for all the members."""
        return X if self.backend.holds(X) else self.backend.asarray(to_numpy(X))

    def forward(self, X: Any) -> Any:
        """Scores S (N, K) with softmax(S) = the committee's probabilities: the one member's
        logits, or log of the mean probability (module docstring). X (N, D) pixels or floats."""
        if len(self.members) == 1:
            return self.members[0].forward(X)
        xp, X = self.xp, self._own(X)
        dtype = self.backend.dtype(self.dtype)
        first, *rest = self.members
        total = xp.astype(F.log_softmax(first.forward(X)), dtype)
        for net in rest:
            total = xp.logaddexp(total, xp.astype(F.log_softmax(net.forward(X)), dtype))
        return total - math.log(len(self.members))

    def predict_proba(self, X: Any) -> Any:
        """The committee's probabilities (N, K): the mean of the members' softmax outputs,
        in the committee's dtype (a committee of one: its member's, exactly)."""
        if len(self.members) == 1:
            return self.members[0].predict_proba(X)
        xp, X = self.xp, self._own(X)
        dtype = self.backend.dtype(self.dtype)
        first, *rest = self.members
        total = xp.astype(first.predict_proba(X), dtype)
        for net in rest:
            total = total + xp.astype(net.predict_proba(X), dtype)
        return total / len(self.members)

    def predict(self, X: Any) -> Any:
        """The committee's class for each example (N,): argmax of the mean probability."""
        return self.xp.argmax(self.forward(X), axis=-1)


def check_agreement(a: Any, b: Any, name_a: str, name_b: str) -> None:
    """Refuse, in one line naming both, networks `a` and `b` (named `name_a`, `name_b`) that
    cannot vote together: other inputs D, other classes K, another backend or device. Their
    hidden widths and dtypes may differ."""
    (Da, _, Ka), (Db, _, Kb) = a.sizes, b.sizes
    if Da != Db:
        problem = f"{name_a} takes {Da} inputs, {name_b} {Db} (members must agree on inputs)"
    elif Ka != Kb:
        problem = f"{name_a} has {Ka} classes, {name_b} {Kb} (members must agree on classes)"
    elif a.backend.spec != b.backend.spec:
        problem = f"{name_a} computes on {a.backend.spec}, {name_b} on {b.backend.spec}"
    else:
        return
    raise UserError(f"{name_a} and {name_b} cannot form a committee: {problem}")


def check_count(n: int) -> None:
    """Refuse more than MAX_MEMBERS members, before any is read."""
    if n > MAX_MEMBERS:
        raise UserError(f"{n:,} model files: a committee has at most {MAX_MEMBERS} members "
                        "(its gain levels off after about ten); name fewer files")


def load_committee(paths: Sequence[str | Path], *, backend: Any = "numpy") -> Committee:
    """Read the model files `paths` (each through `anynet.modelio.load_model`, on `backend`)
    as a committee, in the order given. UserError (one line) for more than MAX_MEMBERS files,
    a file named twice, members whose parameters together exceed MAX_PARAM_ELEMENTS, members
    that disagree on D or K (naming the two files), or any file `load_model` refuses."""
    from anynet.backend import get_backend
    from anynet.modelio import MAX_PARAM_ELEMENTS, load_model

    paths = list(paths)
    check_count(len(paths))
    seen: dict[str, str] = {}
    for path in paths:
        key = os.path.realpath(path)  # a link to a member is that member (a loop: no error)
        if key in seen:
            again = "named twice" if seen[key] == str(path) else f"the file {seen[key]} again"
            raise UserError(f"{path} is {again}; a committee counts each model once: name each "
                            "file once")
        seen[key] = str(path)
    backend = get_backend(backend)  # opened once for every member
    nets: list = []
    records: list[dict] = []
    total = 0
    for path in paths:
        net, record = load_model(path, backend=backend)
        D, H, K = net.sizes
        total += D * H + H + H * K + K
        if total > MAX_PARAM_ELEMENTS:
            raise UserError(f"{path}: the committee's members up to it hold {total:,} "
                            f"parameters, more than the {MAX_PARAM_ELEMENTS:,} anynet reads for "
                            "one committee (as for one model file); name fewer or smaller models")
        if nets:  # refused now, before the other files are read
            check_agreement(nets[0], net, str(paths[0]), str(path))
        nets.append(net)
        records.append(record)
    return Committee(nets, [str(p) for p in paths], records)


def rank_pictures(committee: Committee, pixels: Any) -> tuple[list, list]:
    """(the committee's ranking of every picture's classes, each member's alone), as
    `anynet.evaluation.ranked_classes` gives them: pixels (N, D) -> N lists of K {"class",
    "probability"}, most probable first, and M such lists of lists. NonFiniteOutputs, its
    `member` the index of the first member whose outputs overflow, names the picture."""
    from anynet.evaluation import NonFiniteOutputs, ranked_classes

    alone = []
    for index, net in enumerate(committee.members):
        try:
            alone.append(ranked_classes(net, pixels))
        except NonFiniteOutputs as e:
            raise NonFiniteOutputs(e.row, index) from None
    together = alone[0] if len(committee) == 1 else ranked_classes(committee, pixels)
    return together, alone


@dataclass
class CommitteeEvaluation:
    """`anynet.evaluation.evaluate` of a committee (`committee`) and of each member alone
    (`members`, in the committee's order)."""

    committee: Any
    members: list


def evaluate_committee(committee: Committee, images: Any, labels: Any, *,
                       confusion: bool = False, n_wrong: int = 0) -> CommitteeEvaluation:
    """The committee's evaluation on a labelled set (with its confusion matrix and most
    confidently wrong examples when asked) and each member's loss and accuracy alone."""
    from anynet.evaluation import evaluate

    whole = evaluate(committee, images, labels, confusion=confusion, n_wrong=n_wrong)
    alone = [evaluate(net, images, labels) for net in committee.members] \
        if len(committee) > 1 else [whole]
    return CommitteeEvaluation(whole, alone)
