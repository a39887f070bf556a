"""ONNX Runtime backend (CPU): the exported graphs in ONNX Runtime (all cores), the glue in torchvision."""
from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from engines.base import PRECISIONS, EngineError
from engines.export import ExportedModel
from engines.models import LoadedModel
from engines.split import GraphRunner, SplitDetector

log = logging.getLogger(__name__)


def _session(path: str, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    # Between runs, torchvision ops (proposals, RoIAlign, NMS) need the cores: ONNX Runtime's threads must not
    # keep spinning on them, waiting for the next run.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _runner(session: ort.InferenceSession) -> GraphRunner:
    input_names = [i.name for i in session.get_inputs()]

    def run(*xs: Tensor) -> list[Tensor]:
        feeds = {name: np.ascontiguousarray(x.numpy(), dtype=np.float32) for name, x in zip(input_names, xs)}
        return [torch.from_numpy(o) for o in session.run(None, feeds)]

    return run


def create_onnxruntime_detector(
    loaded: LoadedModel, exported: ExportedModel, score_threshold: float = 0.5, threads: int | None = None,
    precision: str = "fp32",
) -> SplitDetector:
    """`precision` int8 runs the calibrated INT8 dense graph, if its accuracy check accepted it (engines/quantize.py)."""
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r} for onnxruntime; choose one of: {', '.join(PRECISIONS)}")
    dense_path = exported.dense_path
    if precision == "int8":
        from engines.quantize import int8_dense_path

        dense_path = int8_dense_path(exported)
    dense = _session(str(dense_path), threads)
    roi_heads = _session(str(exported.roi_heads_path), threads)
    return SplitDetector(
        loaded, _runner(dense), _runner(roi_heads), exported.input_size, "onnxruntime", score_threshold=score_threshold
    )
