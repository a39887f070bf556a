"""Eager PyTorch backend: the reference every other backend is checked against."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from engines.base import Detections, Detector
from engines.models import LoadedModel

log = logging.getLogger(__name__)


class TorchDetector(Detector):
    backend = "torch"

    def __init__(self, loaded: LoadedModel, score_threshold: float = 0.5, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        self.label_names = loaded.label_names
        self.arch = loaded.arch
        self.trained = loaded.trained
        self.score_threshold = score_threshold

    def frame_size_for(self, width: int, height: int) -> tuple[int, int] | None:
        from engines.split import resized_size

        return resized_size(self.model, width, height)

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        tensors = [torch.from_numpy(np.ascontiguousarray(img)).to(self.device).permute(2, 0, 1).float().div_(255) for img in images]
        outputs = self.model(tensors)
        results = []
        for out in outputs:
            keep = out["scores"] >= self.score_threshold
            results.append(
                Detections(
                    boxes=out["boxes"][keep].cpu().numpy().astype(np.float32),
                    scores=out["scores"][keep].cpu().numpy().astype(np.float32),
                    labels=out["labels"][keep].cpu().numpy().astype(np.int64),
                )
            )
        return results
