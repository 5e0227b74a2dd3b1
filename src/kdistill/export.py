"""Deployment formats: ONNX export with a parity check, and int8 by ONNX Runtime's dynamic
quantization (weights int8, activations quantized on the fly)."""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from .engine import Images, predict_logits
from .errors import KdistillError

if TYPE_CHECKING:  # onnxruntime takes ~0.1 s to import: only the commands that use it do
    import onnxruntime as ort

PARITY_TOLERANCE = 1e-4  # max |Δlogit| between PyTorch and ONNX Runtime on the test set


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Write ``model`` as ONNX (dynamic batch) atomically; the TorchScript exporter needs no
    extra packages."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        model.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter
            torch.onnx.export(model, (example[:1],), tmp, dynamo=False, input_names=["images"],
                              output_names=["logits"], dynamic_axes={"images": {0: "batch"},
                                                                     "logits": {0: "batch"}})
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def quantize_int8(onnx_path: str | Path, out_path: str | Path) -> Path:
    """Dynamic int8 quantization of an ONNX model's linear layers (MatMul, Gemm) with ONNX
    Runtime's quantizer; convolutions stay fp32, as in PyTorch's ``quantize_dynamic`` (ONNX
    Runtime's dynamic ConvInteger ran several times slower than fp32 here)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the quantizer logs advice on the root logger
    try:
        quantize_dynamic(str(onnx_path), str(tmp), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
        os.replace(tmp, out_path)
    finally:
        quiet.setLevel(level)
        tmp.unlink(missing_ok=True)
    return out_path


def ort_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session using the same thread count as torch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # No busy-waiting between calls: spinning threads would steal the cores from whatever is
    # timed next (the PyTorch models timed in rotation with them).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_call(session: ort.InferenceSession) -> Callable[[np.ndarray], np.ndarray]:
    """``session``'s logits for a batch of images, called as a server would: the output named
    and one ``RunOptions`` object reused for every call: less overhead a call than
    ``run(None, ...)``, which shows in a small student's batch-1 latency."""
    import onnxruntime as ort

    options = ort.RunOptions()
    outputs = ["logits"]
    return lambda images: session.run(outputs, {"images": images}, options)[0]


def ort_logits(session: ort.InferenceSession, data: Images, batch_size: int = 1000) -> np.ndarray:
    call = ort_call(session)
    return np.concatenate([call(data.inputs(slice(i, i + batch_size)).numpy())
                           for i in range(0, len(data), batch_size)])


def check_parity(model: nn.Module, session, data: Images) -> dict:
    """Max |Δlogit| and prediction agreement of ONNX Runtime against PyTorch on ``data``."""
    return parity(predict_logits(model, data).numpy(), ort_logits(session, data))


def parity(reference: np.ndarray, exported: np.ndarray) -> dict:
    """:func:`check_parity` on logits already computed by PyTorch (``reference``) and ONNX Runtime;
    raises when they differ by more than the tolerance or in any prediction."""
    n = len(reference)
    delta = float(np.abs(reference - exported).max())
    same = int((reference.argmax(1) == exported.argmax(1)).sum())
    result = {"max_abs_logit_diff": delta, "identical_predictions": same == n,
              "differing_predictions": n - same}
    if delta > PARITY_TOLERANCE or same != n:
        raise KdistillError(f"ONNX export differs from PyTorch: max |Δlogit| {delta:.2e}, "
                            f"{n - same} predictions differ",
                            "report this model; the exporter may not support one of its ops")
    return result
