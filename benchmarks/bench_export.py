"""Export time of MobileNetV2 224x224 (weights none): .keras -> checked, parity-tested bundle.

    python benchmarks/bench_export.py [--runs 3] [--target jetpack-6.1]

Prints every run and the median, in seconds (model loading, tf2onnx, passes, op check, parity, write).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--target", default="jetpack-6.1")
    args = parser.parse_args()

    from edgekit.host.archs import build_model, get_arch
    from edgekit.host.export import export_bundle

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "mobilenetv2.keras"
        arch = get_arch("mobilenetv2")
        build_model(arch, args.size, 1000).save(src)
        labels = [f"class{i}" for i in range(1000)]
        times = []
        for i in range(args.runs):
            start = time.perf_counter()
            bundle = export_bundle(
                src, Path(tmp) / "bundle", target=args.target, force=True, labels=labels,
                preprocess=arch.preprocess(args.size),
            )
            times.append(time.perf_counter() - start)
            print(f"run {i + 1}: {times[-1]:.2f} s")
        size = bundle.model_path().stat().st_size / 2**20
        m = bundle.manifest
        print(
            f"MobileNetV2 {args.size}x{args.size} -> {args.target} bundle ({size:.1f} MiB, "
            f"verdict {m['target']['verdict']}, parity {m['parity']['max_abs_error']:.2g}): "
            f"median export time {statistics.median(times):.2f} s over {args.runs} runs"
        )


if __name__ == "__main__":
    main()
