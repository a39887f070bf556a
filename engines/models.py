"""Faster R-CNN models assembled from torchvision's detection components, and safe checkpoint loading.

`fasterrcnn_lite` is the project's own default: a small plain-conv backbone with a single stride-8 feature map,
an RPN with k = scales x aspect ratios anchors at every position, and a small two-layer box head — light enough to
train and run on a 2-core CPU. torchvision's builders load users' COCO checkpoints, or torchvision's own COCO
weights by name (``--weights DEFAULT``): fetched once through torchvision's weights API into the torch hub cache.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import get_model_weights
from torchvision.models._api import WeightsEnum
from torchvision.models.detection import (
    FasterRCNN,
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.faster_rcnn import FasterRCNN_ResNet50_FPN_Weights
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from engines.base import ARCHS, DEFAULT_ARCH, TORCHVISION_ARCHS
from engines.base import EngineError

log = logging.getLogger(__name__)

#: Classes of the synthetic scenes the default model is trained on (id 0 is background).
SYNTH_LABELS: tuple[str, ...] = ("__background__", "person", "car", "sign")
COCO_LABELS: tuple[str, ...] = tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])

#: Weights shipped with the package, used when no --weights is given (reproduce them with the command in
#: docs/model.md).
SHIPPED_WEIGHTS: dict[str, Path] = {DEFAULT_ARCH: Path(__file__).with_name("weights") / f"{DEFAULT_ARCH}.pt"}

_TORCHVISION_BUILDERS: dict[str, Callable[..., FasterRCNN]] = {
    "fasterrcnn_resnet50_fpn": fasterrcnn_resnet50_fpn,
    "fasterrcnn_resnet50_fpn_v2": fasterrcnn_resnet50_fpn_v2,
    "fasterrcnn_mobilenet_v3_large_fpn": fasterrcnn_mobilenet_v3_large_fpn,
    "fasterrcnn_mobilenet_v3_large_320_fpn": fasterrcnn_mobilenet_v3_large_320_fpn,
}
assert set(_TORCHVISION_BUILDERS) == set(TORCHVISION_ARCHS)


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class LiteBackbone(nn.Sequential):
    """Plain 3x3 conv stack down to stride 8: cheap on CPU, fine enough for objects of 12 px and up."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 64)) -> None:
        layers: list[nn.Module] = []
        c_in = 3
        for i, width in enumerate(widths):
            layers.append(_conv_bn_relu(c_in, width, stride=2 if i < 3 else 1))
            c_in = width
        layers.append(_conv_bn_relu(c_in, c_in, stride=1))
        super().__init__(*layers)
        self.out_channels = c_in


def fasterrcnn_lite(num_classes: int = len(SYNTH_LABELS), min_size: int = 288, max_size: int = 512) -> FasterRCNN:
    """The default detector: one stride-8 feature map, 5 scales x 3 aspect ratios = 15 anchors per position.

    Aspect ratios are height / width: 0.5 for wide (cars), 1.0 for square (signs), 2.5 for tall (people).
    """
    backbone = LiteBackbone()
    anchor_generator = AnchorGenerator(sizes=((12, 24, 48, 96, 160),), aspect_ratios=((0.5, 1.0, 2.5),))
    box_roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    representation_size = 256
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchor_generator,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128,
        box_roi_pool=box_roi_pool,
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        box_batch_size_per_image=128,
        box_detections_per_img=50,
    )


#: Rank of the truncated SVD of the default model's first box-head layer at inference (`inference_settings`).
LITE_FC6_RANK = 128
#: Feature channels the default model's RoIAlign samples at inference, of the backbone's 64 (`project_roi_channels`).
LITE_ROI_CHANNELS = 48
#: Objectness under which the default model's proposals never reach the box head at inference.
LITE_RPN_SCORE_THRESH = 0.1


def truncate_fc6(model: FasterRCNN, rank: int) -> None:
    """Replace the box head's fc6 (W: [out, in]) by two layers, in -> rank -> out, from W's truncated SVD.

    Fast R-CNN (section 3.1): the fully connected layers of the detection head run once per RoI, and W ~ U S V^T
    with the `rank` largest singular values costs rank x (in + out) multiply-adds a RoI instead of in x out.
    """
    fc6 = model.roi_heads.box_head.fc6
    if not isinstance(fc6, nn.Linear) or rank >= min(fc6.in_features, fc6.out_features):
        return
    u, s, vh = torch.linalg.svd(fc6.weight.detach(), full_matrices=False)
    first, second = nn.Linear(fc6.in_features, rank, bias=False), nn.Linear(rank, fc6.out_features)
    with torch.no_grad():
        first.weight.copy_(s[:rank, None] * vh[:rank])
        second.weight.copy_(u[:, :rank])
        second.bias.copy_(fc6.bias)
    model.roi_heads.box_head.fc6 = nn.Sequential(first, second)


class ChannelProjectedRoIAlign(MultiScaleRoIAlign):
    """MultiScaleRoIAlign on feature maps first mapped to fewer channels by `projection` (a 1x1 convolution).

    RoIAlign is linear in the features, so projecting the maps before pooling equals projecting every pooled RoI;
    RoIAlign's work grows with the channels it samples, the projection's with the map (a few multiply-adds a pixel).
    """

    def __init__(self, pool: MultiScaleRoIAlign, projection: nn.Conv2d) -> None:
        super().__init__(pool.featmap_names, pool.output_size, pool.sampling_ratio,
                         canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level)
        self.projection = projection

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        projected = {name: self.projection(f) if name in self.featmap_names else f for name, f in x.items()}
        return super().forward(projected, boxes, image_shapes)

    def __repr__(self) -> str:  # the export cache keys on the model's repr: the projection's size must be in it
        return f"{super().__repr__()[:-1]}, projection={self.projection})"


def _first_box_layer(model: FasterRCNN) -> nn.Linear | None:
    fc6 = model.roi_heads.box_head.fc6
    first = fc6[0] if isinstance(fc6, nn.Sequential) else fc6
    return first if isinstance(first, nn.Linear) else None


def project_roi_channels(model: FasterRCNN, channels: int) -> None:
    """Pool `channels` mixes of the features instead of all of them: the box head's first layer's channel subspace.

    The layer (W: [out, C x s x s], after RoIAlign's C x s x s features) read per channel is M: [C, out x s x s]. With
    U the `channels` leading left singular vectors of M, W ~ W (U U^T per channel), the best approximation of its
    channel mixing of that rank (the truncated-SVD argument of `truncate_fc6`, applied to the other mode). The
    feature maps are projected by U^T before RoIAlign (`ChannelProjectedRoIAlign`) and the layer becomes W U.
    """
    pool, first = model.roi_heads.box_roi_pool, _first_box_layer(model)
    in_channels = int(model.backbone.out_channels)
    if isinstance(pool, ChannelProjectedRoIAlign) or first is None or channels >= in_channels:
        return
    out_features = first.out_features
    bins = first.in_features // in_channels
    per_channel = first.weight.detach().reshape(out_features, in_channels, bins)
    u, _, _ = torch.linalg.svd(per_channel.transpose(0, 1).reshape(in_channels, -1), full_matrices=False)
    basis = u[:, :channels]  # [C, channels]
    projection = nn.Conv2d(in_channels, channels, kernel_size=1, bias=False)
    layer = nn.Linear(channels * bins, out_features, bias=first.bias is not None)
    with torch.no_grad():
        projection.weight.copy_(basis.T[:, :, None, None])
        layer.weight.copy_(torch.einsum("ocb,ck->okb", per_channel, basis).reshape(out_features, -1))
        if first.bias is not None:
            layer.bias.copy_(first.bias)
    model.roi_heads.box_roi_pool = ChannelProjectedRoIAlign(pool, projection)
    fc6 = model.roi_heads.box_head.fc6
    if isinstance(fc6, nn.Sequential):
        fc6[0] = layer
    else:
        model.roi_heads.box_head.fc6 = layer


def _take_inference_form(model: FasterRCNN, state: dict[str, torch.Tensor]) -> None:
    """Give the default model the structure of a state dict saved in (some) inference form, before loading it."""
    if "roi_heads.box_head.fc6.0.weight" in state:
        truncate_fc6(model, int(state["roi_heads.box_head.fc6.0.weight"].shape[0]))
    if "roi_heads.box_roi_pool.projection.weight" in state:
        project_roi_channels(model, int(state["roi_heads.box_roi_pool.projection.weight"].shape[0]))


def inference_settings(model: FasterRCNN) -> None:
    """The default model as it runs in the engine, cheaper in the second stage than as trained (issue 17).

    RoIAlign and the box head cost more than the glue around the network: RoIAlign samples adaptively
    (ceil(RoI size / 7) points per bin and side, RoIAlign's own definition; trained with 2 x 2), proposals with
    objectness under LITE_RPN_SCORE_THRESH are dropped before the box head (torchvision's mobilenet_v3 320 model
    drops them under 0.05), fc6 runs as its rank-LITE_FC6_RANK truncated SVD, and RoIAlign samples
    LITE_ROI_CHANNELS mixes of the features, the ones that layer reads (`project_roi_channels`). Held-out mAP@0.5
    is unchanged within 0.0005, mAP@[.5:.95] within 0.004 (docs/performance.md).
    """
    model.roi_heads.box_roi_pool.sampling_ratio = 0
    model.rpn.score_thresh = LITE_RPN_SCORE_THRESH
    truncate_fc6(model, LITE_FC6_RANK)
    project_roi_channels(model, LITE_ROI_CHANNELS)


@dataclass(frozen=True)
class LoadedModel:
    model: FasterRCNN
    arch: str
    label_names: tuple[str, ...]
    trained: bool  # False when no weights were given: the detections are meaningless
    weights_file: Path | None = None  # the file the weights were read from (a hub cache file for DEFAULT etc.)


#: A weights value in capitals without a folder or suffix (DEFAULT, COCO_V1) names torchvision's weights; a file
#: named like that is given by its full path.
_WEIGHTS_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def is_weights_name(weights: str | Path | None) -> bool:
    """True when `weights` names torchvision weights (DEFAULT, COCO_V1, ...) rather than a file."""
    return weights is not None and bool(_WEIGHTS_NAME.match(str(weights)))


def torchvision_weights(arch: str, name: str) -> WeightsEnum:
    """torchvision's weights `name` (e.g. DEFAULT, COCO_V1) of `arch`, from its weights enum."""
    if arch not in _TORCHVISION_BUILDERS:
        raise EngineError(
            f"weights {name}: arch {arch!r} has no torchvision weights; pass --arch (engine.arch) one of: "
            f"{', '.join(_TORCHVISION_BUILDERS)} (a file named {name}: give its full path)"
        )
    enum = get_model_weights(_TORCHVISION_BUILDERS[arch])
    try:
        return enum[name]
    except KeyError:
        raise EngineError(
            f"weights {name}: torchvision has no such weights for {arch}; choose one of: {', '.join(enum.__members__)}"
        ) from None


def hub_checkpoint(weights: WeightsEnum) -> Path:
    """Where torch.hub keeps (or will keep) the file of `weights`: $TORCH_HOME/hub/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def load_torchvision_state(weights: WeightsEnum, progress: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of `weights`: downloaded once into the hub cache (torchvision's checksum), then reused."""
    path = hub_checkpoint(weights)
    if not path.is_file():
        log.info("downloading %s to %s (once; later runs reuse it)", weights.url, path)
    try:
        # check_hash: the download must match the hash prefix in torchvision's file name.
        # weights_only=True: a checkpoint must never be able to run code when loaded.
        state = weights.get_state_dict(progress=progress, check_hash=True, weights_only=True, map_location="cpu")
    except (URLError, OSError) as exc:
        if path.is_file():
            raise EngineError(f"weights file {path} cannot be read: {exc}") from exc
        reason = getattr(exc, "reason", None) or exc
        raise EngineError(
            f"cannot download torchvision's {weights} weights {path.name} from {weights.url} ({reason}). "
            f"Offline? Copy that file by hand to {path} ($TORCH_HOME/hub/checkpoints/{path.name}) and run again"
        ) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise EngineError(
            f"weights file {path} is damaged or not torchvision's ({str(exc).splitlines()[0]}): delete it and run "
            f"again to download it from {weights.url}"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EngineError(f"weights file {path} holds no state dict of tensors: delete it and run again")
    return state


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d, as torchvision builds its pretrained detectors (and as
    their checkpoints are saved); in eval mode both compute the same."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def torchvision_model(arch: str, num_classes: int, **kwargs: object) -> FasterRCNN:
    """torchvision's `arch`, untrained and offline: no COCO weights and no ImageNet backbone download
    (weights_backbone=None; the mobilenet builders would otherwise fetch it)."""
    return _TORCHVISION_BUILDERS[arch](weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)


def pretrained_torchvision(arch: str, name: str, progress: bool = True) -> LoadedModel:
    """torchvision's COCO detector `arch` with its weights `name`, label names from the weights' meta."""
    weights = torchvision_weights(arch, name)
    state = load_torchvision_state(weights, progress)
    label_names = tuple(weights.meta["categories"])
    model = freeze_batchnorm(torchvision_model(arch, len(label_names)))
    _check_fits(model, state, arch, hub_checkpoint(weights))
    model.load_state_dict(state)
    model.eval()
    log.info("loaded torchvision's %s (%s) from %s", arch, weights, hub_checkpoint(weights))
    return LoadedModel(model=model, arch=arch, label_names=label_names, trained=True,
                       weights_file=hub_checkpoint(weights))


def default_weights(arch: str) -> Path | None:
    """The shipped weights of `arch`, if any."""
    path = SHIPPED_WEIGHTS.get(arch)
    return path if path is not None and path.is_file() else None


def build_model(arch: str = DEFAULT_ARCH, weights: str | Path | None = None) -> LoadedModel:
    """Build `arch` and load `weights` (a state dict, or our checkpoint dict with a "model" entry)."""
    if arch not in ARCHS:
        raise EngineError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    if is_weights_name(weights):
        return pretrained_torchvision(arch, str(weights))
    state, label_names = _read_checkpoint(weights) if weights is not None else (None, None)
    if arch == DEFAULT_ARCH:
        label_names = label_names or SYNTH_LABELS
        model = fasterrcnn_lite(num_classes=len(label_names))
    else:
        label_names = label_names or COCO_LABELS
        model = torchvision_model(arch, len(label_names))
    if arch == DEFAULT_ARCH and state is not None:
        _take_inference_form(model, state)  # saved from a model already in its inference form
    if state is not None:
        _check_fits(model, state, arch, weights)  # type: ignore[arg-type]
        model.load_state_dict(state)
    else:
        log.warning("no weights given for %s: the model is randomly initialised and its detections mean nothing", arch)
    if arch == DEFAULT_ARCH:
        inference_settings(model)
    model.eval()
    return LoadedModel(model=model, arch=arch, label_names=tuple(label_names), trained=state is not None,
                       weights_file=Path(weights) if weights is not None else None)


def _read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], tuple[str, ...] | None]:
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"weights file {path} not found")
    try:
        # weights_only=True: a checkpoint must never be able to run code when loaded.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise EngineError(f"weights file {path} is not a readable PyTorch checkpoint: {exc}".splitlines()[0]) from exc
    label_names = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        label_names = tuple(obj["label_names"]) if obj.get("label_names") else None
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EngineError(f"weights file {path} holds no state dict of tensors")
    if label_names is None:
        label_names = _labels_for_classifier(obj)
    return obj, label_names


def _labels_for_classifier(state: dict[str, torch.Tensor]) -> tuple[str, ...] | None:
    """Guess label names from the box predictor's class count when a checkpoint does not name them."""
    weight = next((v for k, v in state.items() if k.endswith("box_predictor.cls_score.weight")), None)
    if weight is None:
        return None
    num_classes = int(weight.shape[0])
    for names in (COCO_LABELS, SYNTH_LABELS):
        if num_classes == len(names):
            return names
    return ("__background__", *(f"class_{i}" for i in range(1, num_classes)))


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], arch: str, path: str | Path) -> None:
    expected = model.state_dict()
    # BatchNorm's step counter is not a weight: torchvision's checkpoints (FrozenBatchNorm2d) have none.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected and not k.endswith("num_batches_tracked")]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise EngineError(
            f"weights file {path} does not fit arch {arch!r}: {len(missing)} missing keys {missing[:2]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:2]}, {len(mismatched)} keys of another shape "
            f"{mismatched[:2]} (is it a checkpoint of another architecture?)"
        )
