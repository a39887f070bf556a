"""Faster R-CNN split for accelerated backends: the dense part in ONNX Runtime or TensorRT, the rest in torchvision.

The dense part (backbone, FPN if any, RPN head) holds nearly all the FLOPs and exports cleanly with a static image
size and a dynamic batch. Proposal selection (anchor decoding, top-k, NMS), RoIAlign and detection post-processing
stay as torchvision ops around it: they are data-dependent, cheap, and this keeps the backends in parity with the
eager reference. The box head (two FC layers + predictor) is exported as a second small graph with a dynamic RoI
dimension. docs/model.md describes the split.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.models.detection.transform import resize_boxes

from engines.base import Detections, Detector
from engines.models import LoadedModel

#: Runs one exported graph: input tensor in, output tensors out (in the graph's output order).
GraphRunner = Callable[[Tensor], Sequence[Tensor]]


class DenseStage(nn.Module):
    """Backbone (+FPN) and RPN head: normalized image batch -> (features..., objectness..., box deltas...)."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.rpn_head = model.rpn.head

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        features = self.backbone(images)
        levels = [features] if isinstance(features, Tensor) else list(features.values())
        objectness, deltas = self.rpn_head(levels)
        return (*levels, *objectness, *deltas)


class BoxHeadStage(nn.Module):
    """Box head and predictor: RoI-pooled features [R, C, s, s] -> (class logits [R, K], box deltas [R, 4K])."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.box_head = model.roi_heads.box_head
        self.box_predictor = model.roi_heads.box_predictor

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        return self.box_predictor(self.box_head(pooled))


def feature_names(model: FasterRCNN) -> list[str]:
    """Names of the backbone's feature maps, in order (what RoIAlign is told to pool from)."""
    with torch.no_grad():
        out = model.backbone(torch.zeros(1, 3, 64, 64))
    return ["0"] if isinstance(out, Tensor) else list(out.keys())


def input_size_for(model: FasterRCNN, frame_width: int, frame_height: int) -> tuple[int, int]:
    """The static engine input (height, width): frames of this size resized by the model's rule, padded to /32."""
    transform = model.transform
    scale = min(transform.min_size[-1] / min(frame_width, frame_height), transform.max_size / max(frame_width, frame_height))
    div = transform.size_divisible
    return (
        int(math.ceil(math.floor(frame_height * scale) / div) * div),
        int(math.ceil(math.floor(frame_width * scale) / div) * div),
    )


def roi_input_shape(model: FasterRCNN) -> tuple[int, int, int]:
    """(channels, height, width) of one RoI-pooled feature, the box head's input."""
    channels = model.backbone.out_channels
    size = model.roi_heads.box_roi_pool.output_size
    h, w = (size, size) if isinstance(size, int) else size
    return channels, int(h), int(w)


class SplitDetector(Detector):
    """Detector whose dense part and box head run in an accelerated backend."""

    def __init__(
        self,
        loaded: LoadedModel,
        run_dense: GraphRunner,
        run_box_head: GraphRunner,
        input_size: tuple[int, int],
        backend: str,
        score_threshold: float = 0.5,
        max_batch: int | None = None,
    ) -> None:
        self.model = loaded.model.eval()
        self.arch = loaded.arch
        self.label_names = loaded.label_names
        self.trained = loaded.trained
        self.backend = backend
        self.run_dense = run_dense
        self.run_box_head = run_box_head
        self.input_size = input_size
        self.score_threshold = score_threshold
        self.max_batch = max_batch
        self.feature_names = feature_names(self.model)

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        step = self.max_batch or len(images) or 1
        results: list[Detections] = []
        for i in range(0, len(images), step):
            results.extend(self._detect_batch(images[i : i + step]))
        return results

    @torch.inference_mode()
    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        batch, sizes = self.preprocess(images)
        outputs = list(self.run_dense(batch))
        n = len(self.feature_names)
        levels, objectness, deltas = outputs[:n], outputs[n : 2 * n], outputs[2 * n : 3 * n]
        rpn, roi_heads = self.model.rpn, self.model.roi_heads
        image_list = ImageList(batch, sizes)
        # The eval branch of torchvision's RegionProposalNetwork.forward, after its head.
        anchors = rpn.anchor_generator(image_list, levels)
        num_anchors_per_level = [o[0].numel() for o in objectness]
        objectness_flat, deltas_flat = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(deltas_flat, anchors).view(len(images), -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, objectness_flat, sizes, num_anchors_per_level)
        # The eval branch of RoIHeads.forward, with the box head in the backend.
        features = OrderedDict(zip(self.feature_names, levels))
        pooled = roi_heads.box_roi_pool(features, boxes, sizes)
        class_logits, box_regression = self.run_box_head(pooled)
        det_boxes, det_scores, det_labels = roi_heads.postprocess_detections(class_logits, box_regression, boxes, sizes)
        results = []
        for img, b, s, l, size in zip(images, det_boxes, det_scores, det_labels, sizes):
            keep = s >= self.score_threshold
            b = resize_boxes(b[keep], size, img.shape[:2])
            results.append(Detections(b.numpy().astype(np.float32), s[keep].numpy(), l[keep].numpy().astype(np.int64)))
        return results

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalize and resize like GeneralizedRCNNTransform; pad into the static input (letterbox if needed)."""
        transform = self.model.transform
        height, width = self.input_size
        batch = torch.zeros(len(images), 3, height, width)
        sizes = []
        for i, img in enumerate(images):
            x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255)
            x = transform.normalize(x)
            h, w = img.shape[:2]
            scale = min(transform.min_size[-1] / min(h, w), transform.max_size / max(h, w))
            if math.floor(h * scale) > height or math.floor(w * scale) > width:
                scale = min(height / h, width / w)  # another aspect ratio than the engine's: letterbox
            x = nn.functional.interpolate(
                x[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
            )[0]
            batch[i, :, : x.shape[1], : x.shape[2]] = x
            sizes.append((int(x.shape[1]), int(x.shape[2])))
        return batch, sizes


def torch_runners(model: FasterRCNN) -> tuple[GraphRunner, GraphRunner]:
    """The split graphs run in eager PyTorch: the reference the exported graphs are checked against."""
    return DenseStage(model).eval(), BoxHeadStage(model).eval()
