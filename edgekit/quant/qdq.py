"""Explicit INT8 quantization (Q/DQ) that TensorRT 8.0 through 11 builds without a calibrator.

The recipe, with onnxruntime's quantization tooling:

1. ``quant_pre_process`` (shape inference, BatchNorm Mul/Add folded into Conv);
2. one calibration pass collecting 2048-bin histograms of |x| for every float tensor, fed one batch
   at a time (bounded memory) — driven here, not through ``quantize_static``: no
   ``CalibMaxIntermediateOutputs`` is needed (a divisor of the sample count breaks it), and every
   method reads its range from the same histograms: min-max, percentile, and TensorRT's entropy
   (KL into 128 levels; onnxruntime's entropy histograms signed values into 128 bins, which makes
   it equal to min-max by default and clips ReLU outputs hard when made symmetric);
3. ``quantize_static`` from those ranges: QDQ, symmetric INT8 activations (zero-point 0), per-channel
   symmetric INT8 weights (axis 0 for Conv) kept as float weights behind a Q/DQ pair (the form every
   TensorRT release parses), biases left float — only on nodes where TensorRT fuses Q/DQ: Conv,
   Gemm/MatMul, residual Adds (two activation inputs) and pooling. Score heads (a Softmax/Sigmoid
   reaching a graph output, and the layers feeding it back to the first Conv/Gemm/MatMul) stay float:
   quantizing them collapses confidences. So do layers reading a non-negative image input
   (:meth:`Quantizer.image_layers`).

The ONNX-Runtime-only CPU variant (``cpu_path``) departs from this: asymmetric uint8 activations
from each tensor's observed [min, max] (clipped to the method's amax), so ReLU/Clip fold into the
ranges and onnxruntime fuses QLinearConv/QLinearAdd chains; every op type it quantizes, the first
Conv included, but the score head. On MobileNetV2 (128x128, x86 AVX512-VNNI) it ran 1.2-1.7x FP32
at batch 1 and 2.2-2.5x at batch 32; the tiny 32x32 digits CNN stays at 0.7-0.9x FP32 (too little
arithmetic for INT8 to repay its quantize/transpose overhead).

The ranges (tensor name -> amax) are written as JSON so a TensorRT <= 10 build can also set dynamic
ranges on the FP32 network.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.atomic import atomic_path, temp_dir
from edgekit.errors import InputError, ModelError, first_line
from edgekit.quant.calibration import CalibrationSet, DataReader

METHODS = ("entropy", "percentile", "minmax")
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool")
QUANT_OPS = (*WEIGHTED_OPS, "Add", *POOL_OPS)
SCORE_OPS = ("Softmax", "Sigmoid", "LogSoftmax")
# Ops between a score head's Softmax and its last weighted layer (bias adds, reshapes, casts).
PASS_THROUGH = ("Add", "Sub", "Mul", "Div", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
                "Identity", "Cast", "BatchNormalization")
RANGES_FORMAT = "edgekit-int8-ranges/1"


@dataclass
class QdqResult:
    """What :func:`quantize_qdq` made: the model file, per-tensor amax, and the nodes kept float."""

    path: Path
    amax: dict[str, float]
    quantized_nodes: list[str]
    float_nodes: list[str]
    method: str
    images: int


def score_head_nodes(model) -> set[str]:
    """Names of Softmax/Sigmoid score heads and the nodes feeding them back to a weighted layer."""
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    initializers = {i.name for i in model.graph.initializer}

    def reaches_output(tensor: str) -> bool:
        if tensor in outputs:
            return True
        return any(n.op_type in PASS_THROUGH + SCORE_OPS and reaches_output(n.output[0])
                   for n in consumers.get(tensor, []))

    head: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in SCORE_OPS or not reaches_output(node.output[0]):
            continue
        head.add(node.name)
        current = producers.get(node.input[0])
        while current is not None and current.name not in head:
            head.add(current.name)
            if current.op_type in WEIGHTED_OPS or current.op_type not in PASS_THROUGH:
                break
            feeds = [t for t in current.input if t in producers and t not in initializers]
            current = producers[feeds[0]] if len(feeds) == 1 else None
    return head


def nodes_to_quantize(model) -> list[str]:
    """Nodes where TensorRT fuses Q/DQ: Conv/Gemm/MatMul, residual Adds, pooling — not score heads."""
    initializers = {i.name for i in model.graph.initializer}
    constants = {n.output[0] for n in model.graph.node if n.op_type == "Constant"} | initializers
    head = score_head_nodes(model)
    chosen = []
    for node in model.graph.node:
        if node.name in head or node.op_type not in QUANT_OPS:
            continue
        if node.op_type == "Add" and any(t in constants for t in node.input):
            continue  # a bias or folded-BatchNorm add: TensorRT fuses it into the layer before
        chosen.append(node.name)
    return chosen


def _named(model) -> None:
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


class AbsHistogramCollector:
    """|x| histograms per tensor over [0, running max], in float64, widened by whole bins when a larger
    value arrives (what onnxruntime's collector does, but its float32 bins over [min |x|, max |x|]
    fail on a saturated tensor, e.g. a sigmoid stuck at 1.0). Stands in for onnxruntime's collector:
    ``collect`` takes the calibrator's ``{tensor: [batch arrays]}``."""

    def __init__(self, num_bins: int):
        self.num_bins = num_bins
        self.histogram_dict: dict[str, tuple] = {}  # name -> (counts, edges, min x, max x)

    def collect(self, name_to_arrays: dict) -> None:
        for name, arrays in name_to_arrays.items():
            x = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])
            x = x[np.isfinite(x)]
            low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
            x = np.abs(x)
            amax = float(x.max()) if x.size else 0.0
            if name not in self.histogram_dict:
                edges = np.linspace(0.0, max(amax, 1e-12), self.num_bins + 1)
                counts = np.zeros(self.num_bins, np.int64)
            else:
                counts, edges, old_low, old_high = self.histogram_dict[name]
                low, high = min(low, old_low), max(high, old_high)
                if amax > edges[-1]:
                    width = edges[1] - edges[0]
                    extra = int(np.ceil((amax - edges[-1]) / width))
                    edges = np.concatenate([edges, edges[-1] + width * np.arange(1, extra + 1)])
                    counts = np.concatenate([counts, np.zeros(extra, np.int64)])
            self.histogram_dict[name] = (counts + np.histogram(x, bins=edges)[0], edges, low, high)


class Histograms:
    """Histograms of |x| for every float tensor of a model over a calibration set (one pass), and the
    symmetric ranges each method reads from them."""

    def __init__(self, model_path: Path, cal: CalibrationSet, batch_size: int = 32):
        from onnxruntime.quantization import CalibrationMethod
        from onnxruntime.quantization.calibrate import create_calibrator

        with temp_dir("edgekit-calib") as tmp:
            calibrator = create_calibrator(
                model_path, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=CalibrationMethod.Percentile,
                extra_options={"symmetric": True, "num_bins": 2048, "percentile": 100.0},
            )
            calibrator.collector = AbsHistogramCollector(2048)
            model_input = calibrator.infer_session.get_inputs()[0]
            if isinstance(model_input.shape[0], int) and model_input.shape[0] > 0:
                batch_size = model_input.shape[0]  # a model with a fixed batch takes exactly that
            reader = DataReader(cal, model_input.name, batch_size=batch_size)
            if reader.done:
                raise InputError(f"none of the calibration images in {cal.source} could be read")
            with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime prints per batch
                while not reader.done:
                    reader.next_batch()
                    calibrator.collect_data(reader)
            self.data = {name: (np.asarray(h[0], np.float64), np.asarray(h[1], np.float64))
                         for name, h in calibrator.collector.histogram_dict.items()}
            self.minimum = {name: float(h[2]) for name, h in calibrator.collector.histogram_dict.items()}
            self.maximum = {name: float(h[3]) for name, h in calibrator.collector.histogram_dict.items()}

    def amax(self, method: str) -> dict[str, float]:
        """Tensor name -> symmetric range for ``method``."""
        if method not in METHODS:
            raise InputError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
        pick = {"minmax": lambda h, e: float(e[-1]), "entropy": entropy_threshold, "percentile": percentile_threshold}
        return {name: pick[method](hist, edges) for name, (hist, edges) in self.data.items()}

    def tensors_data(self, method: str, symmetric: bool = True):
        """The ranges for ``method`` as onnxruntime's TensorsData (what quantize_static reads):
        [-amax, amax], or with ``symmetric=False`` the observed [min, max] clipped to it (a ReLU
        output then gets [0, amax], which lets onnxruntime fuse the ReLU away)."""
        from onnxruntime.quantization import CalibrationMethod
        from onnxruntime.quantization.calibrate import TensorData, TensorsData

        data = {}
        for name, t in self.amax(method).items():
            t = max(t, 1e-8)
            low, high = -t, t
            if not symmetric:
                low, high = min(max(self.minimum[name], -t), 0.0), max(min(self.maximum[name], t), 1e-8)
            data[name] = TensorData(lowest=np.float32(low), highest=np.float32(high))
        return TensorsData(CalibrationMethod.MinMax, data)


def percentile_threshold(hist: np.ndarray, edges: np.ndarray, percentile: float = 99.99) -> float:
    """The |x| below which ``percentile`` % of the values fall."""
    cdf = np.cumsum(hist) / max(hist.sum(), 1)
    return float(edges[min(int(np.searchsorted(cdf, percentile / 100.0)) + 1, len(edges) - 1)])


def entropy_threshold(hist: np.ndarray, edges: np.ndarray, levels: int = 128) -> float:
    """TensorRT's entropy calibration on a histogram of |x|: the clipping threshold with least KL
    divergence between the clipped distribution and its ``levels``-level quantization."""
    hist = np.asarray(hist, np.float64).copy()
    hist[0] = hist[1]  # ignore the spike of exact zeros (ReLU outputs), as TensorRT's tools do
    if hist.size <= levels or hist.sum() == 0:
        return float(edges[-1])
    best, best_i = np.inf, hist.size
    for i in range(levels, hist.size + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nonzero = hist[:i] > 0
        group = np.arange(i) * levels // i
        total = np.bincount(group, weights=hist[:i], minlength=levels)
        count = np.bincount(group, weights=nonzero, minlength=levels)
        q = np.where(nonzero, total[group] / np.maximum(count[group], 1), 0.0)
        if q.sum() == 0:
            continue
        p /= p.sum()
        q /= q.sum()
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return float(edges[best_i])


class Quantizer:
    """Q/DQ models of one FP32 ONNX: ``Quantizer(fp32).calibrate(cal).write(out, "entropy")``.

    Preparation (``quant_pre_process``) and the calibration pass happen once; ``write`` can then
    emit a model per method cheaply (so a caller can pick the method that passes the gate).
    """

    def __init__(self, fp32_path: str | os.PathLike, work_dir: str | os.PathLike):
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.work_dir = Path(work_dir)
        self.pre = self.work_dir / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(self.pre))
        except Exception as exc:  # onnxruntime/onnx raise untyped errors on models they cannot optimise
            raise ModelError(f"cannot prepare {fp32_path} for quantization: {first_line(exc)}") from exc
        self.model = onnx.load(self.pre)
        _named(self.model)
        onnx.save(self.model, self.pre)
        self.histograms: Histograms | None = None
        self.images = 0

    def calibrate(self, cal: CalibrationSet, batch_size: int = 32) -> "Quantizer":
        """Run the one calibration pass over ``cal``: histograms for every method ``write`` offers."""
        self.histograms = Histograms(self.pre, cal, batch_size)
        self.images = len(cal)
        return self

    def image_layers(self) -> set[str]:
        """Weighted layers reading a graph input that is never negative (pixels scaled to [0, 1]).

        Symmetric INT8 has only 128 levels for a non-negative tensor, fewer than the image's 256:
        these first layers stay float (in TensorRT a cheap FP16/FP32 layer with 3 input channels).
        It measured as the largest single loss on the digits model (98.3 -> 99.4 % agreement).
        """
        inputs = {i.name for i in self.model.graph.input}
        nonnegative = {n for n in inputs if self.histograms.minimum.get(n, -1.0) >= 0}
        return {n.name for n in self.model.graph.node if n.op_type in WEIGHTED_OPS and n.input[0] in nonnegative}

    def write(
        self,
        out_path: str | os.PathLike,
        method: str = "entropy",
        keep_float: tuple[str, ...] = (),
        cpu_path: str | os.PathLike | None = None,
    ) -> QdqResult:
        """Write the TensorRT Q/DQ model (and with ``cpu_path`` the ONNX-Runtime-only U8S8 variant,
        which TensorRT must never get: asymmetric uint8 activations from the observed [min, max]
        clipped to the method's range, ReLU/Clip fused away, every op type onnxruntime quantizes
        except the score head and ``keep_float``)."""
        from onnxruntime.quantization import QuantType, save_tensors_data

        if self.histograms is None:
            raise ModelError("Quantizer.write() before calibrate()")
        unknown = set(keep_float) - {n.name for n in self.model.graph.node}
        if unknown:
            raise InputError(f"no node named {', '.join(sorted(unknown))} in the model to keep in float")
        ranges = self.histograms.tensors_data(method)
        cache = self.work_dir / f"ranges.{method}.json"
        save_tensors_data(ranges, cache)
        keep = set(keep_float) | self.image_layers()
        chosen = [n for n in nodes_to_quantize(self.model) if n not in keep]
        _quantize(self.pre, out_path, cache, ranges, QuantType.QInt8, nodes=chosen, ops=list(QUANT_OPS), extra={
            "ActivationSymmetric": True, "WeightSymmetric": True, "AddQDQPairToWeight": True, "QuantizeBias": False,
            "QDQKeepRemovableActivations": True,  # symmetric ranges cannot stand in for a ReLU
        })
        if cpu_path is not None:
            cpu_ranges = self.histograms.tensors_data(method, symmetric=False)
            cpu_cache = self.work_dir / f"ranges.{method}.cpu.json"
            save_tensors_data(cpu_ranges, cpu_cache)
            skip = score_head_nodes(self.model) | set(keep_float)
            cpu_nodes = [n.name for n in self.model.graph.node if n.name not in skip]
            _quantize(self.pre, cpu_path, cpu_cache, cpu_ranges, QuantType.QUInt8, nodes=cpu_nodes, ops=None,
                      extra={"QDQKeepRemovableActivations": False})
        floats = sorted(n.name for n in self.model.graph.node if n.name not in set(chosen))
        return QdqResult(Path(out_path), self.histograms.amax(method), chosen, floats, method, self.images)


def quantize_qdq(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    cal: CalibrationSet,
    method: str = "entropy",
    keep_float: tuple[str, ...] = (),
    cpu_path: str | os.PathLike | None = None,
) -> QdqResult:
    """Write a TensorRT-legal Q/DQ INT8 model of ``fp32_path`` to ``out_path``, calibrated on ``cal``.

    ``keep_float`` names more nodes to leave in float. With ``cpu_path``, also write the ONNX
    Runtime CPU variant (asymmetric U8S8, ReLUs fused, see :meth:`Quantizer.write`) — never for TensorRT.
    """
    if method not in METHODS:
        raise InputError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    with temp_dir("edgekit-qdq") as tmp:
        return Quantizer(fp32_path, tmp).calibrate(cal).write(out_path, method, keep_float, cpu_path)


def _quantize(pre: Path, out, cache: Path, ranges, activation_type, nodes, ops, extra) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with contextlib.redirect_stdout(io.StringIO()), atomic_path(out) as tmp:
        quantize_static(
            str(pre), str(tmp), calibration_data_reader=None, calibration_cache_path=str(cache),
            calibrate_method=ranges.calibration_method, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=activation_type, weight_type=QuantType.QInt8,
            op_types_to_quantize=ops, nodes_to_quantize=nodes, extra_options=extra,
        )


def ranges_document(result: QdqResult, fp32_model) -> dict:
    """The ranges JSON: amax of every tensor that also exists in the FP32 model (TensorRT <= 10)."""
    names = {t for node in fp32_model.graph.node for t in node.output} | {i.name for i in fp32_model.graph.input}
    return {
        "format": RANGES_FORMAT,
        "method": result.method,
        "images": result.images,
        "symmetric": True,
        "amax": {k: v for k, v in sorted(result.amax.items()) if k in names},
    }


def tensorrt_qdq_problems(model) -> list[str]:
    """What in a Q/DQ model TensorRT would refuse: non-zero or non-INT8 zero-points, Conv weights not
    quantized per output channel (axis 0)."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    weight_inputs = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    dq_of = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    problems = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zp is None:
            problems.append(f"{node.name}: no INT8 zero-point")
            continue
        if zp.data_type != TensorProto.INT8:
            problems.append(f"{node.name}: zero-point is {TensorProto.DataType.Name(zp.data_type)}, not INT8")
        if np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{node.name}: non-zero zero-point")
    for name in weight_inputs:
        dq = dq_of.get(name)
        if dq is None:
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]]) if dq.input[1] in inits else None
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        if scale is None or scale.ndim != 1 or axis != 0:
            problems.append(f"{dq.name}: weight {name} is not quantized per channel on axis 0")
    return problems
