"""Export a Faster R-CNN as two ONNX graphs that TensorRT 10 and ONNX Runtime run (see engines/split.py).

- `dense.onnx`: images [batch, H, W, 3] (RGB pixels 0..255, normalised in the graph; static H x W, dynamic batch)
  -> per feature level: feature map, RPN objectness, RPN box deltas.
- `roi_heads.onnx`: the feature levels RoIAlign pools from ([batch, C, h, w] each, as dense.onnx gives them) and
  rois [rois, 5] (image index in the batch, x1, y1, x2, y2; dynamic rois) -> class scores [rois, K] and decoded
  boxes [rois, K, 4] (as offsets from the RoI's corners): RoIAlign, the box head and the decoding of its outputs over
  every RoI of a batch in one run.
- `manifest.json`: what the runtime needs to use them (arch, labels, input size, hashes).
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from engines.base import EngineError
from engines.models import LoadedModel
from engines.split import (
    INPUT_LAYOUT,
    DenseStage,
    RoIHeadsStage,
    feature_names,
    input_size_for,
    pooled_levels,
    roi_input_shape,
)

log = logging.getLogger(__name__)

OPSET = 17
DENSE_FILE, ROI_HEADS_FILE, MANIFEST_FILE = "dense.onnx", "roi_heads.onnx", "manifest.json"
#: roi_heads.onnx's outputs (exports before this version gave class logits and box deltas: exported again).
ROI_HEADS_OUTPUTS = ["scores", "box_offsets"]


@dataclass(frozen=True)
class ExportedModel:
    directory: Path
    manifest: dict[str, object]

    @property
    def dense_path(self) -> Path:
        return self.directory / DENSE_FILE

    @property
    def roi_heads_path(self) -> Path:
        return self.directory / ROI_HEADS_FILE

    @property
    def input_size(self) -> tuple[int, int]:
        h, w = self.manifest["input_size"]  # type: ignore[misc]
        return int(h), int(w)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dense_output_names(levels: int) -> list[str]:
    return [f"{kind}_{i}" for kind in ("features", "objectness", "box_deltas") for i in range(levels)]


def export_onnx(
    loaded: LoadedModel, out_dir: str | Path, frame_size: tuple[int, int] = (640, 360), weights: Path | None = None
) -> ExportedModel:
    """Write dense.onnx, roi_heads.onnx and manifest.json for frames of `frame_size` (width, height)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = loaded.model.eval()
    height, width = input_size_for(model, *frame_size)
    names = feature_names(model)
    outputs = dense_output_names(len(names))
    batch_axis = {name: {0: "batch"} for name in ["images", *outputs]}
    with torch.no_grad():
        torch.onnx.export(
            DenseStage(model).eval(), (torch.zeros(2, height, width, 3),), str(out / DENSE_FILE),
            input_names=["images"], output_names=outputs, dynamic_axes=batch_axis,
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
        roi_shape = roi_input_shape(model)
        # Traced on the dense stage's real feature shapes, 2 images and RoIs of both, one of them degenerate.
        levels = DenseStage(model).eval()(torch.zeros(2, height, width, 3))[: len(names)]
        pooled = [levels[i] for i in pooled_levels(model)]
        level_names = [outputs[i] for i in pooled_levels(model)]
        rois = torch.tensor([[0, 0, 0, width, height], [1, 8, 8, 40, 64], [1, 100, 50, 100, 50],
                             [0, 2, 3, 17, 11]], dtype=torch.float32)
        roi_axes = {name: {0: "batch"} for name in level_names}
        roi_axes.update({"rois": {0: "rois"}, **{name: {0: "rois"} for name in ROI_HEADS_OUTPUTS}})
        with warnings.catch_warnings():
            # roi_align's input checks and the level mapper's eps trace as constants: right for a static input size.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                RoIHeadsStage(model, (height, width)).eval(), (*pooled, rois), str(out / ROI_HEADS_FILE),
                input_names=[*level_names, "rois"], output_names=ROI_HEADS_OUTPUTS, dynamic_axes=roi_axes,
                opset_version=OPSET, do_constant_folding=True, dynamo=False,
            )
    # The FPN's upsampling leaves feature sizes symbolic in the traced graph; with a static image size they are
    # static, and shape inference writes that down (TensorRT then needs no shape ranges for them).
    for path in (out / DENSE_FILE, out / ROI_HEADS_FILE):
        onnx.save(onnx.shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True), str(path))
    manifest = {
        "arch": loaded.arch,
        "label_names": list(loaded.label_names),
        "input_size": [height, width],
        "input_layout": INPUT_LAYOUT,
        "frame_size": list(frame_size),
        "feature_names": names,
        "roi_shape": list(roi_shape),
        "roi_heads_outputs": ROI_HEADS_OUTPUTS,
        "opset": OPSET,
        "weights_sha256": file_sha256(weights) if weights else None,
        "dense_sha256": file_sha256(out / DENSE_FILE),
        "roi_heads_sha256": file_sha256(out / ROI_HEADS_FILE),
        "torch": torch.__version__,
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    log.info("exported %s to %s (input %dx%d, dynamic batch)", loaded.arch, out, height, width)
    return ExportedModel(out, manifest)


def load_exported(directory: str | Path) -> ExportedModel:
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EngineError(f"{directory} holds no readable {MANIFEST_FILE}: export the model first") from exc
    if manifest.get("input_layout") != INPUT_LAYOUT:
        raise EngineError(f"{directory} holds an export from an older version (its dense graph takes normalised "
                          f"NCHW images, this version feeds {INPUT_LAYOUT}): export the model again")
    if manifest.get("roi_heads_outputs") != ROI_HEADS_OUTPUTS:
        raise EngineError(f"{directory} holds an export from an older version (its RoI heads graph gives class logits "
                          f"and box deltas, this version takes {' and '.join(ROI_HEADS_OUTPUTS)}): export the model "
                          f"again")
    exported = ExportedModel(directory, manifest)
    for path in (exported.dense_path, exported.roi_heads_path):
        if not path.is_file():
            raise EngineError(f"{path} is missing: export the model again")
    return exported


def cached_export(
    loaded: LoadedModel, weights: Path | None, frame_size: tuple[int, int], cache_dir: Path
) -> ExportedModel:
    """The ONNX export of these weights for this frame size, made once and reused from `cache_dir`."""
    if weights is None:  # random weights: nothing worth caching
        return export_onnx(loaded, tempfile.mkdtemp(prefix="rpn-onnx-"), frame_size)
    # The model's structure (its repr: layer shapes, RoIAlign sampling) is in the key, so that an export made by an
    # earlier version with other inference settings is never reused for these weights.
    structure = hashlib.sha256(repr(loaded.model).encode()).hexdigest()[:8]
    directory = cache_dir / f"{loaded.arch}-{file_sha256(weights)[:16]}-{structure}-{frame_size[0]}x{frame_size[1]}"
    try:
        return load_exported(directory)
    except EngineError:
        return export_onnx(loaded, directory, frame_size, weights)
