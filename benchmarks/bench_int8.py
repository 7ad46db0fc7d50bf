"""FP32 vs INT8 (and FP16) on the CPU: accuracy and throughput of the trained digits model.

Real images: scikit-learn's handwritten digits (``edgekit sample-data``); the model is trained on
train/, calibrated on train/ (held-out part gating it) and measured on the unseen val/ split.
Throughput is ONNX Runtime on the CPU, each model timed in turn inside every round (side by side)
and the median of the rounds reported.

    python benchmarks/bench_int8.py [--epochs 10] [--rounds 7] [--threads 0] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(work: Path, epochs: int) -> Path:
    from edgekit.host.export import export_bundle
    from edgekit.host.train import train
    from edgekit.quant.quantize import quantize_bundle
    from edgekit.sample_data import write_sample_data

    data = work / "data"
    if not data.exists():
        write_sample_data(data)
    bundle = work / "bundle"
    if not (bundle / "edgekit.json").exists():
        model = work / "digits.keras"
        train(data / "train", model, epochs=epochs, batch_size=64, image_size=32, seed=0)
        export_bundle(model, bundle, target="jetpack-6.1", force=True)
        quantize_bundle(bundle, data / "train", method="auto", cpu_variant=True, progress=False)
    return bundle


def throughput(bundle, x: np.ndarray, keys: list[str], batch: int, rounds: int, threads: int) -> dict:
    """Images per second per model: median over ``rounds``, models interleaved within each round."""
    from edgekit.backends.onnxruntime import OnnxRuntimeRunner

    runners = {k: OnnxRuntimeRunner(bundle.model_path(k), intra_op_threads=threads) for k in keys}
    for r in runners.values():
        r.activate()
    batches = [x[i : i + batch] for i in range(0, len(x) - batch + 1, batch)]
    rates = {k: [] for k in keys}
    try:
        for k in keys:  # warm-up
            for b in batches[:3]:
                runners[k].infer(b)
        for _ in range(rounds):
            for k in keys:
                t = time.perf_counter()
                for b in batches:
                    runners[k].infer(b)
                rates[k].append(len(batches) * batch / (time.perf_counter() - t))
    finally:
        for r in runners.values():
            r.deactivate()
    return {k: float(np.median(v)) for k, v in rates.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its choice)")
    parser.add_argument("--work", type=Path, default=None, help="keep data and bundle here (reused if present)")
    args = parser.parse_args()

    import onnxruntime

    from edgekit.bundle import Bundle
    from edgekit.quant.gate import evaluate, labelled_tensors

    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bundle = Bundle.load(build(work, args.epochs))
        x, y = labelled_tensors(bundle, work / "data" / "val")
        keys = [k for k in ("fp32", "fp16", "int8", "int8_cpu") if bundle.has_model(k)]
        report = evaluate(bundle, x, y, models=keys[1:], tensorrt=False)
        print(f"onnxruntime {onnxruntime.__version__}, CPU, {os.cpu_count()} cores; "
              f"{len(x)} unseen digits (val split); int8 method: {bundle.models['int8']['calibration']['method']}")
        print(report.summary())
        print()
        rates = {b: throughput(bundle, x, keys, b, args.rounds, args.threads) for b in (1, 32)}
        print(f"{'model':<10}{'top-1 %':>9}{'agree %':>9}{'img/s b=1':>12}{'img/s b=32':>12}{'vs fp32 b=32':>14}")
        for k in keys:
            r = report.result(k)
            print(f"{k:<10}{r.accuracy:>9.2f}{r.agreement:>9.2f}{rates[1][k]:>12.0f}{rates[32][k]:>12.0f}"
                  f"{rates[32][k] / rates[32]['fp32']:>13.2f}x")
        print(f"(median of {args.rounds} interleaved rounds over {len(x)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
