"""Training data, the training loop (loss, checkpoints, exact resume) and the evaluation metrics."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lab.dataset import (
    SYNTH_LABEL_NAMES,
    CocoVideoFrames,
    ShuffledStream,
    SynthConfig,
    SynthFrames,
    collate_detection,
    parse_seeds,
    synth_eval_samples,
    truths_to_target,
)
from lab.evaluate import (
    add_eval_args,
    coco_scores,
    detect_with_proposals,
    eval_report,
    evaluate,
    evaluate_synth,
    proposal_recall,
)
from engines.models import build_model
from lab.synth import SceneSpec, render_frames, write_coco, write_video
from lab.train import (
    TrainConfig,
    add_train_args,
    build_train_model,
    lr_at,
    roi_align_matmul,
    train,
    train_from_args,
)

TINY_DATA = SynthConfig(seeds=tuple(range(6)), width=160, height=120, frames=24, every=4, videos_per_chunk=2)
# 160x120 frames at their own size (min_size 120): fast enough for a CPU test.
TINY = TrainConfig(seeds="0-5", width=160, height=120, frames=24, every=4, videos_per_chunk=2, batch_size=2,
                   steps=14, warmup=3, min_size=120, max_size=160, seed=3)


def _same_sample(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"]) and torch.equal(
        a[1]["labels"], b[1]["labels"])


# --------------------------------------------------------------------------- data


def test_parse_seeds() -> None:
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("1000,1002-1003") == [1000, 1002, 1003]
    with pytest.raises(ValueError):
        parse_seeds("5-1")


def test_synth_frames_format_and_resumable_stream() -> None:
    it = iter(SynthFrames(TINY_DATA, seed=1))
    samples = [next(it) for _ in range(TINY_DATA.chunk_len + 4)]  # crosses a chunk boundary
    for image, target in samples:
        assert image.dtype == torch.float32 and image.shape == (3, 120, 160)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        boxes = target["boxes"]
        assert boxes.shape[1] == 4 and len(boxes) == len(target["labels"])
        assert bool(((boxes[:, 2:] - boxes[:, :2]) >= 2).all())
        assert bool(((target["labels"] >= 1) & (target["labels"] <= 3)).all())
        assert "iscrowd" not in target
    assert sum(len(t["boxes"]) for _, t in samples) > 0
    # restarting the stream at sample k gives exactly the samples from k on (what --resume relies on)
    k = TINY_DATA.chunk_len - 2
    resumed = iter(SynthFrames(TINY_DATA, seed=1, start=k))
    assert all(_same_sample(next(resumed), s) for s in samples[k:])
    # another seed, another stream
    other = next(iter(SynthFrames(TINY_DATA, seed=2)))
    assert not _same_sample(other, samples[0])
    images, targets = collate_detection(samples[:3])
    assert len(images) == len(targets) == 3


def test_ignored_boxes_left_out_for_training_and_flagged_for_eval() -> None:
    spec = SceneSpec(width=160, height=120, frames=60, max_objects=8)
    for rgb, truths in render_frames(spec, 4):
        if any(o.ignored for o in truths) and any(not o.ignored for o in truths):
            break
    else:
        pytest.skip("no frame with ignored boxes in this scene")
    train_t = truths_to_target(truths)
    eval_t = truths_to_target(truths, include_ignored=True)
    assert len(train_t["boxes"]) < len(eval_t["boxes"])
    assert int(eval_t["iscrowd"].sum()) == len(eval_t["boxes"]) - len(train_t["boxes"])


def test_coco_video_and_image_frames(tmp_path: Path) -> None:
    spec = SceneSpec(width=160, height=120, frames=12)
    truth = write_video(tmp_path / "clip.mp4", spec, seed=7)
    write_coco([truth], tmp_path / "clip.coco.json")
    data = CocoVideoFrames(tmp_path / "clip.coco.json", include_ignored=True, every=3)
    assert len(data) == 4 and data.label_names == SYNTH_LABEL_NAMES
    per_frame = truth.per_frame()
    raw = [rgb for rgb, _ in render_frames(spec, 7)]
    for i in range(len(data)):
        image, target = data[i]
        fi = data.images[i]["frame_index"]
        assert fi == 3 * i and image.shape == (3, 120, 160)
        assert len(target["boxes"]) == len(per_frame[fi])
        assert int(target["iscrowd"].sum()) == sum(o.ignored for o in per_frame[fi])
        # decoded H.264 is close to the rendered frame
        assert float((image * 255 - torch.from_numpy(raw[fi]).permute(2, 0, 1).float()).abs().mean()) < 12
    # plain image files
    (tmp_path / "imgs").mkdir()
    Image.fromarray(raw[0]).save(tmp_path / "imgs" / "a.png")
    doc = {"images": [{"id": 5, "file_name": "a.png", "width": 160, "height": 120}],
           "annotations": [{"id": 1, "image_id": 5, "bbox": [10, 20, 30, 40], "category_id": 7, "iscrowd": 0},
                           {"id": 2, "image_id": 5, "bbox": [50, 20, 10, 10], "category_id": 9, "iscrowd": 1}],
           "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}]}
    (tmp_path / "imgs.json").write_text(json.dumps(doc))
    images = CocoVideoFrames(tmp_path / "imgs.json", images_root=tmp_path / "imgs")
    image, target = images[0]
    assert images.label_names == ("__background__", "cat", "dog")
    assert torch.equal(image, torch.from_numpy(raw[0]).permute(2, 0, 1).float() / 255)
    assert target["boxes"].tolist() == [[10.0, 20.0, 40.0, 60.0]] and target["labels"].tolist() == [1]


def test_training_on_a_coco_video_file(tmp_path: Path) -> None:
    truth = write_video(tmp_path / "clip.mp4", SceneSpec(width=160, height=120, frames=8), seed=9)
    write_coco([truth], tmp_path / "clip.coco.json")
    data = CocoVideoFrames(tmp_path / "clip.coco.json")
    stream = list(zip(ShuffledStream(data, seed=1), range(20)))
    resumed = list(zip(ShuffledStream(data, seed=1, start=13), range(7)))
    assert all(_same_sample(a[0], b[0]) for a, b in zip(stream[13:], resumed, strict=True))
    config = TrainConfig(coco=str(tmp_path / "clip.coco.json"), steps=2, batch_size=2, min_size=120, max_size=160)
    result = train(config, tmp_path / "out", log_every=0, progress=False)
    assert result.step == 2 and all(math.isfinite(h["loss"]) for h in result.history)
    assert build_model("fasterrcnn_lite", tmp_path / "out" / "model.pt").label_names == SYNTH_LABEL_NAMES


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("train")
    return train(TINY, out, checkpoint_every=0, log_every=0, progress=False)


@pytest.mark.parametrize("aligned", [False, True])
def test_matmul_roi_align_equals_torchvision(aligned: bool) -> None:
    from torchvision.ops import roi_align

    g = torch.Generator().manual_seed(0)
    feat = torch.randn(3, 5, 12, 16, generator=g, dtype=torch.float64, requires_grad=True)
    n = 60
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([140.0, 110.0]) - 10
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 60 + 0.1
    rois = torch.cat([torch.randint(0, 3, (n, 1), generator=g).double(), xy, xy + wh], 1)
    rois[0, 1:] = torch.tensor([-40.0, -40.0, 200.0, 150.0])  # beyond the map on every side
    rois[1, 1:] = torch.tensor([120.0, 88.0, 128.0, 96.0])  # at the far corner
    rois[2, 1:] = torch.tensor([30.0, 30.0, 30.2, 30.1])  # tiny
    weight = torch.randn(n, 5, 7, 7, generator=g, dtype=torch.float64)
    outs, grads = [], []
    for fn in (roi_align, roi_align_matmul):
        feat.grad = None
        out = fn(feat, rois, (7, 7), 0.125, 2, aligned)
        (out * weight).sum().backward()
        outs.append(out.detach())
        grads.append(feat.grad.clone())
    assert torch.allclose(outs[0], outs[1], atol=1e-10)
    assert torch.allclose(grads[0], grads[1], atol=1e-10)


def test_lr_schedule() -> None:
    c = TrainConfig(lr=1e-3, warmup=10, min_lr_frac=0.02)
    lrs = [lr_at(s, 100, c) for s in range(100)]
    assert lrs[0] < lrs[5] < lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-3 * 0.02, rel=0.05)


def _fixed_batches_loss(model: torch.nn.Module) -> float:
    """Mean training loss on 4 fixed batches of unseen scenes, with fixed RPN/RoI sampling."""
    it = iter(SynthFrames(dataclasses.replace(TINY_DATA, seeds=(500, 501)), seed=99))
    model.train()
    total = 0.0
    for _ in range(4):
        torch.manual_seed(0)
        with torch.no_grad():
            total += float(sum(model(*collate_detection([next(it) for _ in range(2)])).values()))
    return total / 4


def test_tiny_training_run_lowers_the_loss(tiny_run) -> None:
    losses = [h["loss"] for h in tiny_run.history]
    assert len(losses) == TINY.steps and tiny_run.step == TINY.steps
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-4:]) < np.mean(losses[:3]), losses
    assert {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"} <= tiny_run.history[0].keys()
    # the same fixed batches score clearly lower after training than with the initial weights (~0.7x)
    torch.manual_seed(TINY.seed)
    initial = build_train_model(TINY, len(SYNTH_LABEL_NAMES))  # train() starts from exactly this init
    trained = build_train_model(TINY, len(SYNTH_LABEL_NAMES))
    trained.load_state_dict(torch.load(tiny_run.out_dir / "model.pt", weights_only=True)["model"])
    before, after = _fixed_batches_loss(initial), _fixed_batches_loss(trained)
    assert after < 0.85 * before, (before, after)


def test_resume_continues_exactly(tiny_run, tmp_path: Path) -> None:
    first = train(TINY, tmp_path, checkpoint_every=0, log_every=0, stop_at=2, progress=False)
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["arch"] == "fasterrcnn_lite" and ckpt["label_names"] == list(SYNTH_LABEL_NAMES)
    assert ckpt["config"]["steps"] == TINY.steps
    assert all(int(s["step"]) == 2 for s in ckpt["optimizer"]["state"].values())
    resumed = train(None, tmp_path, resume=tmp_path / "last.pt", checkpoint_every=0, log_every=0, stop_at=4,
                    progress=False)
    assert [h["step"] for h in resumed.history] == [3, 4]
    full = tiny_run.history
    got = [h["loss"] for h in first.history + resumed.history]
    assert got == pytest.approx([h["loss"] for h in full[:4]], rel=1e-4, abs=1e-6)
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in full[2:4]]


def test_saved_weights_load_with_build_model(tiny_run) -> None:
    path = tiny_run.out_dir / "model.pt"
    assert path.stat().st_size < 20e6
    obj = torch.load(path, map_location="cpu", weights_only=True)
    assert set(obj) == {"model", "label_names", "arch"}
    assert all(v.dtype in (torch.float32, torch.int64) for v in obj["model"].values())
    loaded = build_model("fasterrcnn_lite", path)
    assert loaded.trained and loaded.label_names == SYNTH_LABEL_NAMES
    state = loaded.model.state_dict()
    for k, v in state.items():
        if not k.startswith(("roi_heads.box_head.fc6.", "roi_heads.box_roi_pool.projection.")):
            assert torch.equal(v, obj["model"][k])
    # fc6 runs as its truncated SVD (engines.models.inference_settings): the best rank-r approximation of W, reading
    # the pooled features through the channel projection RoIAlign now pools with (an orthonormal basis's P^T P).
    w = obj["model"]["roi_heads.box_head.fc6.weight"]
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    rank = state["roi_heads.box_head.fc6.0.weight"].shape[0]
    projection = state["roi_heads.box_roi_pool.projection.weight"].flatten(1)  # [r, C]
    channels = projection.shape[1]
    truncated = (u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]).view(w.shape[0], channels, -1)
    expected = torch.einsum("ocb,cd->odb", truncated, projection.T @ projection).flatten(1)
    product = (state["roi_heads.box_head.fc6.1.weight"] @ state["roi_heads.box_head.fc6.0.weight"]).view(
        w.shape[0], projection.shape[0], -1)
    torch.testing.assert_close(torch.einsum("okb,kc->ocb", product, projection).flatten(1), expected,
                               atol=1e-5, rtol=1e-4)
    assert torch.equal(state["roi_heads.box_head.fc6.1.bias"], obj["model"]["roi_heads.box_head.fc6.bias"])


def test_cli_hooks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_train_args(sub.add_parser("train"))
    add_eval_args(sub.add_parser("eval"))
    args = parser.parse_args(["train", "--out", str(tmp_path), "--steps", "1", "--batch-size", "1", "--seeds", "0",
                              "--frames", "5", "--every", "5", "--width", "96", "--height", "64"])
    assert train_from_args(args) == 0
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "last.pt").is_file()
    args = parser.parse_args(["eval", "--weights", str(tmp_path / "model.pt"), "--seeds", "1000", "--frames", "3",
                              "--width", "96", "--height", "64", "--json", str(tmp_path / "eval.json")])
    out = eval_report(args)
    assert "mAP@0.5" in out and "AR@100" in out and "person" in out
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert scores["frames"] == 3


# --------------------------------------------------------------------------- evaluation


def _gt_samples(frames: int = 30) -> list[dict[str, torch.Tensor]]:
    spec = SceneSpec(width=160, height=120, frames=frames)
    return [truths_to_target(t, include_ignored=True) for _, t in render_frames(spec, 1000)]


def test_perfect_detections_score_map_one() -> None:
    gts = _gt_samples()
    assert sum(int(g["iscrowd"].sum()) for g in gts) > 0, "want ignored boxes in the test data"
    # every GT box (ignored ones too: matching an ignored box is neither right nor wrong) with score 1
    dets = [{"boxes": g["boxes"].clone(), "scores": torch.ones(len(g["boxes"])), "labels": g["labels"].clone()}
            for g in gts]
    mAP, map50, per_class = coco_scores(gts, dets, SYNTH_LABEL_NAMES)
    assert map50 == 1.0 and mAP == 1.0
    assert all(v == 1.0 for v in per_class.values())
    # only the non-ignored boxes: still perfect
    dets = [{"boxes": g["boxes"][g["iscrowd"] == 0], "scores": torch.ones(int((g["iscrowd"] == 0).sum())),
             "labels": g["labels"][g["iscrowd"] == 0]} for g in gts]
    assert coco_scores(gts, dets, SYNTH_LABEL_NAMES)[1] == 1.0
    # wrong labels, or boxes shifted by half their size, score (much) lower
    wrong = [{**d, "labels": d["labels"] % 3 + 1} for d in dets]
    assert coco_scores(gts, wrong, SYNTH_LABEL_NAMES)[1] < 0.2
    shifted = []
    for d in dets:
        b = d["boxes"].clone()
        w = b[:, 2] - b[:, 0]
        b[:, [0, 2]] += w[:, None] * 0.6
        shifted.append({**d, "boxes": b})
    assert coco_scores(gts, shifted, SYNTH_LABEL_NAMES)[1] < 0.5
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
             for _ in gts]
    assert coco_scores(gts, empty, SYNTH_LABEL_NAMES)[:2] == (0.0, 0.0)


def test_proposal_recall_of_gt_boxes_is_one() -> None:
    gts = _gt_samples(10)
    props = [g["boxes"][g["iscrowd"] == 0].flip(0) for g in gts]
    matched, total = proposal_recall(props, gts)
    assert total > 0 and matched == total
    # ignored boxes don't count; proposals past the top-k don't count
    assert proposal_recall([torch.zeros(0, 4)] * len(gts), gts) == (0, total)
    far = [torch.cat([torch.zeros(100, 4) + torch.tensor([0, 0, 1, 1.0]), p]) for p in props]
    assert proposal_recall(far, gts)[0] == 0


def test_detect_with_proposals_matches_the_model(tiny_run) -> None:
    model = build_model("fasterrcnn_lite", tiny_run.out_dir / "model.pt").model
    images = [s[0] for s, _ in zip(synth_eval_samples([1001], 200, 150, frames=2), range(2))]
    dets, props = detect_with_proposals(model, images)
    with torch.inference_mode():
        ref = model(images)
    for d, r, p in zip(dets, ref, props, strict=True):
        assert torch.equal(d["boxes"], r["boxes"]) and torch.equal(d["scores"], r["scores"])
        assert p.shape[1] == 4 and 0 < len(p) <= 100
        assert float(p[:, 2].max()) <= 200 + 1e-3 and float(p[:, 3].max()) <= 150 + 1e-3  # original pixels


def test_evaluate_returns_unit_range_scores(tiny_run) -> None:
    model = build_model("fasterrcnn_lite", tiny_run.out_dir / "model.pt").model
    res = evaluate_synth(model, [1000], width=160, height=120, frames=8, every=2, encode=True)
    assert res.frames == 4 and res.gt_boxes > 0
    for v in (res.map50, res.map, res.ar100_50):
        assert 0.0 <= v <= 1.0
    raw = evaluate(model, synth_eval_samples([1000], 160, 120, frames=8, every=2))
    assert raw.frames == 4 and raw.gt_boxes == res.gt_boxes and 0.0 <= raw.ar100_50 <= 1.0
