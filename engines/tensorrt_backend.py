"""TensorRT 10 backend (NVIDIA GPU): the exported graphs as TensorRT engines, the glue in torchvision.

`build_engine` turns one exported ONNX graph (engines/export.py) into a serialized engine with one optimization
profile over the dynamic dim 0 of its inputs (images for dense.onnx and roi_heads.onnx's feature levels, RoIs for
roi_heads.onnx's rois). Engines are cached on disk under a
key of everything that makes an engine valid (ONNX file, TensorRT version, GPU, precision, profile), and the builder's
timing cache is kept next to them, so a restart loads in seconds instead of rebuilding. `TensorRTGraph` runs an engine
with `execute_async_v3` on a torch CUDA stream. `create_tensorrt_detector` builds or loads both engines and wraps them
in a SplitDetector. RoiAlign is parsed into TensorRT's ROIAlign_TRT plugin: the standard plugins are registered
before parsing and before loading an engine.

TensorRT is imported lazily: this module imports (and `tensorrt_available()` answers False) on machines without it.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engines.base import EngineError
from engines.export import ExportedModel, file_sha256
from engines.models import LoadedModel
from engines.split import SplitDetector

log = logging.getLogger(__name__)

#: Bump when the build settings change in a way the cache key does not see, so old cached engines are not reused.
_BUILD_FORMAT = 1
#: RoIs per image the box head engine is tuned for (its profile's opt is opt_batch times this).
OPT_ROIS_PER_IMAGE = 100


def _import_tensorrt() -> Any:
    """The tensorrt module, or an EngineError saying why it cannot be used."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError when its CUDA libraries are missing
        raise EngineError(
            f"backend 'tensorrt' needs TensorRT 10 (pip install 'tensorrt>=10,<11'); importing it failed: {exc}"
        ) from exc
    major = str(getattr(trt, "__version__", "0")).split(".")[0]
    if major != "10":
        raise EngineError(f"backend 'tensorrt' needs TensorRT 10.x, found {getattr(trt, '__version__', 'unknown')}")
    return trt


def require_tensorrt() -> Any:
    trt = _import_tensorrt()
    if not torch.cuda.is_available():
        raise EngineError(
            f"backend 'tensorrt' needs an NVIDIA GPU, and torch sees none (torch {torch.__version__}, CUDA "
            f"{torch.version.cuda or 'not built in'}); use backend 'onnxruntime' or 'torch' on this machine"
        )
    _init_plugins(trt)
    return trt


_plugins_lock = threading.Lock()
_plugins_ready = False


def _init_plugins(trt: Any) -> None:
    """Register TensorRT's standard plugins once (ROIAlign_TRT, which the parser maps ONNX RoiAlign to)."""
    global _plugins_ready
    with _plugins_lock:
        if _plugins_ready:
            return
        if not trt.init_libnvinfer_plugins(_logger(trt), ""):
            raise EngineError("TensorRT could not register its standard plugins (libnvinfer_plugin): "
                              "roi_heads.onnx's RoiAlign needs them")
        _plugins_ready = True


def tensorrt_available() -> bool:
    """True where the tensorrt backend can run: TensorRT 10 importable and a CUDA GPU present."""
    try:
        require_tensorrt()
    except EngineError:
        return False
    return True


# --- logging -----------------------------------------------------------------------------------------------------

_logger_lock = threading.Lock()
_trt_logger: Any = None


def _logger(trt: Any) -> Any:
    """One process-wide TensorRT logger that forwards to Python logging and remembers recent errors."""
    global _trt_logger
    with _logger_lock:
        if _trt_logger is None:
            severity = trt.ILogger.Severity
            levels = {
                severity.INTERNAL_ERROR: logging.CRITICAL,
                severity.ERROR: logging.ERROR,
                severity.WARNING: logging.WARNING,
                severity.INFO: logging.DEBUG,
                severity.VERBOSE: logging.DEBUG,
            }

            class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)
                    self.errors: collections.deque[str] = collections.deque(maxlen=20)
                    self.error_count = 0

                def log(self, sev: Any, msg: str) -> None:
                    level = levels.get(sev, logging.DEBUG)
                    if not log.isEnabledFor(level):
                        return
                    if level >= logging.ERROR:
                        self.errors.append(msg)
                        self.error_count += 1
                    log.log(level, "TensorRT: %s", msg)

            _trt_logger = _Logger()
        return _trt_logger


def _errors_since(trt: Any, count: int) -> str:
    """The TensorRT errors logged since the logger's error_count was `count`, for an EngineError message."""
    logger = _logger(trt)
    new = min(logger.error_count - count, len(logger.errors))
    errors = list(logger.errors)[len(logger.errors) - new:] if new > 0 else []
    return ("; TensorRT said: " + " | ".join(errors)) if errors else "; see the TensorRT log above"


# --- building ----------------------------------------------------------------------------------------------------

def _gpu_name(device: int | None = None) -> str:
    index = torch.cuda.current_device() if device is None else device
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} (sm_{major}{minor})"


def engine_cache_key(
    onnx_sha256: str, trt_version: str, gpu_name: str, precision: str, profile: tuple[int, ...]
) -> str:
    """The sha256 that names a cached engine: an engine is reused only where all of these match."""
    fields = {
        "onnx": onnx_sha256,
        "tensorrt": trt_version,
        "gpu": gpu_name,
        "precision": precision,
        "profile": list(profile),
        "format": _BUILD_FORMAT,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write a file so that readers (another process, the next start) never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def timing_cache_path(engine_dir: str | Path, trt_version: str, gpu_name: str) -> Path:
    """The builder's timing cache: per TensorRT version and GPU, since timings of another are no use."""
    return Path(engine_dir) / f"timing-{_slug(trt_version)}-{_slug(gpu_name)}.cache"


def rois_profile(opt_batch: int, max_batch: int, post_nms_top_n: int) -> tuple[int, int, int]:
    """(min, opt, max) RoIs for the box head engine: at most post_nms_top_n proposals per image of a batch."""
    max_rois = max_batch * post_nms_top_n
    return 1, max(1, min(opt_batch * OPT_ROIS_PER_IMAGE, max_rois)), max_rois


class Int8Calibration:
    """Frames for TensorRT's INT8 calibration of the dense graph, and the calibration cache file that keeps the result.

    `batches` are dense-graph inputs ([N, H, W, 3] float pixels, all of one N). With a readable `cache_file` TensorRT
    reads the scales from it and calibrates nothing (batches may then be empty); otherwise it runs the batches through
    the network once and the cache is written, so later builds (other GPUs, other TensorRT 10 builds) reuse it.
    """

    def __init__(self, batches: Sequence[Tensor], cache_file: str | Path) -> None:
        sizes = {int(b.shape[0]) for b in batches}
        if len(sizes) > 1:
            raise EngineError(f"INT8 calibration batches must all hold the same number of frames, got {sorted(sizes)}")
        self.batches = list(batches)
        self.batch_size = sizes.pop() if sizes else 1
        self.cache_file = Path(cache_file)

    def calibrator(self, trt: Any) -> Any:
        """A trt.IInt8EntropyCalibrator2 over the batches (the calibrator TensorRT recommends for CNNs)."""
        calibration = self

        class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11: the base must be initialised explicitly
                self._next = 0
                self._device: Tensor | None = None  # the current batch on the GPU, kept alive while TensorRT reads it

            def get_batch_size(self) -> int:
                return calibration.batch_size

            def get_batch(self, names: list[str]) -> list[int] | None:
                if self._next >= len(calibration.batches):
                    return None  # no more batches: calibration ends
                batch = calibration.batches[self._next]
                self._next += 1
                self._device = batch.to("cuda", dtype=torch.float32).contiguous()
                return [int(self._device.data_ptr())]  # one device pointer per input, in `names` order (one input)

            def read_calibration_cache(self) -> bytes | None:
                path = calibration.cache_file
                return path.read_bytes() if path.is_file() else None

            def write_calibration_cache(self, cache: Any) -> None:
                _write_atomic(calibration.cache_file, memoryview(cache))

        return _Calibrator()


#: The TensorRT INT8 calibration cache of an export (benchmarks/gpu_check.sh writes it).
INT8_CACHE_FILE = "tensorrt_int8.calib"


def int8_calibration_cache(exported: ExportedModel) -> Int8Calibration:
    """The export's INT8 calibration cache, for a build without calibration frames (the pipeline has none)."""
    path = exported.directory / INT8_CACHE_FILE
    if not path.is_file():
        raise EngineError(f"engine.precision int8 with TensorRT needs the calibration cache {path}: make it once on "
                          "this model with benchmarks/gpu_check.sh (it calibrates on synthetic frames), or use fp32")
    return Int8Calibration([], path)


def build_engine(
    onnx_path: str | Path,
    engine_dir: str | Path,
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    fp16: bool = True,
    workspace_gb: float = 2.0,
    int8: Int8Calibration | None = None,
    input_profiles: Mapping[str, tuple[int, int, int]] | None = None,
) -> Path:
    """Build (or reuse from `engine_dir`) a TensorRT engine of one exported graph; returns the engine file.

    The optimization profile spans dim 0 of the graph's inputs from `min_batch` to `max_batch`, tuned for `opt_batch`
    (images), except for the inputs named in `input_profiles`, which get their own (min, opt, max): the rois of
    roi_heads.onnx (see `rois_profile`). Every other input dim must be static.
    `fp16` enables FP16 kernels where the GPU has fast FP16; without it the engine is strict FP32 (no TF32 either),
    for parity checks.
    """
    trt = require_tensorrt()
    onnx_path = Path(onnx_path)
    engine_dir = Path(engine_dir)
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise EngineError(f"invalid optimization profile min={min_batch} opt={opt_batch} max={max_batch}")
    if not onnx_path.is_file():
        raise EngineError(f"{onnx_path} is missing: export the model first")
    torch.cuda.init()  # TensorRT uses the CUDA context torch has made current
    gpu = _gpu_name()
    builder = trt.Builder(_logger(trt))
    use_fp16 = fp16 and bool(getattr(builder, "platform_has_fast_fp16", True))
    precision = "fp16" if use_fp16 else "fp32"
    if int8 is not None:  # INT8 where TensorRT finds it faster, FP16 (if enabled) or FP32 elsewhere
        if not int8.batches and not int8.cache_file.is_file():
            raise EngineError(f"INT8 needs calibration frames or a calibration cache; {int8.cache_file} is missing")
        calibration_id = file_sha256(int8.cache_file) if int8.cache_file.is_file() else f"{len(int8.batches)}b"
        precision = f"int8-{precision}-{calibration_id[:12]}"
    if fp16 and not use_fp16:
        log.warning("this GPU has no fast FP16: building %s in FP32", onnx_path.name)
    profile_dims = (min_batch, opt_batch, max_batch)
    own = dict(input_profiles or {})
    for name, dims in own.items():
        if not 1 <= dims[0] <= dims[1] <= dims[2]:
            raise EngineError(f"invalid optimization profile {dims} for input {name!r}")
    key_dims = profile_dims + tuple(d for name in sorted(own) for d in own[name])
    key = engine_cache_key(file_sha256(onnx_path), trt.__version__, gpu, precision, key_dims)
    engine_path = engine_dir / f"{onnx_path.stem}-{precision}-{key[:16]}.engine"
    if engine_path.is_file():
        log.info("reusing TensorRT engine %s", engine_path)
        return engine_path

    errors_before = _logger(trt).error_count
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch; no flag needed
    parser = trt.OnnxParser(network, _logger(trt))
    if not parser.parse_from_file(str(onnx_path)):
        messages = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(
            f"TensorRT {trt.__version__}'s ONNX parser rejected {onnx_path}:\n  " + "\n  ".join(messages or ["(no message)"])
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if use_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    calibrator = None
    if int8 is not None:
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = int8.calibrator(trt)  # referenced until the build is done: TensorRT does not keep it alive
        config.int8_calibrator = calibrator
    profile = builder.create_optimization_profile()
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if set(own) - set(names):
        raise EngineError(f"{onnx_path} has no input(s) {sorted(set(own) - set(names))}; its inputs are {names}")
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise EngineError(
                f"input {tensor.name!r} of {onnx_path} has shape {shape}: only dim 0 may be dynamic (re-export it)"
            )
        profile.set_shape(tensor.name, *[(n, *shape[1:]) for n in own.get(tensor.name, profile_dims)])
    config.add_optimization_profile(profile)
    if int8 is not None:
        # Calibration runs at one shape: a profile whose min = opt = max is the calibration batch.
        calibration_profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = (int8.batch_size, *list(tensor.shape)[1:])
            calibration_profile.set_shape(tensor.name, shape, shape, shape)
        config.set_calibration_profile(calibration_profile)

    cache_file = timing_cache_path(engine_dir, trt.__version__, gpu)
    timing_cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    if timing_cache is None or not config.set_timing_cache(timing_cache, False):
        log.warning("timing cache %s is unreadable or does not fit this TensorRT/GPU: starting a new one", cache_file)
        config.set_timing_cache(config.create_timing_cache(b""), False)

    log.info("building TensorRT engine for %s (%s, profile %s, %s): this takes a while the first time",
             onnx_path.name, precision, profile_dims, gpu)
    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    del calibrator
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine for {onnx_path}{_errors_since(trt, errors_before)}")
    _write_atomic(engine_path, memoryview(serialized))
    _write_atomic(cache_file, memoryview(config.get_timing_cache().serialize()))
    log.info("built %s in %.1f s", engine_path, time.monotonic() - started)
    return engine_path


# --- running -----------------------------------------------------------------------------------------------------

def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {
        "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
        "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool,
    }
    for name, torch_dtype in table.items():
        if hasattr(trt.DataType, name) and dtype == getattr(trt.DataType, name):
            return torch_dtype
    raise EngineError(f"TensorRT tensor type {dtype} has no torch equivalent here")


class TensorRTGraph:
    """One deserialized engine: CPU tensors in, in the order of `input_names`, CPU tensors out, in the order of
    `output_names` (the ONNX graph's orders)."""

    def __init__(
        self, engine_path: str | Path, output_names: Sequence[str] | None = None,
        input_names: Sequence[str] | None = None,
    ) -> None:
        trt = require_tensorrt()
        torch.cuda.init()
        self.path = Path(engine_path)
        self.device = torch.device("cuda", torch.cuda.current_device())
        self._runtime = trt.Runtime(_logger(trt))
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise EngineError(
                f"TensorRT could not load {self.path} (built by another TensorRT version or for another GPU?): "
                "delete it to rebuild"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"TensorRT could not create an execution context for {self.path} (out of GPU memory?)")
        self._stream = torch.cuda.Stream(device=self.device)
        self._lock = threading.Lock()  # an execution context runs one inference at a time
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if input_names is None and len(inputs) != 1:
            raise EngineError(f"{self.path} has inputs {inputs}; name them in the ONNX graph's order")
        if input_names is not None and sorted(input_names) != sorted(inputs):
            raise EngineError(f"{self.path} has inputs {inputs}, but the ONNX graph has {list(input_names)}")
        if output_names is not None and sorted(output_names) != sorted(outputs):
            raise EngineError(f"{self.path} has outputs {outputs}, but the ONNX graph has {list(output_names)}")
        self.input_names = list(input_names) if input_names is not None else inputs
        self.output_names = list(output_names) if output_names is not None else outputs
        self._dtypes = {n: _torch_dtype(trt, self._engine.get_tensor_dtype(n)) for n in names}

    def __call__(self, *xs: Tensor) -> list[Tensor]:
        if len(xs) != len(self.input_names):
            raise EngineError(f"{self.path} takes {len(self.input_names)} inputs {self.input_names}, got {len(xs)}")
        with self._lock, torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            if any(x.shape[0] == 0 for x in xs):  # e.g. no RoIs: below every profile's min, and nothing to compute
                return [torch.zeros(self._empty_shape(n), dtype=self._dtypes[n]) for n in self.output_names]
            x_gpu = [x.to(device=self.device, dtype=self._dtypes[name]).contiguous()
                     for name, x in zip(self.input_names, xs)]
            for name, x in zip(self.input_names, x_gpu):
                if not self._context.set_input_shape(name, tuple(x.shape)):
                    raise EngineError(
                        f"{self.path} does not take {name!r} of shape {tuple(x.shape)} "
                        "(outside the engine's optimization profile?)"
                    )
                self._context.set_tensor_address(name, x.data_ptr())
            outputs: dict[str, Tensor] = {}
            for name in self.output_names:
                shape = tuple(self._context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise EngineError(f"{self.path}: output {name!r} has unresolved shape {shape}")
                outputs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
                self._context.set_tensor_address(name, outputs[name].data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise EngineError(f"TensorRT failed to run {self.path}; see the TensorRT log above")
            host = [outputs[name].to("cpu") for name in self.output_names]
            self._stream.synchronize()
            del x_gpu, outputs  # kept alive until the stream is done with them
        return [t.float() if t.is_floating_point() else t for t in host]

    def _empty_shape(self, name: str) -> tuple[int, ...]:
        shape = list(self._engine.get_tensor_shape(name))
        if shape and shape[0] < 0:
            shape[0] = 0
        if any(d < 0 for d in shape):
            raise EngineError(f"{self.path}: output {name!r} has no static shape {shape} for an empty input")
        return tuple(shape)


def onnx_io_names(path: Path) -> tuple[list[str], list[str]]:
    """(input names, output names) of an ONNX graph, in the graph's order."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers], [o.name for o in graph.output]


def roi_heads_profiles(path: Path, opt_batch: int, max_batch: int, post_nms_top_n: int) -> dict[str, tuple[int, int, int]]:
    """`input_profiles` for roi_heads.onnx: its rois input spans every proposal of a full batch."""
    inputs, _ = onnx_io_names(path)
    if "rois" not in inputs:
        raise EngineError(f"{path} has no input 'rois' (inputs {inputs}): export the model again")
    return {"rois": rois_profile(opt_batch, max_batch, post_nms_top_n)}


def create_tensorrt_detector(
    loaded: LoadedModel,
    exported: ExportedModel,
    score_threshold: float = 0.5,
    max_batch: int = 8,
    cache_dir: str | Path | None = None,
    fp16: bool = True,
    opt_batch: int | None = None,
    int8: Int8Calibration | None = None,
) -> SplitDetector:
    """A SplitDetector running the exported dense graph and box head as TensorRT engines.

    Engines are built on first use (minutes) and cached in `cache_dir` (default: `tensorrt/` in the export
    directory). Batches above `max_batch` frames are run in chunks. `opt_batch` (default `max_batch`) is the batch
    size TensorRT tunes its kernels for. `int8` (frames or a calibration cache) builds the dense engine in INT8.
    """
    require_tensorrt()
    if max_batch < 1:
        raise EngineError(f"max_batch must be >= 1, got {max_batch}")
    arch = exported.manifest.get("arch")
    if arch != loaded.arch:
        raise EngineError(f"{exported.directory} holds an export of {arch!r}, not of {loaded.arch!r}: export it again")
    opt_batch = min(opt_batch or max_batch, max_batch)
    cache = Path(cache_dir) if cache_dir is not None else exported.directory / "tensorrt"
    model = loaded.model.eval()
    post_nms_top_n = int(model.rpn.post_nms_top_n())  # the eval-mode value, since the model is in eval mode
    # INT8 for the dense graph only (nearly all the FLOPs); the box head's logits stay in FP16/FP32.
    dense_path = build_engine(exported.dense_path, cache, 1, opt_batch, max_batch, fp16=fp16, int8=int8)
    roi_path = build_engine(
        exported.roi_heads_path, cache, 1, opt_batch, max_batch, fp16=fp16,
        input_profiles=roi_heads_profiles(exported.roi_heads_path, opt_batch, max_batch, post_nms_top_n),
    )
    dense_inputs, dense_outputs = onnx_io_names(exported.dense_path)
    roi_inputs, roi_outputs = onnx_io_names(exported.roi_heads_path)
    dense = TensorRTGraph(dense_path, dense_outputs, dense_inputs)
    roi_heads = TensorRTGraph(roi_path, roi_outputs, roi_inputs)
    return SplitDetector(
        loaded, dense, roi_heads, exported.input_size, "tensorrt", score_threshold=score_threshold, max_batch=max_batch
    )
