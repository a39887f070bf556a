"""Detector stage: runs the engine on each batch, keeps the chosen labels (engine.classes / engine.filters) and
releases the images (but those a later stage needs)."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from engines.base import Detections, Detector
from pipeline.config import NOT_A_CLASS, ConfigError, EngineConfig, unknown_label
from pipeline.frame import Batch, BatchResult, FrameResult
from pipeline.stage import Channel, RunContext, Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectionFilter:
    """Which detections go on to the tracker and Redis: per label id, kept or not, a minimum score and a minimum
    box area (width x height, source pixels)."""

    keep: np.ndarray  # bool [num_labels]
    min_score: np.ndarray  # float32 [num_labels]
    min_area: np.ndarray  # float32 [num_labels]

    @classmethod
    def from_config(cls, engine: EngineConfig, label_names: Sequence[str]) -> DetectionFilter | None:
        """The filter of engine.classes / engine.filters for a model with `label_names`; None when both are unset.

        A label the model does not have is a ConfigError naming it, with the closest label names.
        """
        if engine.classes is None and not engine.filters:
            return None
        index = {name: i for i, name in enumerate(label_names) if name not in NOT_A_CLASS}

        def label_id(name: str, key: str) -> int:
            if (reason := unknown_label(name, label_names)) is not None:
                raise ConfigError(f"engine.{key}: {reason}")
            return index[name]

        n = len(label_names)
        keep = np.ones(n, bool)
        if engine.classes is not None:
            keep[:] = False
            keep[[label_id(name, "classes") for name in engine.classes]] = True
        min_score = np.zeros(n, np.float32)
        min_area = np.zeros(n, np.float32)
        for name, rule in engine.filters.items():
            i = label_id(name, f"filters.{name}")
            if rule.min_score is not None:
                if rule.min_score < engine.score_threshold:
                    log.warning("engine.filters.%s.min_score %.2f is below engine.score_threshold %.2f, which the "
                                "engine applies first", name, rule.min_score, engine.score_threshold)
                min_score[i] = rule.min_score
            if rule.min_area is not None:
                min_area[i] = rule.min_area
        log.info("keeping %s", ", ".join(
            name + "".join(f" {k}>={v:g}" for k, v in (("score", min_score[i]), ("area", min_area[i])) if v)
            for name, i in index.items() if keep[i]))
        return cls(keep=keep, min_score=min_score, min_area=min_area)

    def __call__(self, det: Detections) -> Detections:
        if len(det) == 0:
            return det
        labels = det.labels
        known = (labels >= 0) & (labels < self.keep.shape[0])
        ids = np.where(known, labels, 0)
        area = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
        mask = known & self.keep[ids] & (det.scores >= self.min_score[ids]) & (area >= self.min_area[ids])
        if mask.all():
            return det
        return Detections(boxes=det.boxes[mask], scores=det.scores[mask], labels=labels[mask])


class DetectorStage(Stage):
    def __init__(
        self, inbox: Channel[object], outbox: Channel[object], ctx: RunContext, engine: Detector,
        demand: threading.Event | None = None,
        keep_images: Literal["none", "latest", "all"] = "none",
        on_batch: Callable[[int, float], None] | None = None,
        keep: DetectionFilter | None = None,
    ) -> None:
        super().__init__("detector", inbox, outbox, ctx)
        self.engine = engine
        self.keep = keep  # engine.classes / engine.filters: what is dropped here never reaches the tracker or Redis
        self.demand = demand  # the batcher's: ask for a batch only when about to run one
        # Images that go on to later stages: "latest" keeps each camera's last frame of a batch (the live view
        # shows only the newest), "all" every frame (annotated video). The view stage releases them.
        self.keep_images = keep_images
        self.on_batch = on_batch  # (batch size, engine seconds), for metrics
        self.batch_sizes: Counter[int] = Counter()  # batch size -> number of batches
        self.multi_stream_batches = 0  # batches holding frames of more than one stream
        self.batch_latencies_s: deque[float] = deque(maxlen=10_000)  # engine time of recent batches

    def before_get(self) -> None:
        if self.demand is not None:
            self.demand.set()

    def process(self, item: object) -> None:
        assert isinstance(item, Batch)
        images = [f.materialize() for f in item.frames]
        started = time.perf_counter()
        detections = self.engine.detect(images)  # type: ignore[arg-type]
        latency = time.perf_counter() - started
        # The decoder may have scaled the images to the engine's size: publish boxes in source pixels.
        detections = [d if f.scale == (1.0, 1.0) else Detections(f.to_source(d.boxes), d.scores, d.labels)
                      for f, d in zip(item.frames, detections)]
        self.batch_latencies_s.append(latency)
        if len(detections) != len(item.frames):
            raise RuntimeError(f"engine returned {len(detections)} results for {len(item.frames)} frames")
        if self.keep is not None:
            detections = [self.keep(d) for d in detections]
        self.batch_sizes[len(item.frames)] += 1
        self.multi_stream_batches += len({f.stream for f in item.frames}) > 1
        if self.on_batch is not None:
            self.on_batch(len(item.frames), latency)
        if self.keep_images != "all":
            keep = {f.stream: f for f in item.frames} if self.keep_images == "latest" else {}
            for frame in item.frames:
                if keep.get(frame.stream) is not frame:
                    frame.image = None  # later stages need only the detections; free the memory now
        self.emit(BatchResult([FrameResult(f, d) for f, d in zip(item.frames, detections)]))
