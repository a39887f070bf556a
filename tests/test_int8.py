"""INT8 for ONNX Runtime: a calibrated dense graph that finds what fp32 finds, used only once its accuracy check
accepted it; otherwise the engine refuses and says why."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.base import EngineError
from engines.export import export_onnx
from engines.models import build_model, default_weights
from engines.onnx_backend import create_onnxruntime_detector
from engines.quantize import quantize_dense, write_verdict
from lab.synth import SceneSpec, render_frames


def test_int8_is_refused_until_accepted_and_then_finds_what_fp32_finds(tmp_path: Path) -> None:
    loaded = build_model("fasterrcnn_lite", default_weights("fasterrcnn_lite"))
    exported = export_onnx(loaded, tmp_path / "export")
    fp32 = create_onnxruntime_detector(loaded, exported, score_threshold=0.5)
    with pytest.raises(EngineError, match="no checked INT8 graph.*lab.quantize"):
        create_onnxruntime_detector(loaded, exported, precision="int8")

    calibration = [rgb for rgb, _ in render_frames(SceneSpec(width=640, height=360, frames=8), seed=500)]
    quantize_dense(exported, [fp32.preprocess(calibration[i : i + 4])[0].numpy() for i in (0, 4)])
    with pytest.raises(EngineError, match="no checked INT8 graph"):
        create_onnxruntime_detector(loaded, exported, precision="int8")
    assert not write_verdict(exported, map50_fp32=0.95, map50_int8=0.93, calibration="test")
    with pytest.raises(EngineError, match="refused: .* 0.9300 against 0.9500"):
        create_onnxruntime_detector(loaded, exported, precision="int8")

    assert write_verdict(exported, map50_fp32=0.95, map50_int8=0.949, calibration="test")
    int8 = create_onnxruntime_detector(loaded, exported, score_threshold=0.5, precision="int8")
    held_out = [rgb for rgb, _ in render_frames(SceneSpec(width=640, height=360, frames=4), seed=1100)]
    for want, got in zip(fp32.detect(held_out), int8.detect(held_out)):
        assert len(want) > 0 and abs(len(want) - len(got)) <= 1
        for box in want.boxes:  # every fp32 object is found by int8 too, within a few pixels
            assert np.abs(got.boxes - box).max(axis=1).min() < 8
