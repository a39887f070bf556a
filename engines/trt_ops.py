"""What TensorRT 10's ONNX parser accepts, checked on an ONNX model without TensorRT or a GPU.

The exported graphs must parse in TensorRT 10 (engines/tensorrt_backend.py), but TensorRT can only run where there is
an NVIDIA GPU. These checks run anywhere, so an export that starts to need an operator TensorRT cannot parse, or that
loses its static image size, fails a CPU test instead of a deployment.

Only the operator names and the opset are checked here, not the per-operator restrictions the support matrix lists
(e.g. TopK's K < 3840, Resize's modes): building an engine on a GPU remains the final word.
"""
from __future__ import annotations

from collections.abc import Iterable

import onnx

# Source: onnx/onnx-tensorrt, docs/operators.md, "Supported ONNX Operators" for TensorRT 10.15 (the newest TensorRT
# 10.x version of that document found; its header: "TensorRT 10.15 supports operators in the inclusive range of opset 9
# to opset 24"). These are the operators its support matrix marks "Y" (in the default ai.onnx domain).
TENSORRT10_DOC = "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15)"
TENSORRT10_OPSET_RANGE: tuple[int, int] = (9, 24)
TENSORRT10_ONNX_OPS: frozenset[str] = frozenset(
    {
        "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "Attention",
        "AveragePool",
        "BatchNormalization", "BlackmanWindow",
        "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose",
        "Cos", "Cosh", "CumSum",
        "DeformConv", "DepthToSpace", "DequantizeLinear", "Div", "Dropout",
        "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike",
        "Flatten", "Floor",
        "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool",
        "Greater", "GreaterOrEqual", "GridSample", "GroupNormalization", "GRU",
        "HammingWindow", "HannWindow", "HardSigmoid", "HardSwish", "Hardmax",
        "Identity", "If", "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN",
        "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM",
        "LpNormalization", "LpPool",
        "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul",
        "Neg", "NonMaxSuppression", "NonZero", "Not",
        "OneHot", "Or",
        "Pad", "ParametricSoftplus", "Pow", "PRelu",
        "QuantizeLinear",
        "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range", "Reciprocal",
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
        "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence",
        "RMSNormalization", "RNN", "RoiAlign", "RotaryEmbedding", "Round",
        "STFT", "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid",
        "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt",
        "Squeeze", "Sub", "Sum",
        "Tan", "Tanh", "TensorScatter", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu",
        "Unsqueeze", "Upsample",
        "Where",
        "Xor",
    }
)

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _walk(nodes: Iterable[onnx.NodeProto]) -> Iterable[onnx.NodeProto]:
    """The nodes, each followed by the nodes of its subgraphs (the branches and bodies of If / Loop / Scan)."""
    for node in nodes:
        yield node
        for graph in _subgraphs(node):
            yield from _walk(graph.node)


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Operators of `model` TensorRT 10's ONNX parser does not support, sorted; [] when all are supported.

    Calls of the model's local functions are checked through the functions' bodies (the parser inlines them).
    Operators of other domains than ai.onnx (custom ops that would need a TensorRT plugin) are reported as
    "domain::Op".
    """
    functions = {(f.domain, f.name): f for f in model.functions}
    bad: set[str] = set()
    seen_functions: set[tuple[str, str]] = set()

    def check(nodes: Iterable[onnx.NodeProto]) -> None:
        for node in nodes:
            key = (node.domain, node.op_type)
            if key in functions:
                if key not in seen_functions:
                    seen_functions.add(key)
                    check(_walk(functions[key].node))
            elif node.domain not in _DEFAULT_DOMAINS:
                bad.add(f"{node.domain}::{node.op_type}")
            elif node.op_type not in TENSORRT10_ONNX_OPS:
                bad.add(node.op_type)

    check(_walk(model.graph.node))
    return sorted(bad)


def default_opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset version (TensorRT 10 parses TENSORRT10_OPSET_RANGE, inclusive)."""
    for entry in model.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            return int(entry.version)
    raise ValueError("the model imports no ai.onnx opset")


def dynamic_dims(model: onnx.ModelProto) -> dict[str, list[tuple[int, str]]]:
    """For each graph input and output (by name): its non-static dims as (axis, name).

    The name is the dim's symbolic name (e.g. "batch"), or "?" for a dim of unknown size; a tensor of unknown rank
    gives [(-1, "?")]. A fully static tensor maps to []. Initializers that older exporters also list as graph inputs are not inputs and are left out.
    """
    initializers = {init.name for init in model.graph.initializer}
    result: dict[str, list[tuple[int, str]]] = {}
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims: list[tuple[int, str]] = []
        if not tensor_type.HasField("shape"):
            dims.append((-1, "?"))  # unknown rank: nothing about it is static
        else:
            for axis, dim in enumerate(tensor_type.shape.dim):
                if dim.HasField("dim_value"):
                    continue
                dims.append((axis, dim.dim_param or "?"))
        result[value.name] = dims
    return result


def static_shape(model: onnx.ModelProto, name: str) -> list[int | None]:
    """The shape of graph input/output `name`, with None for each non-static dim."""
    for value in [*model.graph.input, *model.graph.output]:
        if value.name == name:
            return [
                int(d.dim_value) if d.HasField("dim_value") else None
                for d in value.type.tensor_type.shape.dim
            ]
    raise KeyError(f"the graph has no input or output {name!r}")
