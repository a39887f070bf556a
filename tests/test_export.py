"""ONNX export of the split detector: graphs TensorRT 10 can parse, with the promised dynamic dims, and backends that
agree with the eager PyTorch reference (ONNX Runtime here; TensorRT where there is a GPU)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from engines.base import Detections, EngineError
from engines.export import ExportedModel, export_onnx
from engines.models import LoadedModel, build_model
from engines.onnx_backend import create_onnxruntime_detector
from engines.split import BoxHeadStage, DenseStage, SplitDetector, input_size_for, pooled_levels, rois_of, torch_runners
from lab.synth import SceneSpec, render_frames
from engines.tensorrt_backend import (
    build_engine,
    create_tensorrt_detector,
    engine_cache_key,
    roi_heads_profiles,
    rois_profile,
    tensorrt_available,
    timing_cache_path,
)
from engines.torch_backend import TorchDetector
from engines.trt_ops import (
    TENSORRT10_ONNX_OPS,
    TENSORRT10_OPSET_RANGE,
    default_opset,
    dynamic_dims,
    static_shape,
    unsupported_ops,
)


@dataclass(frozen=True)
class Case:
    loaded: LoadedModel
    exported: ExportedModel
    score_threshold: float


def _liven_mobilenet(loaded: LoadedModel) -> None:
    """Make a randomly initialised MobileNetV3 Faster R-CNN give numbers worth comparing.

    With torchvision's default init the random MobileNetV3 body shrinks activations to ~1e-8, so every score ties
    and no box passes the box head's 0.05 score threshold: a parity check on that compares nothing. Batch-norm
    statistics measured on synthetic frames (other frames than the held-out ones) keep the features O(1), and a
    wider random classifier spreads the class scores.
    """
    model = loaded.model
    size = input_size_for(model, 640, 360)
    pixels = SplitDetector(loaded, *torch_runners(model, size), size, "calibration").preprocess(_frames(4, seed=7))[0]
    calib = DenseStage(model).normalize(pixels)
    for bn in (m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the calibration batch
        bn.train()
    with torch.no_grad():
        model.backbone(calib)
        nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.15)
    model.eval()


def _export(name: str, arch: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, ExportedModel]:
    torch.manual_seed(0)
    loaded = build_model(arch)
    if arch == "fasterrcnn_mobilenet_v3_large_320_fpn":
        _liven_mobilenet(loaded)
    return loaded, export_onnx(loaded, tmp_path_factory.mktemp(f"export_{name}"))


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return Case(*_export("lite", "fasterrcnn_lite", tmp_path_factory), score_threshold=0.05)


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return Case(*_export("mobilenet", "fasterrcnn_mobilenet_v3_large_320_fpn", tmp_path_factory), score_threshold=0.0)


@pytest.fixture(params=["lite", "mobilenet"])
def case(request: pytest.FixtureRequest) -> Case:
    return request.getfixturevalue(request.param)


def _frames(n: int, seed: int) -> list[np.ndarray]:
    return [rgb for rgb, _ in render_frames(SceneSpec(width=640, height=360, frames=n), seed=seed)]


@pytest.fixture(scope="module")
def held_out() -> list[np.ndarray]:
    """Frames of a scene no model here was calibrated or traced on."""
    return _frames(3, seed=2024)


def _graphs(case: Case) -> list[tuple[str, onnx.ModelProto]]:
    return [(p.name, onnx.load(str(p))) for p in (case.exported.dense_path, case.exported.roi_heads_path)]


# --- what TensorRT 10 needs from the graphs -------------------------------------------------------------------------

def test_graphs_are_valid_onnx_of_operators_tensorrt10_parses(case: Case) -> None:
    for name, model in _graphs(case):
        onnx.checker.check_model(model, full_check=True)
        assert unsupported_ops(model) == [], f"{case.loaded.arch} {name} needs operators TensorRT 10 cannot parse"
        low, high = TENSORRT10_OPSET_RANGE
        assert low <= default_opset(model) <= high


def test_only_dim0_is_dynamic_and_the_image_size_is_static(case: Case) -> None:
    height, width = case.exported.input_size
    dense, roi_heads = (model for _, model in _graphs(case))
    assert static_shape(dense, "images") == [None, height, width, 3]  # pixels, normalised in the graph
    assert dynamic_dims(dense)["images"] == [(0, "batch")]
    for tensor, dims in dynamic_dims(dense).items():
        assert dims == [(0, "batch")], f"{case.loaded.arch} dense.onnx: {tensor!r} has dynamic dims {dims}"
    # roi_heads.onnx: the pooled levels exactly as dense.onnx gives them (batch), and the batch's RoIs (rois).
    levels = [f"features_{i}" for i in pooled_levels(case.loaded.model)]
    assert [i.name for i in roi_heads.graph.input] == [*levels, "rois"]
    for name in levels:
        assert static_shape(roi_heads, name) == static_shape(dense, name)
    assert static_shape(roi_heads, "rois") == [None, 5]
    for tensor, dims in dynamic_dims(roi_heads).items():
        want = [(0, "batch")] if tensor in levels else [(0, "rois")]
        assert dims == want, f"{case.loaded.arch} roi_heads.onnx: {tensor!r} has dynamic dims {dims}, not {want}"


def test_roi_align_is_exported_with_torchvisions_semantics(case: Case) -> None:
    """aligned=False (torchvision's MultiScaleRoIAlign) is ONNX `output_half_pixel`: the mode TensorRT's RoiAlign
    importer maps to its plugin's aligned=0; average pooling with the model's sampling ratio."""
    _, roi_heads = _graphs(case)[1]
    pool = case.loaded.model.roi_heads.box_roi_pool
    nodes = [n for n in roi_heads.graph.node if n.op_type == "RoiAlign"]
    assert len(nodes) == len(pooled_levels(case.loaded.model))
    for node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["coordinate_transformation_mode"] == b"output_half_pixel"
        assert attrs.get("mode", b"avg") == b"avg"
        assert (attrs["output_height"], attrs["output_width"], attrs["sampling_ratio"]) == (
            *pool.output_size, pool.sampling_ratio)


def _tiny_model(
    nodes: list[onnx.NodeProto], y_shape: list[int] | None = None, functions: list[onnx.FunctionProto] | None = None
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1), helper.make_opsetid("custom", 1)]
    return helper.make_model(graph, opset_imports=opsets, functions=functions or [])


def test_unsupported_ops_flags_what_tensorrt10_cannot_parse() -> None:
    assert unsupported_ops(_tiny_model([helper.make_node("Relu", ["x"], ["y"])])) == []
    # Det is marked N in TensorRT 10's support matrix.
    det = _tiny_model([helper.make_node("Det", ["x"], ["y"])], y_shape=[])
    onnx.checker.check_model(det)
    assert "Det" not in TENSORRT10_ONNX_OPS and unsupported_ops(det) == ["Det"]
    # ...also inside a subgraph, inside a local function, and as a custom-domain op (it would need a plugin).
    branch = helper.make_graph([helper.make_node("Unique", ["x"], ["u"])], "branch", [],
                               [helper.make_tensor_value_info("u", TensorProto.FLOAT, None)])
    function = helper.make_function("local", "Fn", ["a"], ["b"], [helper.make_node("Compress", ["a", "a"], ["b"])],
                                    [helper.make_opsetid("", 17)])
    nested = _tiny_model([
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
        helper.make_node("If", ["c"], ["i"], then_branch=branch, else_branch=branch),
        helper.make_node("Fn", ["i"], ["f"], domain="local"),
        helper.make_node("MyOp", ["f"], ["y"], domain="custom"),
    ], functions=[function])
    assert unsupported_ops(nested) == ["Compress", "Unique", "custom::MyOp"]


def test_dynamic_dims_reports_symbolic_and_unknown_dims() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])],
    )
    assert dynamic_dims(helper.make_model(graph)) == {"x": [(0, "n"), (2, "?")], "y": []}


# --- parity with the eager reference --------------------------------------------------------------------------------

def _assert_same_detections(got: list[Detections], want: list[Detections], what: str) -> None:
    """Same count; each reference detection has its own match: same label, box within 0.5 px, score within 1e-3.

    Matched, not compared in order: a random model's scores nearly tie, so two backends may order them differently.
    """
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert len(g) == len(w), f"{what}, frame {i}: {len(g)} detections, reference {len(w)}"
        free = np.ones(len(g), bool)
        for j in range(len(w)):
            box_err = np.abs(g.boxes - w.boxes[j]).max(axis=1) if len(g) else np.zeros(0)
            fits = free & (g.labels == w.labels[j]) & (box_err <= 0.5) & (np.abs(g.scores - w.scores[j]) <= 1e-3)
            assert fits.any(), (
                f"{what}, frame {i}: nothing matches reference detection {j} (label {w.labels[j]}, box {w.boxes[j]}, "
                f"score {w.scores[j]:.5f}); closest box off by {box_err.min() if len(g) else float('nan'):.3f} px"
            )
            free[np.flatnonzero(fits)[np.argmin(box_err[fits])]] = False


def _assert_close_to_scale(got: np.ndarray, want: np.ndarray, rel: float, what: str) -> None:
    """|got - want| within `rel` of the reference's largest magnitude, which must not be negligible."""
    scale = float(np.abs(want).max())
    assert scale > 1e-5, f"{what}: the reference is ~0 ({scale:g}), so comparing it would prove nothing"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    err = float(np.abs(got - want).max())
    assert err <= rel * scale, f"{what}: max |diff| {err:g} > {rel:g} x {scale:g}"


def test_onnxruntime_detections_match_eager_torch(case: Case, held_out: list[np.ndarray]) -> None:
    ort_detector = create_onnxruntime_detector(case.loaded, case.exported, score_threshold=case.score_threshold)
    reference = TorchDetector(case.loaded, score_threshold=case.score_threshold).detect(held_out)
    assert sum(len(d) for d in reference) > 0, "no detections to compare"
    _assert_same_detections(ort_detector.detect(held_out), reference, f"{case.loaded.arch} onnxruntime")


def test_onnxruntime_graph_outputs_match_eager_stages(case: Case, held_out: list[np.ndarray]) -> None:
    model = case.loaded.model.eval()
    batch, _ = create_onnxruntime_detector(case.loaded, case.exported).preprocess(held_out)  # 3: not the traced 2
    dense = ort.InferenceSession(str(case.exported.dense_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = [t.numpy() for t in DenseStage(model).eval()(batch)]
    got = dense.run(None, {"images": batch.numpy()})
    assert [o.name for o in dense.get_outputs()] == [f"{k}_{i}" for k in ("features", "objectness", "box_deltas")
                                                     for i in range(len(want) // 3)]
    for output, g, w in zip(dense.get_outputs(), got, want):
        _assert_close_to_scale(g, w, 1e-4, f"{case.loaded.arch} dense {output.name}")



def test_roi_heads_graph_matches_torchvision_multiscale_roi_align_and_box_head(
    case: Case, held_out: list[np.ndarray]
) -> None:
    """The exported RoIAlign + box head over a whole batch against the eager reference: torchvision's own
    MultiScaleRoIAlign on each image's proposals, then the box head, its softmax and its BoxCoder's decoding (boxes
    as offsets from the RoI's corners). Real proposals of held-out frames, plus boxes RoIAlign treats specially:
    degenerate (zero width/height), partly and wholly outside the picture."""
    model = case.loaded.model.eval()
    detector = create_onnxruntime_detector(case.loaded, case.exported)
    batch, sizes = detector.preprocess(held_out)
    outputs = detector.run_dense(batch)
    n = len(detector.feature_names)
    boxes = detector._proposals(batch, sizes, outputs[:n], outputs[n : 2 * n], outputs[2 * n : 3 * n])
    height, width = case.exported.input_size
    odd = torch.tensor([[10.0, 10.0, 10.0, 30.0], [50.0, 20.0, 80.0, 20.0], [-20.0, -15.0, 25.0, 12.0],
                        [width - 30.0, height - 10.0, width + 40.0, height + 25.0], [width + 5.0, 3.0, width + 50.0, 40.0],
                        [0.0, 0.0, float(width), float(height)], [3.2, 4.7, 400.0, 9.1]])
    boxes[1] = torch.cat([boxes[1], odd])
    assert all(len(b) for b in boxes), "no proposals to pool"
    roi_heads = ort.InferenceSession(str(case.exported.roi_heads_path), providers=["CPUExecutionProvider"])
    feeds = {f"features_{i}": outputs[i].numpy() for i in pooled_levels(model)}
    got = roi_heads.run(None, {**feeds, "rois": rois_of(boxes).numpy()})
    features = {name: outputs[i] for i, name in enumerate(detector.feature_names)}
    with torch.no_grad():
        pooled = model.roi_heads.box_roi_pool(features, boxes, sizes)
        class_logits, box_regression = BoxHeadStage(model).eval()(pooled)
        decoded = model.roi_heads.box_coder.decode(box_regression, boxes)  # [R, K, 4], as RoIHeads decodes them
        want = [torch.softmax(class_logits, -1).numpy(), (decoded - torch.cat(boxes)[:, None, :]).numpy()]
    assert got[0].shape[0] == sum(len(b) for b in boxes)
    for output, g, w in zip(roi_heads.get_outputs(), got, want):
        _assert_close_to_scale(g, w, 1e-4, f"{case.loaded.arch} roi heads {output.name}")


def test_a_frame_without_proposals_leaves_the_others_of_its_batch_as_they_are(
    lite: Case, held_out: list[np.ndarray]
) -> None:
    """Post-processing runs once over the whole batch: a frame with nothing proposed gets no detections and changes
    nothing for the others; a batch with nothing proposed at all gives empty detections, not an error."""
    detector = create_onnxruntime_detector(lite.loaded, lite.exported, score_threshold=lite.score_threshold)
    alone = detector.detect(held_out[:1])
    batch, sizes = detector.preprocess(held_out[:2])
    out = detector.run_dense(batch)
    boxes = detector._proposals(batch, sizes, out[:1], out[1:2], out[2:3])
    boxes[1] = boxes[1][:0]
    got = detector._detect_in_proposals(out[:1], boxes, sizes, held_out[:2])
    assert len(alone[0]) > 0 and len(got[1]) == 0
    _assert_same_detections(got[:1], alone, "first frame of a batch whose second proposes nothing")
    rpn = lite.loaded.model.rpn
    threshold, rpn.score_thresh = rpn.score_thresh, 1.01  # no objectness probability reaches it
    try:
        assert [len(d) for d in detector.detect(held_out)] == [0, 0, 0]
    finally:
        rpn.score_thresh = threshold


def test_an_export_from_an_older_version_is_refused_and_the_cache_makes_it_again(lite: Case, tmp_path: Path) -> None:
    """roi_heads.onnx used to give class logits and box deltas: an export dir from then cannot run with this glue.
    Loading it names the dir and says what to do; the runtime's cache exports again instead of failing."""
    import json
    import shutil

    from engines.export import MANIFEST_FILE, cached_export, load_exported

    weights = tmp_path / "lite.pt"  # the cache is keyed by the weights file's hash
    weights.write_bytes(b"the weights of this test")
    fresh = cached_export(lite.loaded, weights, (640, 360), tmp_path / "cache")
    old = json.loads((fresh.directory / MANIFEST_FILE).read_text())
    del old["roi_heads_outputs"]  # what a manifest of the older version holds
    (fresh.directory / MANIFEST_FILE).write_text(json.dumps(old))
    with pytest.raises(EngineError, match=f"{fresh.directory}.*older version.*export the model again"):
        load_exported(fresh.directory)
    again = cached_export(lite.loaded, weights, (640, 360), tmp_path / "cache")
    assert again.directory == fresh.directory and again.manifest["roi_heads_outputs"] == ["scores", "box_offsets"]
    shutil.rmtree(tmp_path / "cache")


# --- TensorRT ---------------------------------------------------------------------------------------------------------

def test_engine_cache_key_changes_with_everything_that_makes_an_engine() -> None:
    base = ("a" * 64, "10.15.1", "NVIDIA H100 (sm_90)", "fp16", (1, 4, 8))
    key = engine_cache_key(*base)
    assert key == engine_cache_key(*base) and len(key) == 64
    for i, other in enumerate(("b" * 64, "10.16.0", "NVIDIA L4 (sm_89)", "fp32", (1, 8, 8))):
        assert engine_cache_key(*base[:i], other, *base[i + 1:]) != key  # type: ignore[arg-type]
    assert timing_cache_path("/c", "10.15.1", "NVIDIA H100 (sm_90)") == Path("/c/timing-10-15-1-nvidia-h100-sm-90.cache")


def test_roi_heads_profile_covers_every_proposal_of_a_full_batch(lite: Case) -> None:
    post_nms = lite.loaded.model.eval().rpn.post_nms_top_n()
    assert post_nms == 100
    assert rois_profile(opt_batch=4, max_batch=8, post_nms_top_n=post_nms) == (1, 400, 800)
    assert rois_profile(opt_batch=8, max_batch=8, post_nms_top_n=30) == (1, 240, 240)
    # Only the rois input gets it; the feature levels keep the images' profile.
    assert roi_heads_profiles(lite.exported.roi_heads_path, 4, 8, post_nms) == {"rois": (1, 400, 800)}
    with pytest.raises(EngineError, match="no input 'rois'"):
        roi_heads_profiles(lite.exported.dense_path, 4, 8, post_nms)


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT and a GPU are present")
def test_tensorrt_backend_without_tensorrt_or_gpu_says_why(lite: Case) -> None:
    with pytest.raises(EngineError, match=r"backend 'tensorrt' needs (TensorRT 10|an NVIDIA GPU)"):
        create_tensorrt_detector(lite.loaded, lite.exported, max_batch=2)


@pytest.mark.gpu
@pytest.mark.skipif(not tensorrt_available(), reason="needs TensorRT 10 (tensorrt>=10,<11) and a CUDA GPU")
class TestTensorRT:
    MAX_BATCH = 2

    @pytest.fixture(scope="class")
    def engine_dir(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp("engines")

    def test_fp32_engines_match_onnxruntime(self, case: Case, held_out: list[np.ndarray], engine_dir: Path) -> None:
        trt_detector = create_tensorrt_detector(case.loaded, case.exported, score_threshold=case.score_threshold,
                                                max_batch=self.MAX_BATCH, cache_dir=engine_dir, fp16=False)
        ort_detector = create_onnxruntime_detector(case.loaded, case.exported, score_threshold=case.score_threshold)
        assert trt_detector.backend == "tensorrt" and trt_detector.max_batch == self.MAX_BATCH
        batch, _ = ort_detector.preprocess(held_out[: self.MAX_BATCH])
        for got, want, name in zip(trt_detector.run_dense(batch), ort_detector.run_dense(batch),
                                   [o.name for o in onnx.load(str(case.exported.dense_path)).graph.output]):
            _assert_close_to_scale(got.numpy(), want.numpy(), 1e-3, f"{case.loaded.arch} TensorRT dense {name}")
        reference = ort_detector.detect(held_out)
        assert sum(len(d) for d in reference) > 0
        # 3 frames with max_batch 2: the second chunk runs at batch 1, the profile's min.
        _assert_same_detections(trt_detector.detect(held_out), reference, f"{case.loaded.arch} TensorRT fp32")

    def test_fp16_engine_runs_close_to_onnxruntime(self, lite: Case, held_out: list[np.ndarray], engine_dir: Path) -> None:
        fp16 = create_tensorrt_detector(lite.loaded, lite.exported, score_threshold=lite.score_threshold,
                                        max_batch=self.MAX_BATCH, cache_dir=engine_dir, fp16=True)
        reference = create_onnxruntime_detector(lite.loaded, lite.exported)
        batch, _ = reference.preprocess(held_out[:1])
        for got, want in zip(fp16.run_dense(batch), reference.run_dense(batch)):
            assert torch.isfinite(got).all()
            _assert_close_to_scale(got.numpy(), want.numpy(), 5e-2, "TensorRT fp16 dense")
        assert sum(len(d) for d in fp16.detect(held_out)) > 0

    def test_engines_and_timing_cache_are_reused(self, lite: Case, engine_dir: Path) -> None:
        args = (lite.exported.dense_path, engine_dir, 1, 1, self.MAX_BATCH)
        first = build_engine(*args, fp16=False)
        mtime = first.stat().st_mtime_ns
        assert build_engine(*args, fp16=False) == first and first.stat().st_mtime_ns == mtime
        assert list(engine_dir.glob("timing-*.cache"))
        assert build_engine(lite.exported.dense_path, engine_dir, 1, 2, self.MAX_BATCH, fp16=False) != first

    def test_unparsable_graph_reports_the_parser_errors(self, tmp_path: Path) -> None:
        path = tmp_path / "det.onnx"
        onnx.save(_tiny_model([helper.make_node("Det", ["x"], ["y"])], y_shape=[]), str(path))
        with pytest.raises(EngineError, match="ONNX parser rejected"):
            build_engine(path, tmp_path, 1, 1, 1)


def test_tensorrt_ops_list_is_plausible() -> None:
    # The operators the exported graphs use, and a sample of the matrix's "N" rows.
    assert {"Conv", "Relu", "Gemm", "Flatten", "Resize", "HardSwish", "HardSigmoid", "MaxPool"} <= TENSORRT10_ONNX_OPS
    assert not {"Det", "Unique", "Compress", "MaxRoiPool", "ConvInteger", "StringNormalizer"} & TENSORRT10_ONNX_OPS
    assert len(TENSORRT10_ONNX_OPS) == 158
