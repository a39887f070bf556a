"""torchvision's COCO detectors by name (`--weights DEFAULT`), loaded for real from a seeded torch hub cache (nothing
can be downloaded here); label filters through the real pipeline and Redis; fine-tuning from the COCO weights."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from PIL import Image
from torchvision.models import get_model, get_model_weights

from engines import Detector, EngineError, create_detector
from engines.models import build_model
from pipeline.cli.commands import main
from pipeline.config import ConfigError, load_config
from pipeline.runner import Pipeline
from tests.conftest import run_cli
from tests.test_pipeline import entries, run_pipeline

ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"
WEIGHTS = get_model_weights(ARCH).DEFAULT
CATEGORIES: list[str] = WEIGHTS.meta["categories"]
FILE_NAME = WEIGHTS.url.rsplit("/", 1)[1]  # fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth


def seed_hub_cache(torch_home: Path, seed: int, favour: dict[str, float] | None = None,
                   mark: bool = False) -> dict[str, torch.Tensor]:
    """Save a random-init checkpoint of ARCH where torch.hub keeps torchvision's file, as torchvision saves them
    (no BatchNorm step counters). `favour`: class-logit biases, so that every proposal is confidently that label.
    `mark`: the first convolution negated, so that not even a random init with the same seed computes the same."""
    torch.manual_seed(seed)
    model = get_model(ARCH, weights=None, weights_backbone=None, num_classes=len(CATEGORIES))
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    if mark:
        state["backbone.body.0.0.weight"].neg_()
    for label, bias in (favour or {}).items():
        state["roi_heads.box_predictor.cls_score.bias"][CATEGORIES.index(label)] = bias
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / FILE_NAME)
    return state


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("RPN_STATE_DIR", str(tmp_path / "state"))  # exported-model cache of this test only
    return home


def test_default_weights_load_from_the_hub_cache(torch_home: Path, tmp_path: Path) -> None:
    seeded = seed_hub_cache(torch_home, seed=1, mark=True)
    torch.manual_seed(1)  # the seed the cached file was made with: a loader that ignored it would compute the same
    loaded = build_model(ARCH, "DEFAULT")
    assert loaded.trained and loaded.label_names == tuple(CATEGORIES)
    assert loaded.weights_file == torch_home / "hub" / "checkpoints" / FILE_NAME
    state = loaded.model.state_dict()
    assert state.keys() == seeded.keys() and all(torch.equal(state[k], v) for k, v in seeded.items())
    assert build_model(ARCH, "COCO_V1").weights_file == loaded.weights_file  # torchvision's other name

    # The loaded model computes what the seeded weights compute, not what other weights do.
    torch.save(seeded, tmp_path / "same.pth")
    torch.manual_seed(2)
    other = get_model(ARCH, weights=None, weights_backbone=None, num_classes=len(CATEGORIES)).state_dict()
    torch.save(other, tmp_path / "other.pth")
    image = [torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(0))]

    def features(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            images, _ = model.transform(image)
            return model.backbone(images.tensors)["0"]

    ours = features(loaded.model)
    assert torch.equal(ours, features(build_model(ARCH, tmp_path / "same.pth").model))
    assert (ours - features(build_model(ARCH, tmp_path / "other.pth").model)).abs().max() > 0.1 * ours.abs().max()
    torch.manual_seed(1)
    fresh = build_model(ARCH, None)  # what the same code computes without the weights
    assert not fresh.trained
    assert (ours - features(fresh.model)).abs().max() > 0.1 * ours.abs().max()  # not what a random init computes


def test_config_weights_default(torch_home: Path) -> None:
    seed_hub_cache(torch_home, seed=1, favour={"dog": 10.0})
    engine = load_config(data={"engine": {"arch": ARCH, "weights": "DEFAULT", "backend": "torch"}}).engine
    detector = create_detector(engine.backend, engine.arch, engine.weights, engine.score_threshold)
    assert tuple(detector.label_names) == tuple(CATEGORIES)
    found = detector.detect([np.full((240, 320, 3), 128, np.uint8)])[0]
    assert len(found) and {detector.label_name(int(i)) for i in found.labels} == {"dog"}


def test_damaged_cache_file_is_named(torch_home: Path) -> None:
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / FILE_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(EngineError, match=f"weights file .*{FILE_NAME} is damaged.*delete it"):
        build_model(ARCH, "DEFAULT")


def test_weights_names_are_checked(torch_home: Path) -> None:
    with pytest.raises(EngineError, match="COCO_V1, DEFAULT"):
        build_model(ARCH, "COCO_V9")
    with pytest.raises(EngineError, match="fasterrcnn_lite.* has no torchvision weights"):
        build_model("fasterrcnn_lite", "DEFAULT")


def test_detect_with_default_weights_offline(torch_home: Path, make_video: Callable[..., Path],
                                             tmp_path: Path) -> None:
    """The acceptance command: from a seeded cache it runs (labels are COCO names); with no cache it exits 2 with
    the file, the URL and where to put a copy, and no traceback."""
    video = make_video(3)
    env = {"TORCH_HOME": str(torch_home), "RPN_STATE_DIR": str(tmp_path / "state")}
    missing = run_cli("detect", str(video), "--arch", ARCH, "--weights", "DEFAULT", env=env)
    assert missing.returncode == 2, missing.stderr
    assert FILE_NAME in missing.stderr and WEIGHTS.url in missing.stderr
    assert str(torch_home / "hub" / "checkpoints" / FILE_NAME) in missing.stderr
    assert "Traceback" not in missing.stderr

    # Every proposal scores about 0.62 person and 0.37 car: --classes car keeps only the cars.
    seed_hub_cache(torch_home, seed=1, favour={"person": 10.0, "car": 9.5})
    out = tmp_path / "det.json"
    ok = run_cli("detect", str(video), "--arch", ARCH, "--weights", "DEFAULT", "--max-frames", "2",
                 "--score-threshold", "0.3", "--classes", "car", "--json", str(out), env=env)
    assert ok.returncode == 0, ok.stderr
    frames = json.loads(out.read_text())["frames"]
    labels = [label for f in frames for label in f["labels"]]
    assert len(frames) == 2 and labels and set(labels) == {"car"}
    assert all(0.3 <= score < 0.5 for f in frames for score in f["scores"])


def detected(client: redis.Redis, prefix: str, camera: str) -> list[dict[str, object]]:
    """The detector's own boxes a camera published (not the tracker's predictions for missed objects, which depend
    on the other labels' tracks)."""
    return [o for e in entries(client, prefix, camera) for o in e["objects"]  # type: ignore[union-attr]
            if not o.get("predicted")]


def test_only_chosen_labels_reach_redis(make_video: Callable[..., Path], detector: Detector, rclient: redis.Redis,
                                        prefix: str) -> None:
    video = make_video(40, seed=3)
    everything = run_pipeline({"all": video}, detector, rclient, prefix)
    objects = detected(rclient, prefix, "all")
    people = [o for o in objects if o["label"] == "person"]
    assert everything.ok and people and {o["label"] for o in objects} > {"person"}  # the scene has other labels

    chosen = run_pipeline({"people": video}, detector, rclient, prefix, engine={"classes": ["person"]})
    kept = detected(rclient, prefix, "people")
    assert chosen.ok and kept and {o["label"] for o in kept} == {"person"}
    assert chosen.streams["people"]["published"] == 40

    # Per-label filters: big enough people only (min_area in source pixels), cars kept as they are.
    areas = sorted((o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]) for o in people)
    min_area = areas[len(areas) // 2]
    filtered = run_pipeline({"big": video}, detector, rclient, prefix,
                            engine={"classes": ["person", "car"], "filters": {"person": {"min_area": min_area}}})
    big = detected(rclient, prefix, "big")
    big_people = [o for o in big if o["label"] == "person"]
    assert filtered.ok and {o["label"] for o in big} <= {"person", "car"}
    assert 0 < len(big_people) < len(people)
    cars = sum(o["label"] == "car" for o in objects)
    assert sum(o["label"] == "car" for o in big) == cars


def test_unknown_labels_are_config_errors(detector: Detector, rclient: redis.Redis) -> None:
    with pytest.raises(ConfigError, match=r"engine.classes: the model has no label 'persn'; did you mean 'person'"):
        Pipeline(load_config(data={"engine": {"classes": ["persn"]}}), detector, rclient)
    with pytest.raises(ConfigError, match=r"engine.filters.truck: the model has no label 'truck'.*person, car, sign"):
        Pipeline(load_config(data={"engine": {"filters": {"truck": {"min_score": 0.7}}}}), detector, rclient)
    with pytest.raises(ConfigError, match=r"engine: .*filters: car not in classes"):
        load_config(data={"engine": {"classes": ["person"], "filters": {"car": {"min_area": 10}}}})
    with pytest.raises(ConfigError, match=r"engine.filters.person.min_score: .*less than or equal to 1"):
        load_config(data={"engine": {"filters": {"person": {"min_score": 5}}}})


def test_run_with_a_misspelt_class_exits_2(make_video: Callable[..., Path], tmp_path: Path) -> None:
    result = run_cli("run", "--source", str(make_video(3)), "--classes", "person,cars", "--backend", "torch",
                     env={"RPN_STATE_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "did you mean 'car'" in result.stderr and "Traceback" not in result.stderr


def write_tiny_coco(folder: Path) -> Path:
    """Four 160x120 images with a person and a car each, as a COCO file."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(4):
        pixels = rng.integers(60, 90, (120, 160, 3), dtype=np.uint8)
        pixels[20:100, 20 + 5 * i:50 + 5 * i] = (200, 60, 60)  # person: tall
        pixels[70:100, 90:150] = (40, 40, 200)  # car: wide
        Image.fromarray(pixels).save(folder / f"im{i}.png")
        images.append({"id": i + 1, "file_name": f"im{i}.png", "width": 160, "height": 120})
        annotations += [
            {"id": 2 * i + 1, "image_id": i + 1, "category_id": 1, "bbox": [20 + 5 * i, 20, 30, 80], "area": 2400,
             "iscrowd": 0},
            {"id": 2 * i + 2, "image_id": i + 1, "category_id": 3, "bbox": [90, 70, 60, 30], "area": 1800, "iscrowd": 0},
        ]
    path = folder / "my.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}))
    return path


def test_fine_tune_from_coco_weights_then_export_and_detect(torch_home: Path, tmp_path: Path,
                                                            make_video: Callable[..., Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    seeded = seed_hub_cache(torch_home, seed=1)
    (tmp_path / "data").mkdir()
    coco = write_tiny_coco(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["--log-level", "warning", "train", "--arch", ARCH, "--init", "DEFAULT", "--coco", str(coco),
                 "--images", str(tmp_path / "data"), "--steps", "2", "--batch-size", "2", "--lr", "1e-4",
                 "--warmup", "1", "--out", str(out), "--threads", "1"]) == 0
    weights = torch.load(out / "model.pt", weights_only=True)
    assert weights["arch"] == ARCH and weights["label_names"] == ["__background__", "person", "car"]
    trained = weights["model"]
    # Started from the COCO weights: two small steps leave the backbone next to them (a fresh init is far away),
    # and the frozen BatchNorm statistics are exactly theirs; the box predictor is new (3 classes, not 91).
    conv = "backbone.body.0.0.weight"
    assert torch.allclose(trained[conv], seeded[conv], atol=0.02) and not torch.equal(trained[conv], seeded[conv])
    for key in ("backbone.body.0.1.running_var", "backbone.body.0.1.weight"):
        assert torch.equal(trained[key], seeded[key])
    assert trained["roi_heads.box_predictor.cls_score.weight"].shape[0] == 3

    assert main(["--log-level", "warning", "export", "--weights", str(out / "model.pt"),
                 "--out", str(tmp_path / "onnx")]) == 0
    assert json.loads((tmp_path / "onnx" / "manifest.json").read_text())["label_names"][1:] == ["person", "car"]
    assert main(["--log-level", "warning", "detect", str(make_video(2)), "--weights", str(out / "model.pt"),
                 "--backend", "onnxruntime", "--score-threshold", "0.0", "--json", str(tmp_path / "det.json")]) == 0
    result = json.loads((tmp_path / "det.json").read_text())
    assert result["arch"] == ARCH and len(result["frames"]) == 2
    assert {label for f in result["frames"] for label in f["labels"]} <= {"person", "car"}
