"""INT8 for ONNX Runtime: static quantization of the dense graph, calibrated on real frames, gated by accuracy.

`quantize_dense` calibrates `dense.onnx` on frames (the user's cameras, or held-in synthetic scenes) with ONNX
Runtime's static quantization (QDQ, per-channel int8 weights, uint8 activations, the format ONNX Runtime's CPU
kernels run fastest) and writes `dense.int8.onnx` next to it. Whether it may be used is decided outside the runtime,
by mAP on held-out scenes (lab/quantize.py): the verdict is stored in the export's `int8.json`, and
`int8_dense_path` refuses an INT8 graph that was never judged or that missed the accuracy bar, saying why.
The box head stays in fp32: it is a few percent of the work, and its logits decide the scores.
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from engines.base import EngineError
from engines.export import ExportedModel, file_sha256

log = logging.getLogger(__name__)

INT8_DENSE_FILE, INT8_VERDICT_FILE = "dense.int8.onnx", "int8.json"
#: The most mAP@0.5 INT8 may lose against fp32 on held-out scenes to be used.
MAX_MAP50_DROP = 0.005


class _Batches:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed batches (duck-typed: get_next/rewind)."""

    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self.batches = batches
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {"images": batch}

    def rewind(self) -> None:
        self._it = iter(self.batches)


def quantize_dense(exported: ExportedModel, calibration: Sequence[np.ndarray], method: str = "minmax") -> Path:
    """Write `dense.int8.onnx`, calibrated on `calibration`: dense-graph inputs ([N, H, W, 3] float pixels)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise EngineError(f"unknown calibration method {method!r}; choose one of: {', '.join(methods)}")
    if not calibration:
        raise EngineError("INT8 calibration needs frames; none were given")
    out = exported.directory / INT8_DENSE_FILE
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "dense.prepared.onnx"
        quant_pre_process(str(exported.dense_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), _Batches(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=methods[method],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    log.info("INT8 dense graph calibrated on %d batches (%s): %s", len(calibration), method, out)
    return out


def write_verdict(exported: ExportedModel, map50_fp32: float, map50_int8: float, calibration: str) -> bool:
    """Record the accuracy check of `dense.int8.onnx`; True if INT8 is accepted (drop <= MAX_MAP50_DROP)."""
    accepted = map50_fp32 - map50_int8 <= MAX_MAP50_DROP
    verdict = {"accepted": accepted, "map50_fp32": map50_fp32, "map50_int8": map50_int8,
               "max_drop": MAX_MAP50_DROP, "calibration": calibration,
               "dense_sha256": exported.manifest.get("dense_sha256"),
               "int8_sha256": file_sha256(exported.directory / INT8_DENSE_FILE)}
    (exported.directory / INT8_VERDICT_FILE).write_text(json.dumps(verdict, indent=2))
    return accepted


def int8_dense_path(exported: ExportedModel) -> Path:
    """The accepted INT8 dense graph of this export; EngineError saying why not otherwise."""
    path, verdict_path = exported.directory / INT8_DENSE_FILE, exported.directory / INT8_VERDICT_FILE
    how = ("calibrate and check it: python -m lab.quantize --weights WEIGHTS [--calibration-video FILE ...] "
           f"(writes {path})")
    if not path.is_file() or not verdict_path.is_file():
        raise EngineError(f"engine.precision int8: {exported.directory} has no checked INT8 graph; {how}")
    verdict = json.loads(verdict_path.read_text())
    if verdict.get("int8_sha256") != file_sha256(path) or verdict.get("dense_sha256") != exported.manifest.get(
            "dense_sha256"):
        raise EngineError(f"engine.precision int8: {path} is not the graph that was checked; {how}")
    if not verdict.get("accepted"):
        raise EngineError(
            f"engine.precision int8 refused: on held-out scenes INT8 scores mAP@0.5 {verdict['map50_int8']:.4f} "
            f"against {verdict['map50_fp32']:.4f} in fp32, a drop above {verdict['max_drop']}; calibrate on more "
            "or more typical frames (--calibration-video from your cameras), or use precision fp32"
        )
    return path
