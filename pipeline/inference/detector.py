"""Detector stage: runs the engine on each batch and releases the images (but those a later stage needs)."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Literal

from engines.base import Detections, Detector
from pipeline.frame import Batch, BatchResult, FrameResult
from pipeline.stage import Channel, RunContext, Stage

log = logging.getLogger(__name__)


class DetectorStage(Stage):
    def __init__(
        self, inbox: Channel[object], outbox: Channel[object], ctx: RunContext, engine: Detector,
        demand: threading.Event | None = None,
        keep_images: Literal["none", "latest", "all"] = "none",
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        super().__init__("detector", inbox, outbox, ctx)
        self.engine = engine
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
