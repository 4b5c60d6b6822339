"""A trained network for tools outside anynet: ONNX graphs, and safetensors files.

ONNX: the graph is anynet's own forward pass, traced. `ndonnx` is an Array API library whose
arrays are symbolic: running `anynet.network.forward` and `anynet.functional.softmax` on an
ndonnx input of shape (N, D), N unknown, records every operation, and `ndonnx.build` turns the
record into an ONNX model. There is no hand-written graph to keep in step with the math.

    pixels (N, D) uint8 0..255      (or float32 in [0, 1] with input="float32")
      -> X = pixels / 255 -> logits Z2 = forward(params, X) (N, K)     computed once
      -> probabilities = softmax(Z2) (N, K),  label = argmax(Z2) (N,) int64

The parameters become constants of the graph (in the model's dtype). The model's record
(anynet version, architecture, hyperparameters, test accuracy, ...) goes into the ONNX metadata
properties: one property per top-level entry of the record, each value as JSON, and
"test_accuracy" on its own where the record has it. Every model is checked with `onnx.checker`
before it is written.

Safetensors: `anynet.modelio.save_model_safetensors` (written and read without the package).

Not for: networks that preprocess their images (`anynet.preprocess`; refused), training
graphs or other opsets than ndonnx's default (21), or runtimes' tuning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anynet import functional as F
from anynet.errors import MissingExtraError, UserError
from anynet.fileio import atomic_write_bytes
from anynet.network import TwoLayerNet, forward, pixels_to_inputs

INPUTS = ("uint8", "float32")
INPUT_NAME = "pixels"


def _ndonnx():
    try:
        import ndonnx
        import onnx
    except ImportError:
        raise MissingExtraError("ndonnx and onnx", "onnx", "ONNX export") from None
    return ndonnx, onnx


def onnx_model(net: TwoLayerNet, record: dict | None = None, *, input: str = "uint8") -> Any:
    """The ONNX model (an `onnx.ModelProto`, checked) of `net`, traced through anynet's forward.

    input "uint8": pixels (N, D) 0..255, divided by 255 in the graph as anynet does;
    "float32": inputs (N, D) already in [0, 1]. Outputs: probabilities (N, K) in the net's
    dtype, label (N,) int64. `record` (a model file's record) becomes the metadata properties.
    """
    if input not in INPUTS:
        raise ValueError(f"input must be one of {', '.join(INPUTS)}, not {input!r}")
    if not net.preprocessing.is_none:
        raise UserError(f"the network preprocesses its images ({net.preprocessing}), which an "
                        "ONNX graph of it would not: export it as safetensors (its record "
                        "names the preprocessing), or use it through anynet")
    ndx, onnx = _ndonnx()
    D = net.sizes[0]
    dtype = getattr(ndx, net.dtype)
    params = {k: ndx.asarray(v) for k, v in net.host_params().items()}
    pixels = ndx.argument(shape=("N", D), dtype=getattr(ndx, input))
    if input == "uint8":
        X = pixels_to_inputs(pixels, dtype)
    else:
        X = ndx.astype(pixels, dtype)
    Z2, _cache = forward(params, X)                     # the forward pass, once
    outputs = {"probabilities": F.softmax(Z2), "label": ndx.argmax(Z2, axis=-1)}
    model = ndx.build({INPUT_NAME: pixels}, outputs)
    record = dict(record or {})
    record.setdefault("input", {"name": INPUT_NAME, "dtype": input,
                                "range": "0..255" if input == "uint8" else "[0, 1]"})
    properties = {k: json.dumps(v, sort_keys=True) for k, v in record.items()}
    metrics = record.get("metrics")
    if isinstance(metrics, dict) and "test_accuracy" in metrics:
        properties["test_accuracy"] = json.dumps(metrics["test_accuracy"])
    onnx.helper.set_model_props(model, properties)
    model.producer_name = "anynet"
    model.producer_version = str(record.get("anynet_version", ""))
    model.doc_string = (f"anynet {net.sizes[0]}-{net.sizes[1]}-{net.sizes[2]} network: "
                        f"{INPUT_NAME} (N, {D}) {input} -> probabilities (N, {net.sizes[2]}), "
                        "label (N,)")
    onnx.checker.check_model(model, full_check=True)
    return model


def save_onnx(path: str | Path, net: TwoLayerNet, record: dict | None = None, *,
              input: str = "uint8") -> None:
    """Write `onnx_model(net, record, input=input)` to `path`, atomically."""
    atomic_write_bytes(path, onnx_model(net, record, input=input).SerializeToString())
