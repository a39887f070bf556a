"""Tests for the synthetic scene generator (lab/synth.py)."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from av.video.frame import PictureType

from lab.synth import (
    ASPECT_RANGES,
    CLASSES,
    IGNORE_VISIBILITY,
    ObjectTruth,
    SceneSpec,
    VideoTruth,
    encode_frames,
    read_mot,
    render_frames,
    write_coco,
    write_mot,
    write_video,
)

SMALL = SceneSpec(width=320, height=240, frames=60)
LONG = SceneSpec(width=320, height=240, frames=200)


def _decode(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def _key(objs: list[ObjectTruth]) -> list[tuple[object, ...]]:
    return [(o.frame_index, o.track_id, o.label, o.box, o.visibility) for o in objs]


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> VideoTruth:
    return write_video(tmp_path_factory.mktemp("synth") / "long.mp4", LONG, seed=11)


def test_same_seed_is_reproducible(tmp_path: Path) -> None:
    a = write_video(tmp_path / "a.mp4", SMALL, seed=5)
    b = write_video(tmp_path / "b.mp4", SMALL, seed=5)
    assert a.objects and _key(a.objects) == _key(b.objects)
    fa, fb = _decode(a.path)[0].to_ndarray(format="rgb24"), _decode(b.path)[0].to_ndarray(format="rgb24")
    assert np.array_equal(fa, fb)
    raw_a = [f for f, _ in render_frames(SMALL, 5)]
    raw_b = [f for f, _ in render_frames(SMALL, 5)]
    assert all(np.array_equal(x, y) for x, y in zip(raw_a, raw_b, strict=True))


def test_different_seed_differs() -> None:
    spec = SceneSpec(width=320, height=240, frames=5)
    (f1, t1), (f2, t2) = next(render_frames(spec, 1)), next(render_frames(spec, 2))
    assert not np.array_equal(f1, f2)
    assert _key(t1) != _key(t2)


def test_mp4_decodes_with_frames_size_pts_and_gop(tmp_path: Path) -> None:
    spec = SceneSpec(width=320, height=240, frames=60, fps=20.0, gop=15)
    truth = write_video(tmp_path / "v.mp4", spec, seed=3)
    frames = _decode(truth.path)
    assert len(frames) == spec.frames
    assert all((f.width, f.height) == (320, 240) for f in frames)
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    with av.open(str(truth.path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 20
        keys = [i for i, p in enumerate(p for p in container.demux(stream) if p.size) if p.is_keyframe]
    assert keys == [0, 15, 30, 45]
    assert PictureType.B not in {PictureType(int(f.pict_type)) for f in frames}  # zerolatency: no B-frames


@pytest.mark.parametrize("suffix", [".h264", ".mkv"])
def test_other_containers_decode(tmp_path: Path, suffix: str) -> None:
    spec = SceneSpec(width=160, height=120, frames=30)
    truth = write_video(tmp_path / f"v{suffix}", spec, seed=4)
    frames = _decode(truth.path)
    assert len(frames) == 30 and (frames[0].width, frames[0].height) == (160, 120)
    if suffix == ".h264":
        assert truth.path.read_bytes()[:4] == b"\x00\x00\x00\x01"  # Annex-B start code


def test_encode_frames_preserves_colours(tmp_path: Path) -> None:
    h, w = 64, 96
    frames = []
    for i, colour in enumerate([(220, 30, 30), (30, 200, 40), (20, 40, 230), (128, 128, 128)]):
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = colour
        img[: h // 2, : w // 2] = (255 - i * 40, 255, 255)
        frames.append(img)
    n = encode_frames(tmp_path / "c.mp4", iter(frames), fps=10, crf=18)
    assert n == 4
    decoded = [f.to_ndarray(format="rgb24").astype(int) for f in _decode(tmp_path / "c.mp4")]
    for src, dec in zip(frames, decoded, strict=True):
        # interior of each flat area (away from chroma edges) must survive within a few levels
        assert np.abs(dec[h // 2 + 4:, w // 2 + 4:] - src[h // 2 + 4:, w // 2 + 4:]).max() <= 6
        assert np.abs(dec[: h // 2 - 4, : w // 2 - 4] - src[: h // 2 - 4, : w // 2 - 4]).max() <= 6


def test_encode_rejects_odd_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        encode_frames(tmp_path / "odd.mp4", [np.zeros((31, 40, 3), np.uint8)], fps=25)
    with pytest.raises(ValueError):
        SceneSpec(width=321, height=240)


def test_all_classes_appear_with_expected_aspect(long_video: VideoTruth) -> None:
    W, H = LONG.width, LONG.height
    labels = {o.label for o in long_video.objects}
    assert labels == set(range(1, len(CLASSES) + 1))
    for o in long_video.objects:
        x1, y1, x2, y2 = o.box
        if x1 <= 0 or y1 <= 0 or x2 >= W or y2 >= H:
            continue  # truncated by the border: aspect not meaningful
        lo, hi = ASPECT_RANGES[o.label]
        aspect = (x2 - x1) / (y2 - y1)
        assert lo - 0.1 <= aspect <= hi + 0.1, (o, aspect)
        assert y2 - y1 >= LONG.min_size - 1 and y2 - y1 <= LONG.max_size_frac * H + 1


def test_boxes_inside_frame_and_visibility(long_video: VideoTruth) -> None:
    W, H = LONG.width, LONG.height
    per_frame = long_video.per_frame()
    assert len(per_frame) == LONG.frames
    partially_hidden = 0
    for f, objs in enumerate(per_frame):
        assert len({o.track_id for o in objs}) == len(objs)
        for o in objs:
            x1, y1, x2, y2 = o.box
            assert o.frame_index == f and o.track_id > 0
            assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
            assert 0.0 <= o.visibility <= 1.0
            assert o.ignored == (o.visibility < IGNORE_VISIBILITY)
            touches_edge = x1 == 0 or y1 == 0 or x2 == W or y2 == H
            overlaps = any(p is not o and p.box[0] < x2 and x1 < p.box[2] and p.box[1] < y2 and y1 < p.box[3]
                           for p in objs)
            if not touches_edge and not overlaps:
                assert o.visibility == 1.0, o
            if o.visibility < 1.0:
                assert touches_edge or overlaps, o
                partially_hidden += not touches_edge
    assert partially_hidden > 0  # objects do occlude each other


def test_objects_enter_and_leave(long_video: VideoTruth) -> None:
    W, H = LONG.width, LONG.height
    spans: dict[int, list[ObjectTruth]] = {}
    for o in long_video.objects:
        spans.setdefault(o.track_id, []).append(o)
    assert len(spans) >= 6
    late = [objs for objs in spans.values() if objs[0].frame_index > 0]
    early_end = [objs for objs in spans.values() if objs[-1].frame_index < LONG.frames - 1]
    assert late and early_end
    for objs in late:  # new tracks come in over a border
        x1, y1, x2, y2 = objs[0].box
        assert x1 == 0 or y1 == 0 or x2 == W or y2 == H
    for objs in spans.values():  # a track is contiguous in time, one class, moving smoothly
        frames = [o.frame_index for o in objs]
        assert frames == list(range(frames[0], frames[-1] + 1))
        assert len({o.label for o in objs}) == 1
    moved = [objs for objs in spans.values() if len(objs) > 20 and objs[0].box != objs[-1].box]
    assert moved


def test_mot_and_coco_agree_with_truth(long_video: VideoTruth, tmp_path: Path) -> None:
    mot = tmp_path / "gt" / "gt.txt"
    write_mot(long_video, mot)
    lines = mot.read_text().splitlines()
    assert len(lines) == len(long_video.objects)
    first = lines[0].split(",")
    assert len(first) == 9 and int(first[0]) == 1  # 1-based frame numbers
    back = read_mot(mot)
    want = sorted(long_video.objects, key=lambda o: (o.frame_index, o.track_id))
    for a, b in zip(back, want, strict=True):
        assert (a.frame_index, a.track_id, a.label) == (b.frame_index, b.track_id, b.label)
        assert np.allclose(a.box, b.box, atol=0.01) and abs(a.visibility - b.visibility) < 1e-3
    confs = {line.split(",")[6] for line in lines}
    assert confs <= {"0", "1"}

    other = write_video(tmp_path / "other.mp4", SceneSpec(width=160, height=120, frames=20), seed=2)
    coco_path = tmp_path / "coco.json"
    write_coco([long_video, other], coco_path)
    coco = json.loads(coco_path.read_text())
    assert [c["name"] for c in coco["categories"]] == list(CLASSES)
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    assert len(coco["images"]) == LONG.frames + 20
    assert len({im["id"] for im in coco["images"]}) == len(coco["images"])
    images = {im["id"]: im for im in coco["images"]}
    assert images[1]["file_name"] == "long/000000" and images[1]["frame_index"] == 0
    assert images[1]["video"] == "long.mp4" and images[1]["width"] == 320
    assert len(coco["annotations"]) == len(long_video.objects) + len(other.objects)
    by_key = {(o.frame_index, o.track_id): o for o in long_video.objects}
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        if im["video"] != "long.mp4":
            continue
        o = by_key[(im["frame_index"], ann["track_id"])]
        assert np.allclose(ann["bbox"], o.xywh) and ann["category_id"] == o.label
        assert ann["iscrowd"] == int(o.ignored)
        assert ann["area"] == pytest.approx(o.xywh[2] * o.xywh[3])


def test_boxes_match_rendered_pixels() -> None:
    """Noise/blur/lighting off: pixels differ from the bare background only inside boxes, and each
    unoccluded object's box is tight (the object touches all four sides)."""
    kw = dict(width=320, height=240, frames=40, noise_std=0.0, blur=False, lighting=False)
    bare = next(render_frames(SceneSpec(max_objects=0, **kw), 9))
    background, no_objects = bare[0].astype(int), bare[1]
    assert no_objects == []
    W, H = kw["width"], kw["height"]
    checked = 0
    for frame, objs in render_frames(SceneSpec(**kw), 9):
        changed = np.abs(frame.astype(int) - background).max(axis=2) > 0
        inside = np.zeros_like(changed)
        for o in objs:
            x1, y1, x2, y2 = (int(v) for v in o.box)
            inside[y1:y2, x1:x2] = True
        assert not (changed & ~inside).any()
        for o in objs:
            x1, y1, x2, y2 = (int(v) for v in o.box)
            if o.visibility < 1.0 or x1 == 0 or y1 == 0 or x2 == W or y2 == H:
                continue
            m = changed[y1:y2, x1:x2]
            assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any(), o
            checked += 1
    assert checked > 20
