"""Faster R-CNN split for accelerated backends: two graphs in ONNX Runtime or TensorRT, the glue in torchvision.

The dense part (backbone, FPN if any, RPN head) holds nearly all the FLOPs and exports cleanly with a static image
size and a dynamic batch. The RoI heads graph takes the pooled feature levels and every RoI of the batch at once
(RoIAlign, as torchvision's MultiScaleRoIAlign, then the box head and predictor) with a dynamic RoI dimension.
Proposal selection (anchor decoding, top-k, NMS) and detection post-processing stay as torchvision ops between them:
they are data-dependent and cheap, and this keeps the backends in parity with the eager reference. docs/model.md
describes the split.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import batched_nms, nms, roi_align
from torchvision.ops.poolers import _onnx_merge_levels, _setup_scales

from engines.base import Detections, Detector
from engines.models import ChannelProjectedRoIAlign, LoadedModel

#: The parts of `SplitDetector.detect`, in order, as `timings` names them.
PARTS: tuple[str, ...] = ("preprocess", "dense", "proposals", "roi_heads", "postprocess")

#: Runs one exported graph: input tensors in (in the graph's input order), output tensors out (in its output order).
GraphRunner = Callable[..., Sequence[Tensor]]


#: The dense graph's input: float32 [batch, H, W, 3] RGB pixel values 0..255, as decoded (normalised in the graph).
INPUT_LAYOUT = "NHWC-RGB-0-255"


class DenseStage(nn.Module):
    """Normalisation, backbone (+FPN) and RPN head: pixel batch -> (features..., objectness..., box deltas...).

    Normalisation is in the graph (one fused pass in the backend instead of three on the CPU); the input is the
    decoded pixels, [N, H, W, 3] float 0..255 (see INPUT_LAYOUT).
    """

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.rpn_head = model.rpn.head
        mean = torch.tensor(model.transform.image_mean, dtype=torch.float32)
        std = torch.tensor(model.transform.image_std, dtype=torch.float32)
        # (x / 255 - mean) / std as one multiply-add: x * scale + shift.
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, pixels: Tensor) -> Tensor:
        """[N, H, W, 3] pixels 0..255 -> the normalised [N, 3, H, W] batch the backbone takes."""
        return pixels.permute(0, 3, 1, 2) * self.scale + self.shift

    def forward(self, pixels: Tensor) -> tuple[Tensor, ...]:
        features = self.backbone(self.normalize(pixels))
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


class RoIHeadsStage(nn.Module):
    """RoIAlign, the box head and its outputs' decoding in one graph: (pooled feature levels..., rois [R, 5]) ->
    (class scores [R, K], box corner offsets [R, K, 4]).

    Each row of `rois` is (index of the image in the batch, x1, y1, x2, y2) in input pixels, as torchvision's
    roi_align takes them: all RoIs of a batch in one call. RoIAlign is torchvision's MultiScaleRoIAlign with the
    scales and FPN level mapper it infers for the static input size; it exports as ONNX RoiAlign (opset 16+:
    `output_half_pixel`, i.e. aligned=False), and with several levels as torchvision's own ONNX level merge.
    Where the model projects the feature maps before pooling (ChannelProjectedRoIAlign), the graph does too.
    The class scores are the softmax of the predictor's logits. The boxes are its per-class deltas applied to the RoI
    (torchvision's BoxCoder), as offsets in input pixels from the RoI's own corners: `rois[:, None, 1:] + offsets`
    are the boxes RoIHeads.postprocess_detections starts from. Offsets are small numbers, so they keep their
    precision where TensorRT computes in FP16 (absolute coordinates of a 1333-pixel input would be off by up to 0.5).
    """

    def __init__(self, model: FasterRCNN, input_size: tuple[int, int]) -> None:
        super().__init__()
        pool = model.roi_heads.box_roi_pool
        # Feature maps to the channels RoIAlign pools, where the model projects them first (inference_settings).
        self.projection = pool.projection if isinstance(pool, ChannelProjectedRoIAlign) else nn.Identity()
        self.box_head = BoxHeadStage(model)
        self.box_coder = model.roi_heads.box_coder
        self.num_classes = int(model.roi_heads.box_predictor.cls_score.out_features)  # a static dim of the outputs
        self.output_size = tuple(pool.output_size)
        self.sampling_ratio = int(pool.sampling_ratio)
        height, width = input_size
        with torch.no_grad():
            features = model.backbone(torch.zeros(1, 3, height, width))
        levels = {"0": features} if isinstance(features, Tensor) else features
        self.level_names = [name for name in levels if name in pool.featmap_names]
        self.scales, self.mapper = _setup_scales(
            [levels[name] for name in self.level_names], [input_size], pool.canonical_scale, pool.canonical_level
        )

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        levels, rois = [self.projection(level) for level in inputs[:-1]], inputs[-1]
        if len(levels) == 1:
            pooled = roi_align(levels[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        else:  # torchvision's _multiscale_roi_align on a batch's rois, with its ONNX-exportable merge
            level_of = self.mapper([rois[:, 1:]])
            pooled = _onnx_merge_levels(level_of, [
                roi_align(feature, rois[torch.where(level_of == level)[0]], self.output_size, scale,
                          self.sampling_ratio)
                for level, (feature, scale) in enumerate(zip(levels, self.scales))
            ])
        class_logits, box_deltas = self.box_head(pooled)
        boxes = self.box_coder.decode_single(box_deltas, rois[:, 1:]).reshape(-1, self.num_classes, 4)
        return nn.functional.softmax(class_logits, -1), boxes - rois[:, None, 1:]


def pooled_levels(model: FasterRCNN) -> list[int]:
    """Indexes (among the dense graph's feature outputs) of the levels RoIAlign pools from."""
    featmap_names = model.roi_heads.box_roi_pool.featmap_names
    return [i for i, name in enumerate(feature_names(model)) if name in featmap_names]


def rois_of(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image boxes -> one [R, 5] tensor of (image index, x1, y1, x2, y2), the RoI heads graph's input."""
    index = torch.cat([torch.full((len(b), 1), float(i)) for i, b in enumerate(boxes)])
    return torch.cat([index, torch.cat(list(boxes))], dim=1)


def clip_to_images(boxes: Tensor, sizes: Sequence[tuple[int, int]], image_of: Tensor) -> Tensor:
    """torchvision's clip_boxes_to_image for a whole batch: boxes [R, ..., 4] (x1, y1, x2, y2), row r clipped to
    image `image_of[r]`, whose (height, width) is in `sizes`."""
    limits = torch.tensor([[w, h, w, h] for h, w in sizes], dtype=boxes.dtype)[image_of]
    return boxes.clamp(min=0).minimum(limits.view(len(limits), *([1] * (boxes.dim() - 2)), 4))


def nms_by_run(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's `batched_nms` (boxes of different groups never suppress each other; kept indices, best first)
    for groups that each lie in one run of consecutive rows, as the proposals of one image and level do: one `nms`
    per run, on a slice. `batched_nms` finds each group's rows by a mask over all of them instead (on a CPU above
    1000 boxes), which took twice as long on a batch of 4 frames."""
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64)
    counts = torch.unique_consecutive(groups, return_counts=True)[1].tolist()
    if len(counts) == 1:
        return nms(boxes, scores, iou_threshold)  # already best first
    keep, start = [], 0
    for count in counts:
        keep.append(nms(boxes[start : start + count], scores[start : start + count], iou_threshold) + start)
        start += count
    kept = torch.cat(keep)
    return kept[scores[kept].argsort(descending=True, stable=True)]


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


def resize_scale(model: FasterRCNN, width: int, height: int, input_size: tuple[int, int] | None = None) -> float:
    """GeneralizedRCNNTransform's resize factor for a frame; letterboxed into `input_size` (h, w) if it exceeds it."""
    transform = model.transform
    scale = min(transform.min_size[-1] / min(width, height), transform.max_size / max(width, height))
    if input_size is not None and (math.floor(height * scale) > input_size[0] or math.floor(width * scale) > input_size[1]):
        scale = min(input_size[0] / height, input_size[1] / width)  # another aspect ratio than the engine's
    return scale


def resized_size(
    model: FasterRCNN, width: int, height: int, input_size: tuple[int, int] | None = None
) -> tuple[int, int]:
    """(width, height) of a frame after the model's resize: the size the decoder should deliver frames in."""
    scale = resize_scale(model, width, height, input_size)
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def roi_input_shape(model: FasterRCNN) -> tuple[int, int, int]:
    """(channels, height, width) of one RoI-pooled feature, the box head's input."""
    pool = model.roi_heads.box_roi_pool
    projected = isinstance(pool, ChannelProjectedRoIAlign)
    channels = pool.projection.out_channels if projected else model.backbone.out_channels
    size = pool.output_size
    h, w = (size, size) if isinstance(size, int) else size
    return channels, int(h), int(w)


class SplitDetector(Detector):
    """Detector whose dense part and box head run in an accelerated backend."""

    def __init__(
        self,
        loaded: LoadedModel,
        run_dense: GraphRunner,
        run_roi_heads: GraphRunner,
        input_size: tuple[int, int],
        backend: str,
        score_threshold: float = 0.5,
        max_batch: int | None = None,
        glue_threads: int | None = 1,
    ) -> None:
        self.model = loaded.model.eval()
        self.arch = loaded.arch
        self.label_names = loaded.label_names
        self.trained = loaded.trained
        self.backend = backend
        self.run_dense = run_dense
        self.run_roi_heads = run_roi_heads
        self.input_size = input_size
        self.score_threshold = score_threshold
        self.max_batch = max_batch
        self.feature_names = feature_names(self.model)
        self.pooled_levels = pooled_levels(self.model)
        self._anchor_cache: tuple[tuple[tuple[int, ...], ...], list[Tensor]] | None = None
        #: Seconds spent per part (see PARTS) while not None, wall clock; and process CPU seconds (all threads) under
        #: "<part>_cpu": benchmarks/engine_profile.py sets it.
        self.timings: defaultdict[str, float] | None = None
        #: torch threads for the glue (proposals, RoIAlign, NMS): its ops are small, and on a busy machine handing
        #: each one to a second thread costs more than it saves (measured: a 0.4 M-element cast takes 0.7 ms on one
        #: thread, 25 ms on two when other processes hold the cores). The graphs keep the backend's threads.
        self.glue_threads = glue_threads

    def _mark(self, part: str, started: tuple[float, float]) -> tuple[float, float]:
        if self.timings is None:
            return started
        now = (time.perf_counter(), time.process_time())
        self.timings[part] += now[0] - started[0]
        self.timings[part + "_cpu"] += now[1] - started[1]
        return now

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        step = self.max_batch or len(images) or 1
        results: list[Detections] = []
        threads = torch.get_num_threads()
        if self.glue_threads:
            torch.set_num_threads(self.glue_threads)
        try:
            for i in range(0, len(images), step):
                results.extend(self._detect_batch(images[i : i + step]))
        finally:
            torch.set_num_threads(threads)
        return results

    def frame_size_for(self, width: int, height: int) -> tuple[int, int] | None:
        return resized_size(self.model, width, height, self.input_size)

    @torch.inference_mode()
    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        t = (time.perf_counter(), time.process_time()) if self.timings is not None else (0.0, 0.0)
        batch, sizes = self.preprocess(images)
        t = self._mark("preprocess", t)
        outputs = list(self.run_dense(batch))
        t = self._mark("dense", t)
        n = len(self.feature_names)
        levels, objectness, deltas = outputs[:n], outputs[n : 2 * n], outputs[2 * n : 3 * n]
        boxes = self._proposals(batch, sizes, levels, objectness, deltas)
        t = self._mark("proposals", t)
        return self._detect_in_proposals(levels, boxes, sizes, images, t)

    def _detect_in_proposals(
        self, levels: list[Tensor], boxes: list[Tensor], sizes: list[tuple[int, int]], images: Sequence[np.ndarray],
        started: tuple[float, float] = (0.0, 0.0),
    ) -> list[Detections]:
        """The eval branch of RoIHeads.forward for a batch's proposals (one list of boxes per image): the RoI heads
        graph in the backend, one run for the whole batch, then post-processing."""
        rois = rois_of(boxes)
        if not rois.shape[0]:  # nothing proposed in the whole batch (and no graph runs below one RoI)
            return [Detections.empty() for _ in images]
        scores, offsets = self.run_roi_heads(*(levels[i] for i in self.pooled_levels), rois)
        t = self._mark("roi_heads", started)
        results = self._postprocess(scores, rois[:, None, 1:] + offsets, rois[:, 0].long(), sizes, images)
        self._mark("postprocess", t)
        return results

    def _postprocess(
        self, scores: Tensor, pred_boxes: Tensor, image_of: Tensor, sizes: list[tuple[int, int]],
        images: Sequence[np.ndarray],
    ) -> list[Detections]:
        """torchvision's RoIHeads.postprocess_detections for the whole batch at once, then our score threshold.

        `scores` [R, K] and `pred_boxes` [R, K, 4] are the RoI heads graph's, decoded (RoIHeadsStage). Per image
        torchvision clips, drops background, scores <= score_thresh and tiny boxes, runs class-wise NMS and keeps the
        best detections_per_img. Here one NMS runs over the batch (grouped by image and class: boxes of different
        groups never suppress each other), and boxes under our `score_threshold` are dropped before it: a box can
        only suppress lower-scoring ones, which the threshold drops anyway, so the result is the same.
        """
        roi_heads = self.model.roi_heads
        num_classes = scores.shape[-1]
        pred_boxes = clip_to_images(pred_boxes, sizes, image_of)
        labels = torch.arange(num_classes).view(1, -1).expand_as(scores)
        image_of = image_of.view(-1, 1).expand_as(scores)
        pred_boxes, scores = pred_boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)  # background out
        labels, image_of = labels[:, 1:].reshape(-1), image_of[:, 1:].reshape(-1)
        keep = (scores > roi_heads.score_thresh) & (scores >= self.score_threshold)
        wh = pred_boxes[:, 2:] - pred_boxes[:, :2]
        keep &= (wh >= 1e-2).all(dim=1)  # torchvision's remove_small_boxes(min_size=1e-2)
        pred_boxes, scores, labels, image_of = pred_boxes[keep], scores[keep], labels[keep], image_of[keep]
        keep = batched_nms(pred_boxes, scores, image_of * num_classes + labels, roi_heads.nms_thresh)  # best first
        results = []
        for i, (img, size) in enumerate(zip(images, sizes)):
            mine = keep[image_of[keep] == i][: roi_heads.detections_per_img]
            b = resize_boxes(pred_boxes[mine], size, img.shape[:2])
            results.append(Detections(b.numpy().astype(np.float32), scores[mine].numpy(),
                                      labels[mine].numpy().astype(np.int64)))
        return results

    def _proposals(
        self, batch: Tensor, sizes: list[tuple[int, int]], levels: list[Tensor], objectness: list[Tensor],
        deltas: list[Tensor],
    ) -> list[Tensor]:
        """RPN proposals as torchvision's RegionProposalNetwork computes them in eval mode, but faster.

        torchvision decodes every anchor (tens of thousands per image) and then keeps the top `pre_nms_top_n` per
        level. Decoding is per anchor, so we keep the top-n first and decode only those; then torchvision's
        `filter_proposals` (clip, small-box removal, score threshold, per-level NMS, best post_nms_top_n), but for
        the whole batch at once: one NMS grouped by image and level instead of one per image. Same proposals, a
        fraction of the work; the anchors of the static input are computed once.
        """
        rpn = self.model.rpn
        anchors = self._anchors(batch, sizes, levels)
        pre_nms_top_n = rpn.pre_nms_top_n()
        scores, picked_deltas, picked_anchors, counts = [], [], [], []
        for obj, delta, level_anchors in zip(objectness, deltas, anchors):
            n, a, h, w = obj.shape
            # Top-k straight on the [n, a, h, w] map, not on a permuted copy: an index there is a * h * w + position,
            # the anchor generator's order is position * a + a. Sorted, as torchvision's: NMS ranks by probability,
            # which saturates at 1.0, and among those ties keeps the order it is given (the objectness order).
            top, idx = obj.reshape(n, -1).topk(min(pre_nms_top_n, a * h * w), dim=1)
            anchor_of, position = idx // (h * w), idx % (h * w)
            scores.append(top)
            image = torch.arange(n)[:, None]
            picked_deltas.append(delta.view(n, a, 4, h * w)[image, anchor_of, :, position])  # [n, top, 4]
            picked_anchors.append(level_anchors[position * a + anchor_of])
            counts.append(top.shape[1])
        num_images = batch.shape[0]
        proposals = rpn.box_coder.decode_single(torch.cat(picked_deltas, 1).reshape(-1, 4),
                                                torch.cat(picked_anchors, 1).reshape(-1, 4))
        level = torch.cat([torch.full((count,), i) for i, count in enumerate(counts)]).repeat(num_images)
        image_of = torch.arange(num_images).repeat_interleave(sum(counts))
        proposals = clip_to_images(proposals, sizes, image_of)
        prob = torch.sigmoid(torch.cat(scores, 1).reshape(-1))
        wh = proposals[:, 2:] - proposals[:, :2]
        keep = (wh >= rpn.min_size).all(dim=1) & (prob >= rpn.score_thresh)  # remove_small_boxes, score_thresh
        proposals, prob, level, image_of = proposals[keep], prob[keep], level[keep], image_of[keep]
        keep = nms_by_run(proposals, prob, image_of * len(counts) + level, rpn.nms_thresh)  # best first
        image_of = image_of[keep]
        return [proposals[keep[image_of == i][: rpn.post_nms_top_n()]] for i in range(num_images)]

    def _anchors(self, batch: Tensor, sizes: list[tuple[int, int]], levels: list[Tensor]) -> list[Tensor]:
        key = tuple(tuple(level.shape[-2:]) for level in levels)
        if self._anchor_cache is None or self._anchor_cache[0] != key:
            one = ImageList(batch[:1].permute(0, 3, 1, 2), sizes[:1])  # NCHW, as the generator reads sizes
            all_levels = self.model.rpn.anchor_generator(one, [level[:1] for level in levels])[0]
            counts = [level.shape[-2] * level.shape[-1] * self.model.rpn.anchor_generator.num_anchors_per_location()[i]
                      for i, level in enumerate(levels)]
            self._anchor_cache = (key, list(all_levels.split(counts)))
        return self._anchor_cache[1]

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[Tensor, list[tuple[int, int]]]:
        """The dense graph's input: frames resized like GeneralizedRCNNTransform, padded into the static input.

        Frames the decoder already scaled to the engine's size (`frame_size_for`) are only copied in. Others are
        resized here (bilinear, like torchvision; letterboxed if their aspect ratio differs). Padding holds the mean
        pixel, which the graph's normalisation turns into the zeros torchvision pads with.
        """
        height, width = self.input_size
        # numpy for the copy: a tiny multi-threaded torch op costs more in thread hand-off than it computes.
        batch = np.empty((len(images), height, width, 3), np.float32)
        mean = np.asarray(self.model.transform.image_mean, np.float32) * 255.0
        sizes = []
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            x = img
            if (w, h) != resized_size(self.model, w, h, self.input_size):
                scale = resize_scale(self.model, w, h, self.input_size)
                x = nn.functional.interpolate(
                    torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float(), scale_factor=scale,
                    mode="bilinear", recompute_scale_factor=True, align_corners=False,
                )[0].permute(1, 2, 0).numpy()
            h, w = x.shape[:2]
            batch[i, :h, :w] = x
            batch[i, h:] = mean  # padding only: a decoder-scaled frame fills the whole input
            batch[i, :h, w:] = mean
            sizes.append((int(h), int(w)))
        return torch.from_numpy(batch), sizes


def torch_runners(model: FasterRCNN, input_size: tuple[int, int]) -> tuple[GraphRunner, GraphRunner]:
    """The split graphs run in eager PyTorch: the reference the exported graphs are checked against."""
    return DenseStage(model).eval(), RoIHeadsStage(model, input_size).eval()
