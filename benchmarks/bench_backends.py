"""ONNX Runtime on the CPU: a bundle's FP32 model vs its INT8 model, measured side by side.

    python benchmarks/bench_backends.py BUNDLE [--runs 7] [--iterations 200] [--batch 1] [--threads 0]

The bundle needs an INT8 model (``edgekit quantize``); ONNX Runtime runs ``int8_cpu`` (asymmetric U8S8,
ReLUs fused) when present, else the TensorRT-bound ``int8`` (S8S8 Q/DQ). Runs alternate FP32 and INT8 so both
see the same machine load; the figures are medians over runs and the ratio is of those medians.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its choice)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from edgekit.backends.select import onnxruntime_model_key, open_runner
    from edgekit.bench import bench, sample_batch
    from edgekit.bundle import Bundle
    from edgekit.errors import EdgekitError

    try:
        bundle = Bundle.load(args.bundle)
        int8_key = onnxruntime_model_key(bundle, "int8")
        inputs = sample_batch(bundle, args.batch)
        runners = {p: open_runner(bundle, "onnxruntime", p, intra_op_threads=args.threads) for p in ("fp32", "int8")}
        for runner in runners.values():
            runner.activate()
    except EdgekitError as exc:
        print(f"bench_backends: error: {exc}", file=sys.stderr)
        return 1
    rates = {p: [] for p in runners}
    p50 = {p: [] for p in runners}
    for _ in range(args.runs):
        for precision, runner in runners.items():
            result = bench(runner, inputs, args.warmup, args.iterations, precision=precision)
            rates[precision].append(result.images_per_s)
            p50[precision].append(result.latency()["p50"])
    for runner in runners.values():
        runner.deactivate()

    median = {p: statistics.median(v) for p, v in rates.items()}
    figures = {
        "bundle": str(bundle.path),
        "cpu": platform.processor() or platform.machine(),
        "batch": args.batch,
        "runs": args.runs,
        "iterations": args.iterations,
        "int8_model": int8_key,
        "images_per_s_median": median,
        "p50_ms_median": {p: statistics.median(v) for p, v in p50.items()},
        "int8_over_fp32": median["int8"] / median["fp32"],
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"bundle {figures['bundle']}  batch {args.batch}  {args.runs} runs x {args.iterations} iterations (ONNX Runtime, CPU)")
        for p in ("fp32", "int8"):
            model = "fp32" if p == "fp32" else int8_key
            print(f"  {p:5s} ({model:8s}) {median[p]:10.1f} images/s   p50 {figures['p50_ms_median'][p]:.3f} ms")
        print(f"  int8 / fp32 throughput: {figures['int8_over_fp32']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
