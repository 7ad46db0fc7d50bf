"""Stock keras.applications through export, as .keras and as a SavedModel (``model.export``), weights none.

    python benchmarks/app_matrix.py [--only MobileNetV2,ResNet50] [--formats keras,saved_model]

For each network and format, without a sidecar or --preprocess: does export find the preprocessing
(and where), does the bundle's preprocessing of real photos equal ``keras.applications.<family>.
preprocess_input`` (max abs difference), the TF vs ONNX Runtime parity error, the FP32 graph's Transpose count and the
Mul/Add left right after a Conv (unfolded BatchNorm), and the export time. Batch-norm statistics are
set from one batch of photos first, so that untrained networks answer different images differently.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

# (application, keras.applications module with its preprocess_input, input side)
APPS = [
    ("MobileNet", "mobilenet", 64), ("MobileNetV2", "mobilenet_v2", 64),
    ("MobileNetV3Small", "mobilenet_v3", 64), ("MobileNetV3Large", "mobilenet_v3", 64),
    ("EfficientNetB0", "efficientnet", 64), ("EfficientNetV2B0", "efficientnet_v2", 64),
    ("ResNet50", "resnet50", 64), ("DenseNet121", "densenet", 64), ("NASNetMobile", "nasnet", 64),
    ("Xception", "xception", 71), ("InceptionV3", "inception_v3", 75), ("ConvNeXtTiny", "convnext", 32),
]  # Keras 3 has no RegNet


def build(keras, name: str, side: int, photos: np.ndarray):
    """The application with 5 classes, its BatchNorm statistics taken from ``photos`` (preprocessed)."""
    model = getattr(keras.applications, name)(input_shape=(side, side, 3), weights=None, classes=5)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(photos, training=True)
    for layer in norms:
        layer.momentum = 0.99
    return model


def unfolded(model) -> int:
    """Mul/Add nodes that take a Conv's output and a per-channel constant (BatchNorm not folded into the
    Conv; a scalar, like hard-swish's ``x + 3``, is no BatchNorm)."""
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    consts = {i.name for i in model.graph.initializer if int(np.prod(i.dims)) > 1}
    return sum(1 for n in model.graph.node if n.op_type in ("Mul", "Add")
               and any(producers.get(i) == "Conv" for i in n.input) and any(i in consts for i in n.input))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated application names")
    parser.add_argument("--formats", default="keras,saved_model")
    args = parser.parse_args()

    import importlib

    import onnx

    from edgekit.errors import EdgekitError
    from edgekit.graph.support import op_histogram
    from edgekit.host import import_tf
    from edgekit.host.export import export_bundle
    from edgekit.host.probe import photo_frames

    _, keras = import_tf()
    only = set(filter(None, args.only.split(",")))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, module, side in APPS:
            if only and name not in only:
                continue
            keras.utils.set_random_seed(0)  # weights=None: the same random network every run
            family = importlib.import_module(f"keras.applications.{module}")
            frames = photo_frames((side, side), 8, seed=1)
            rgb = np.stack(frames)[..., ::-1].astype(np.float32)
            model = build(keras, name, side, family.preprocess_input(rgb.copy()))
            for fmt in args.formats.split(","):
                src = Path(tmp) / (f"{name}.keras" if fmt == "keras" else f"{name}_saved")
                model.save(src) if fmt == "keras" else model.export(str(src), verbose=False)
                start = time.perf_counter()
                try:
                    bundle = export_bundle(src, Path(tmp) / f"b_{name}_{fmt}", labels=list("abcde"))
                except EdgekitError as exc:
                    rows.append((name, fmt, "FAILED: " + str(exc)[:220]))
                    print(" | ".join(rows[-1]), flush=True)
                    continue
                seconds = time.perf_counter() - start
                prep = bundle.preprocess
                got = np.stack([prep.hwc(f) for f in frames])
                want = np.asarray(family.preprocess_input(rgb.copy()))
                onnx_model = onnx.load(bundle.model_path())
                ops = op_histogram(onnx_model)
                m = bundle.manifest
                rows.append((name, fmt, f"prep err {np.abs(got - want).max():.1e}",
                             f"parity {m['parity']['max_abs_error']:.1e}", f"Transpose {ops.get('Transpose', 0)}",
                             f"unfolded {unfolded(onnx_model)}", f"{seconds:.0f} s",
                             f"from: {m['preprocess_origin'][:70]}"))
                print(" | ".join(rows[-1]), flush=True)
    print("\nnetwork | format | preprocessing vs preprocess_input | parity | Transpose | unfolded BN | time | found")
    for row in rows:
        print(" | ".join(row))


if __name__ == "__main__":
    main()
