"""FP16 ONNX for strongly-typed TensorRT 11 (no FP16 builder flag there: the precision is in the graph).

Weights and activations become float16, inputs and outputs stay float32 (the runtime feeds and
reads float32 unchanged), and numerically sensitive ops stay float32: score heads
(Softmax/Sigmoid and what feeds them, see :func:`edgekit.quant.qdq.score_head_nodes`), reductions
and normalisations that overflow or lose precision in half. Built with onnxconverter-common's
maintained ``float16`` converter.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgekit.atomic import atomic_path
from edgekit.errors import ModelError, first_line

KEEP_FP32_OPS = (
    "Softmax", "LogSoftmax", "Sigmoid", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Div",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp",
    "LayerNormalization", "InstanceNormalization", "TopK", "NonMaxSuppression", "Resize",
    "Range", "CumSum",
)


def convert_fp16(fp32_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write an FP16 copy of ``fp32_path`` (FP32 I/O, sensitive ops FP32) to ``out_path``."""
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise ModelError("the FP16 model needs onnxconverter-common: pip install 'edgekit[host]'") from exc
    from edgekit.quant.qdq import score_head_nodes

    model = onnx.load(str(fp32_path))
    try:
        half = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(KEEP_FP32_OPS)),
            node_block_list=sorted(score_head_nodes(model)),
        )
        _float32_outputs(half)
        onnx.checker.check_model(half)
    except Exception as exc:  # the converter raises assorted errors on graphs it cannot handle
        raise ModelError(f"cannot convert {fp32_path} to FP16: {first_line(exc)}") from exc
    with atomic_path(out_path) as tmp:
        onnx.save(half, str(tmp))
    return Path(out_path)


def _float32_outputs(model) -> None:
    """Make every graph output float32: with ``keep_io_types``, an output whose producer is blocked
    (a Softmax head) gets a Cast *to* float16 from the converter; turn that Cast to float32."""
    from onnx import TensorProto

    casts = {n.output[0]: n for n in model.graph.node if n.op_type == "Cast"}
    for out in model.graph.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        cast = casts.get(out.name)
        if cast is None:
            raise ValueError(f"output {out.name} became float16")
        for attr in cast.attribute:
            if attr.name == "to":
                attr.i = TensorProto.FLOAT
        out.type.tensor_type.elem_type = TensorProto.FLOAT
