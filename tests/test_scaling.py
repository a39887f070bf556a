"""Decoder-side scaling and frame skipping: large cameras cost the engine what small ones do, boxes stay in source
pixels, frames dropped before detection are never converted, and skip_frames decodes only what is asked."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import redis

from engines import Detector
from pipeline.frame import Frame
from pipeline.inference.batcher import Batcher, CameraQueues
from pipeline.sources.scaling import convert, make_frame, skip_frame_setting
from pipeline.stage import Channel, RunContext
from tests.test_pipeline import entries, run_pipeline


def test_a_large_camera_is_detected_at_the_engine_size_and_published_in_source_pixels(
    make_video: Callable[..., Path], detector: Detector, rclient: redis.Redis, prefix: str
) -> None:
    video = make_video(12, seed=5, width=1280, height=720)
    run_pipeline({"large": video}, detector, rclient, prefix)
    got = entries(rclient, prefix, "large")
    assert [e["frame"] for e in got] == list(range(12))
    assert all((e["width"], e["height"]) == (1280, 720) for e in got)
    # The reference: full-resolution frames, resized by the engine itself (what the decoder did before).
    with av.open(str(video)) as container:
        reference = detector.detect([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert sum(len(d) for d in reference) > 0
    for entry, ref in zip(got, reference):
        boxes = np.array([o["box"] for o in entry["objects"] if not o.get("predicted")],  # type: ignore[union-attr]
                         np.float32).reshape(-1, 4)  # the detector's own boxes, not the tracker's predictions
        assert abs(len(boxes) - len(ref)) <= 1
        for box in boxes:  # in source pixels, where the reference has it (a few px of a 1280 px frame)
            assert np.abs(ref.boxes - box).max(axis=1).min() < 12, (box, ref.boxes)


def test_frames_dropped_before_detection_are_never_converted() -> None:
    ctx = RunContext()
    queues = CameraQueues(ctx)
    key = queues.open("cam", capacity=1, drop_oldest=True)  # a live camera's queue: a newer frame replaces it
    converted: list[int] = []
    picture = av.VideoFrame.from_ndarray(np.zeros((720, 1280, 3), np.uint8), format="rgb24")
    for i in range(5):
        frame = make_frame("cam", i, i / 25, 0.0, picture, lambda w, h: (w // 4, h // 4))
        convert = frame.pending
        frame.pending = lambda convert=convert, i=i: (converted.append(i), convert())[1]  # type: ignore[misc]
        queues.put(key, frame)
    batcher = Batcher(queues, Channel("out", 4), ctx, max_batch=4, max_delay_ms=1000)
    taken = queues.get(timeout=1)
    assert isinstance(taken, Frame)
    batcher.process(taken)
    assert converted == [4]  # only the frame that reached a batch
    assert taken.image is not None and taken.image.shape == (180, 320, 3)
    assert (taken.width, taken.height, taken.scale) == (1280, 720, (4.0, 4.0))
    assert taken.to_source(np.array([[10, 10, 20, 20]], np.float32)).tolist() == [[40, 40, 80, 80]]


def test_skip_frames_nonkey_decodes_only_keyframes(make_video: Callable[..., Path], detector: Detector,
                                                   rclient: redis.Redis, prefix: str) -> None:
    video = make_video(60)  # 25 fps, a keyframe every 25 frames: 0, 25, 50
    report = run_pipeline({"cam": video}, detector, rclient, prefix,
                          cameras=[{"name": "cam", "url": str(video), "skip_frames": "nonkey"}])
    assert report.ok, report  # skipped frames are not mistaken for a truncated file
    assert report.streams["cam"]["decoded"] == 3
    assert [e["frame"] for e in entries(rclient, prefix, "cam")] == [0, 1, 2]


def test_skip_frames_auto_skips_only_at_a_low_max_fps() -> None:
    assert skip_frame_setting("auto", None, 25.0) == "DEFAULT"
    assert skip_frame_setting("auto", 20.0, 25.0) == "DEFAULT"
    assert skip_frame_setting("auto", 5.0, 25.0) == "NONREF"
    assert skip_frame_setting("nonkey", None, 25.0) == "NONKEY"


def test_conversion_reuses_swscale_contexts_yet_gives_each_camera_its_own_picture() -> None:
    """Cameras of different sizes and pixel formats interleaved (the batcher converts them all on one thread): each
    picture comes out exactly as a fresh swscale conversion makes it, whatever was converted before."""
    rng = np.random.default_rng(1)
    pictures = []
    for width, height, fmt in ((1920, 1080, "yuv420p"), (640, 360, "yuv420p"), (1920, 1080, "yuvj420p"),
                               (1280, 720, "yuv420p")):
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), format="rgb24")
        pictures.append(frame.reformat(format=fmt))
    for picture in pictures * 2:
        for size in ((512, 288), (640, 360), None):
            want = (picture.to_ndarray(format="rgb24") if size is None else
                    picture.reformat(width=size[0], height=size[1], interpolation="AREA").to_ndarray(format="rgb24"))
            got = convert(picture, size)
            assert got.shape == want.shape and np.array_equal(got, want), (picture, size)
